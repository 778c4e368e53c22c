"""The `tune:` section of a job spec: search space, metric, scheduler, search algorithm.

The search space names dotted spec keys (`optimizer.lr`, `model.hidden`); each key's distribution
is checked against the spec itself when the spec is loaded: every bound and every listed value is
applied to the spec as an override and validated, so `model.dropout: {uniform: [0, 1.5]}` or
`optimizer.lrr: ...` is reported with its dotted path, with the spec's other problems.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from raydl.spec import Section, with_value

KINDS = ("choice", "grid", "uniform", "loguniform", "randint", "qrandint")


class Dist(Section):
    """One key's distribution, written as a one-key mapping: `{loguniform: [1e-4, 1e-1]}`,
    `{choice: [[64], [128, 64]]}`, `{grid: [0.0, 0.1]}`, `{randint: [16, 128]}` (high excluded),
    `{qrandint: [16, 128, 16]}` (high included), `{uniform: [0.0, 0.5]}`."""

    choice: list[Any] | None = Field(None, min_length=1)
    grid: list[Any] | None = Field(None, min_length=1)
    uniform: list[float] | None = None
    loguniform: list[float] | None = None
    randint: list[int] | None = None
    qrandint: list[int] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Dist:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one distribution of {', '.join(KINDS)}; got {len(given)}")
        kind = given[0]
        v = getattr(self, kind)
        if kind in ("uniform", "loguniform", "randint") and len(v) != 2:
            raise ValueError(f"{kind} takes [low, high]; got {len(v)} values")
        if kind == "qrandint" and len(v) != 3:
            raise ValueError(f"qrandint takes [low, high, q]; got {len(v)} values")
        if kind in ("uniform", "loguniform", "randint", "qrandint") and not v[0] < v[1]:
            raise ValueError(f"{kind}: low must be below high; got [{v[0]:g}, {v[1]:g}]")
        if kind == "loguniform" and not v[0] > 0:
            raise ValueError(f"loguniform: low must be > 0 (a log scale); got {v[0]:g}")
        if kind == "qrandint" and not v[2] >= 1:
            raise ValueError(f"qrandint: q must be >= 1; got {v[2]}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def args(self) -> list[Any]:
        return getattr(self, self.kind)

    def probes(self) -> list[Any]:
        """The values whose validity stands for the whole distribution: both bounds of a range
        (randint's high is excluded), every value of a choice or grid."""
        a = self.args
        if self.kind == "randint":
            return [a[0], a[1] - 1]
        if self.kind == "qrandint":
            return [a[0], a[0] + (a[1] - a[0]) // a[2] * a[2]]
        return list(a)


class FifoSpec(Section):
    name: Literal["fifo"]


class AshaSpec(Section):
    name: Literal["asha"]
    grace_period: int = Field(1, ge=1, description="epochs every trial runs before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1)
    max_t: int | None = Field(None, ge=1, description="epochs (default: training.epochs)")


class HyperBandSpec(Section):
    name: Literal["hyperband"]
    reduction_factor: float = Field(3.0, gt=1)
    max_t: int | None = Field(None, ge=1, description="epochs (default: training.epochs)")


class MedianSpec(Section):
    name: Literal["median"]
    grace_period: int = Field(1, ge=1)
    min_samples_required: int = Field(3, ge=1)


class PbtSpec(Section):
    name: Literal["pbt"]
    perturbation_interval: int = Field(2, ge=1, description="epochs between exploit/explore steps")
    mutations: list[str] = Field(..., min_length=1, description="keys of tune.space that PBT mutates")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)
    resample_probability: float = Field(0.25, ge=0, le=1)


Scheduler = Annotated[FifoSpec | AshaSpec | HyperBandSpec | MedianSpec | PbtSpec, Field(discriminator="name")]


class SearchSpec(Section):
    name: Literal["basic", "optuna"] = "basic"  # basic: Tune's variant generator (grid x random)


class TuneSpec(Section):
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    space: dict[str, Dist] = Field(..., min_length=1)
    num_samples: int = Field(1, ge=1, le=100_000)
    max_concurrent_trials: int | None = Field(None, ge=1)
    time_budget_s: float | None = Field(None, gt=0)
    seed: int = Field(0, ge=0)
    driver_cpus: float = Field(1.0, gt=0, description="CPUs of each trial's driver (it waits on its workers)")
    scheduler: Scheduler = Field(default_factory=lambda: FifoSpec(name="fifo"))
    search: SearchSpec = SearchSpec()

    @model_validator(mode="after")
    def _consistent(self) -> TuneSpec:
        problems = []
        if isinstance(self.scheduler, PbtSpec):
            problems += [f"scheduler.mutations: {k!r} is not a key of tune.space (keys: {', '.join(self.space)})"
                         for k in self.scheduler.mutations if k not in self.space]
            problems += [f"scheduler.mutations: {k!r} is a grid; PBT mutates sampled keys only"
                         for k in self.scheduler.mutations if k in self.space and self.space[k].kind == "grid"]
        if self.search.name == "optuna":
            problems += [f"space.{k}: optuna samples its own values; use choice, not grid"
                         for k, d in self.space.items() if d.kind == "grid"]
        problems += [f"space.{k}: the search space cannot change {k.split('.')[0]}.*"
                     for k in self.space if k.split(".")[0] in ("run", "tune", "scaling")]
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _with(raw: dict, dotted: str, value: Any) -> dict:
    return with_value(raw, dotted.split("."), value)


def apply_config(raw: dict, config: dict[str, Any]) -> dict:
    """The raw spec with a trial's values (`{dotted key: value}`) applied."""
    for key, value in config.items():
        raw = _with(raw, key, value)
    return raw


def space_errors(raw: dict) -> list[tuple[tuple, str, Any]]:
    """(location, message, value) for each value of the search space that the spec does not allow.
    `raw` is the whole raw spec; its `tune` section is assumed to be well-formed (else skipped)."""
    from raydl.spec import _problems

    space = (raw.get("tune") or {}).get("space")
    if not isinstance(space, dict):
        return []
    base = {k: v for k, v in raw.items() if k != "tune"}
    known = set(_problems(base)[1])  # the spec's own problems, reported already
    out = []
    for key, dist in space.items():
        try:
            d = Dist.model_validate(dist)
        except Exception:  # noqa: BLE001 (reported by the section's own validation)
            continue
        for value in d.probes():
            lines = [ln for ln in _problems(_with(base, key, value))[1] if ln not in known]
            if lines:
                out.append((("tune", "space", key), f"{d.kind} value {_short(value)} is not allowed: {lines[0]}", None))
                break
    return out


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 60 else r[:60] + "..."
