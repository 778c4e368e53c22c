"""The typed pipeline spec (`pipelines/*.yaml`): YAML in, a frozen, validated `PipelineSpec` out.

Validated like the job spec (`raydl.spec`): unknown keys, wrong types and out-of-range values are
rejected at once, every problem listed with its dotted path; the job spec used for retraining is
checked too (its problems under `model.job.`), and so are the gate rules (`gate.rules.N`).
Relative paths: `model.job` (a file) is read relative to the pipeline file; `data.location`,
`run_dir` and the registry storage are used as given (relative to the working directory, like
a job spec's `run.storage_path`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from raydl.errors import SpecError
from raydl.pipeline.gate import METRIC_NAMES, parse_rule
from raydl.spec import (
    MAX_SPEC_BYTES,
    Section,
    _problem,
    _UniqueKeyLoader,
    apply_overrides,
    spec_from_dict,
)

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
FROM_SCRATCH = "from_scratch"


class ModelSection(Section):
    name: str = Field(..., pattern=NAME, description="the model's name in the registry")
    alias: str = Field("production", pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$", description="the alias that serves")
    job: str | dict[str, Any] = Field(..., description="the job spec used for retraining: a YAML file (relative to "
                                                      "the pipeline file) or the spec inline")
    registry: str | None = Field(None, description="registry storage root (default $RAYDL_REGISTRY)")
    registry_db: str | None = Field(None, description="registry database URL (default <registry>/registry.db)")
    bootstrap: bool = Field(False, description="when the registry has no such model, the first pass trains it "
                                               "from scratch and promotes it")


class DataSection(Section):
    location: str | list[str] = Field(..., description="a directory of partitions (by date or sequence number), "
                                                      "a glob, or a list of files or directories")
    holdout: float = Field(0.2, gt=0, lt=0.9, description="share of each window kept out of training, for evaluation")
    seed: int = Field(0, ge=0)


class DriftTrigger(Section):
    verdicts: list[Literal["features", "multivariate", "output"]] = Field(
        ["features", "multivariate", "output"], min_length=1, description="which verdicts of `raydl drift` count")
    threshold: Literal["calibrated", "fixed"] = "calibrated"
    js_threshold: float | None = Field(None, gt=0, le=1, description="fixed per-feature JS threshold")
    alpha: float = Field(0.02, gt=0, lt=0.5, description="false-alarm rate of the calibrated thresholds")
    min_features: int = Field(1, ge=1, description="drifted features needed for the per-feature verdict")


class TriggerSection(Section):
    drift: DriftTrigger | None = DriftTrigger()
    new_rows: int | None = Field(None, ge=1, description="labelled rows since the last retrain")
    max_age_hours: float | None = Field(None, gt=0, description="the champion's age")
    always: bool = False


class RetrainSection(Section):
    strategy: str = Field("naive", description="from_scratch, or a continual strategy (naive, ewc, lwf, replay, ...)")
    params: dict[str, Any] = Field(default_factory=dict, description="the strategy's parameters")
    overrides: list[str] = Field(default_factory=list, description="dotted overrides of the job spec")


class CalibrateSection(Section):
    method: Literal["none", "temperature", "platt", "isotonic"] = "temperature"


class GateSection(Section):
    rules: list[str] = Field(default_factory=list, description='e.g. "challenger.new.accuracy >= champion.new.accuracy + 0.02"')

    @field_validator("rules")
    @classmethod
    def _parse(cls, rules: list[str]) -> list[str]:
        problems = []
        for i, r in enumerate(rules):
            try:
                parse_rule(r)
            except ValueError as e:
                problems.append(f"rule {i} {r!r}: {e}")
        if problems:
            raise ValueError("; ".join(problems))
        return rules


class PromoteSection(Section):
    alias: str | None = Field(None, pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$", description="default: model.alias")


class NotifySection(Section):
    webhook: str | None = Field(None, pattern=r"^https?://", description="receives the decision as JSON (POST)")
    timeout_s: float = Field(10.0, gt=0, le=300)


class TrackingSection(Section):
    backend: Literal["wandb", "none"] = "wandb"
    mode: Literal["offline", "online"] = "offline"
    project: str = "raydl"


class PipelineSpec(Section):
    name: str = Field(..., pattern=NAME)
    run_dir: str = Field("runs/pipelines", min_length=1, description="state.db and pass outputs go to <run_dir>/<name>/")
    model: ModelSection
    data: DataSection
    trigger: TriggerSection = TriggerSection()
    retrain: RetrainSection = RetrainSection()
    calibrate: CalibrateSection = CalibrateSection()
    gate: GateSection = GateSection()
    promote: PromoteSection = PromoteSection()
    notify: NotifySection = NotifySection()
    tracking: TrackingSection = TrackingSection()

    @field_validator("tracking", mode="before")
    @classmethod
    def _tracking_shorthand(cls, v: Any) -> Any:
        return {"backend": v} if isinstance(v, str) else v

    @property
    def alias(self) -> str:
        return self.promote.alias or self.model.alias

    @property
    def home(self) -> Path:
        return Path(self.run_dir).expanduser() / self.name

    def job_raw(self) -> dict[str, Any]:
        """The retraining job spec as a raw mapping (resolved when the pipeline was loaded)."""
        return dict(self.model.job) if isinstance(self.model.job, dict) else {}


def _read_yaml(p: Path, what: str) -> Any:
    if not p.is_file():
        raise SpecError(f"{what} not found: {p} (pass the path of a YAML file)")
    if p.stat().st_size > MAX_SPEC_BYTES:
        raise SpecError(f"{what} {p} is larger than {MAX_SPEC_BYTES} bytes (1 MiB)")
    try:
        return yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError:
        raise SpecError(f"{what} {p} is not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"malformed YAML in {p}{where}: {getattr(e, 'problem', None) or e}") from None


def _job_problems(raw: dict, base: Path | None) -> tuple[dict | None, list[str]]:
    """The retraining job spec (a file or inline) as a raw mapping, and its problems."""
    job = (raw.get("model") or {}).get("job") if isinstance(raw.get("model"), dict) else None
    if isinstance(job, str):
        path = Path(job).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        try:
            job = _read_yaml(path, "model.job: job spec")
        except SpecError as e:
            return None, [str(e)]
    if not isinstance(job, dict):
        return None, []  # the section's own validation reports it
    retrain = raw.get("retrain") if isinstance(raw.get("retrain"), dict) else {}
    try:
        job = apply_overrides(job, [o for o in retrain.get("overrides", []) if isinstance(o, str)])
        data = job.get("data") if isinstance(job.get("data"), dict) else {}
        spec_from_dict({**job, "data": {"source": "window", **data}, "continual": None, "finetune": None}, origin="")
    except SpecError as e:
        text = re.sub(r"^invalid job spec\s*: (\d+ problems?: )?", "", str(e))
        return job, [f"model.job: {text}"]
    return job, []


def _strategy_problems(raw: dict) -> list[str]:
    retrain = raw.get("retrain")
    if not isinstance(retrain, dict):
        return []
    name = retrain.get("strategy", "naive")
    if not isinstance(name, str) or name == FROM_SCRATCH:
        return []
    from raydl.continual import param_errors

    params = retrain.get("params") if isinstance(retrain.get("params"), dict) else {}
    out = []
    for loc, msg, got in param_errors({"strategy": name, **params}):
        loc = ("retrain", *(("params", *loc[1:]) if loc[1:] != ("strategy",) else ("strategy",)))
        out.append(_problem(loc, msg + (f" (or {FROM_SCRATCH})" if loc[-1] == "strategy" else ""), "", got))
    return out


def pipeline_from_dict(raw: Any, origin: str = "", base: Path | None = None) -> PipelineSpec:
    if not isinstance(raw, dict):
        raise SpecError(f"invalid pipeline {origin}: the top level must be a mapping of sections, got {type(raw).__name__}")
    job, lines = _job_problems(raw, base)
    spec = None
    try:
        model = raw.get("model")
        if job is not None and isinstance(model, dict):
            raw = {**raw, "model": {**model, "job": job}}
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as err:
        lines = [_problem(e["loc"], e["msg"], e["type"], e.get("input")) for e in err.errors()] + lines
    lines += _strategy_problems(raw)
    if lines:
        n = len(lines)
        raise SpecError(f"invalid pipeline {origin}: {n} problem{'s' if n > 1 else ''}: " + "; ".join(lines))
    return spec


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> PipelineSpec:
    """Read a pipeline YAML, apply dotted overrides, validate it and its job spec (one SpecError)."""
    p = Path(path).expanduser()
    raw = _read_yaml(p, "pipeline") or {}
    if not isinstance(raw, dict):
        raise SpecError(f"invalid pipeline in {p}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return pipeline_from_dict(apply_overrides(raw, overrides or []), origin=f"in {p}", base=p.parent)


__all__ = ["FROM_SCRATCH", "METRIC_NAMES", "PipelineSpec", "load_pipeline", "pipeline_from_dict"]
