"""The typed job spec: YAML in, a frozen, validated `JobSpec` out.

Every entry point (CLI, Python API, Tune trials, pipeline steps) builds this one spec. Unknown
keys, wrong types and out-of-range values are rejected at once, every problem listed with its
dotted path. After `load_spec` the rest of raydl trusts its input.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raydl.errors import SpecError

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
MAX_SPEC_BYTES = 1 << 20  # a job spec is a page of YAML; anything larger is a mistake
MAX_ECHO = 80  # characters of a bad value echoed back in an error
MAX_SYNTHETIC_ROWS = 10_000_000


class Section(BaseModel):
    # strict: YAML already types its scalars, so `epochs: true` or `num_workers: 2.5` is a mistake,
    # not something to coerce (an int is still accepted where a float is asked for).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _echo(value: Any) -> str:
    """repr of a bad value, cut to MAX_ECHO characters (a 50 MiB value is not echoed whole)."""
    r = repr(value)
    if len(r) <= MAX_ECHO:
        return r
    size = f"{len(value)} chars" if isinstance(value, str) else f"{len(r)} chars as text"
    return f"{r[:MAX_ECHO]}... ({size})"


class RunSpec(Section):
    name: str = Field("raydl-run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    storage_path: str = "runs"


class SplitSpec(Section):
    train: float = Field(0.6, gt=0, lt=1)
    val: float = Field(0.2, gt=0, lt=1)
    test: float = Field(0.2, ge=0, lt=1)

    @model_validator(mode="after")
    def _adds_up(self) -> SplitSpec:
        total = self.train + self.val + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"split fractions add up to {total:g}; train + val + test must be 1")
        return self


class DataSpec(Section):
    source: str = Field(..., min_length=1, description="built-in dataset name, or a Parquet/CSV file, directory or URI")
    format: Literal["auto", "parquet", "csv"] = "auto"
    features: list[str] | None = None
    label: str | None = None
    task: Literal["auto", "classification", "regression"] = "auto"
    split: SplitSpec = SplitSpec()
    seed: int = Field(0, ge=0)
    standardize: Literal["feature", "global", "none"] = "feature"
    loader: Literal["auto", "in_memory", "ray_data"] = "auto"
    cache: bool = Field(True, description="a streamed source's splits are read once into the object store when they fit in "
                                          "a quarter of it; false: every epoch streams them from the files")
    id_column: str | None = Field(None, min_length=1, description="a stable row id the split is hashed from (default: each row's content)")
    classes: list[int | str | bool] | None = Field(None, min_length=2, description="the class labels, fixed (class-incremental data)")
    n_samples: int | None = Field(None, ge=1, le=MAX_SYNTHETIC_ROWS, description="rows for synthetic datasets")
    noise: float | None = Field(None, ge=0)


class ModelSpec(BaseModel):
    """`name` picks a registered model; every other key is a parameter of that model, checked
    against the schema the model declares (`raydl.models`) when the spec is loaded."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)
    name: str = "mlp"

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ContinualSpec(BaseModel):
    """`strategy` picks a registered continual-learning strategy (`raydl.continual`); every other
    key is a parameter of that strategy, checked against the schema it declares."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)
    strategy: str = "naive"

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class StreamSpec(Section):
    """An experience stream for `raydl continual` (`raydl.continual.stream`): a built-in scenario, or
    `sources` (one Parquet/CSV file or partitioned directory per experience)."""

    scenario: str = Field("split_digits", description="a registered scenario, or 'sources'")
    experiences: int | None = Field(None, ge=1, le=100, description="how many (default: the scenario's)")
    seed: int = Field(0, ge=0, description="permutations, rotations, class order")
    sources: list[str] = Field(default_factory=list, description="scenario 'sources': one path or URI per experience")


class LossSpec(Section):
    name: str = "auto"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    huber_delta: float = Field(1.0, gt=0)
    focal_gamma: float = Field(2.0, ge=0, description="focal loss: down-weights easy examples")
    focal_alpha: float | None = Field(None, gt=0, lt=1, description="focal loss: weight of the positive/minority class")
    margin: float = Field(1.0, gt=0, description="contrastive and triplet losses")
    temperature: float = Field(0.1, gt=0, description="InfoNCE and distillation")
    task_weights: dict[str, float] = Field(default_factory=dict, description="multi-task: weight of each head's loss")


class FinetuneSpec(Section):
    """Start from a trained raydl model directory (transfer learning, continual learning)."""

    from_: str = Field(..., alias="from", min_length=1, description="a raydl model directory")
    freeze: list[str] = Field(default_factory=list, description="fnmatch patterns of parameter names kept fixed")
    lr_mult: dict[str, float] = Field(default_factory=dict, description="pattern -> learning-rate multiplier")
    reinit: list[str] = Field(default_factory=list, description="patterns of parameters not loaded (e.g. a new head)")

    @field_validator("lr_mult")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: m for k, m in v.items() if not m > 0}
        if bad:
            raise ValueError(f"learning-rate multipliers must be > 0, got {bad}")
        return v


class ScheduleSpec(Section):
    name: Literal["none", "step", "cosine"] = "none"
    warmup_epochs: int = Field(0, ge=0)
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    min_lr: float = Field(0.0, ge=0)


class OptimizerSpec(Section):
    name: str = "adam"
    lr: float = Field(1e-3, gt=0, le=10)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    l1: float = Field(0.0, ge=0)
    schedule: ScheduleSpec = ScheduleSpec()


class EarlyStoppingSpec(Section):
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.0, ge=0)


class TrainingSpec(Section):
    epochs: int = Field(20, ge=1, le=100_000)
    batch_size: int = Field(64, ge=1, description="per worker")
    grad_accum_steps: int = Field(1, ge=1)
    clip_grad_norm: float | None = Field(None, gt=0)
    clip_grad_value: float | None = Field(None, gt=0)
    early_stopping: EarlyStoppingSpec | None = None
    seed: int = Field(0, ge=0)
    precision: Literal["32", "bf16-mixed", "16-mixed"] = "32"
    shuffle: bool = True
    calibration: Literal["none", "temperature", "platt", "isotonic"] = Field(
        "none", description="fit a calibrator on the validation split when training ends (raydl calibrate)")


class ScalingSpec(Section):
    num_workers: int = Field(2, ge=1, le=1024)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, gt=0)
    resources_per_worker: dict[str, float] = Field(default_factory=dict)


class CheckpointSpec(Section):
    every_n_epochs: int = Field(1, ge=1)
    keep_last: int = Field(2, ge=1)
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    max_failures: int = Field(2, ge=0)


class TrackingSpec(Section):
    backend: Literal["wandb", "none"] = "wandb"
    mode: Literal["offline", "online"] = "offline"
    project: str = "raydl"
    entity: str | None = None
    tags: list[str] = Field(default_factory=list)
    log_model: bool = True


class JobSpec(Section):
    run: RunSpec = RunSpec()
    data: DataSpec
    model: ModelSpec = ModelSpec()
    loss: LossSpec = LossSpec()
    optimizer: OptimizerSpec = OptimizerSpec()
    training: TrainingSpec = TrainingSpec()
    scaling: ScalingSpec = ScalingSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    tracking: TrackingSpec = TrackingSpec()
    finetune: FinetuneSpec | None = None
    continual: ContinualSpec | None = None
    tune: TuneSpec | None = None  # raydl tune: the search (raydl.tune.spec)
    stream: StreamSpec | None = None

    @field_validator("data", mode="before")
    @classmethod
    def _standardize_bool(cls, v: Any) -> Any:
        # `standardize: true/false` reads as per-feature / none.
        if isinstance(v, dict) and isinstance(v.get("standardize"), bool):
            v = {**v, "standardize": "feature" if v["standardize"] else "none"}
        return v

    @field_validator("tracking", mode="before")
    @classmethod
    def _tracking_shorthand(cls, v: Any) -> Any:
        # `tracking: none` / `tracking: wandb` are accepted as shorthands.
        return {"backend": v} if isinstance(v, str) else v


def _problem(loc: tuple, msg: str, kind: str, got: Any) -> str:
    path = ".".join(str(p) for p in loc) or "<root>"
    msg = msg.removeprefix("Value error, ")
    if kind == "extra_forbidden":
        msg = "unknown key"
    elif kind == "missing":
        msg = "required key is missing"
    got_s = "" if kind in ("extra_forbidden", "missing") or got is None or isinstance(got, dict) else f" (got {_echo(got)})"
    return f"{path}: {msg}{got_s}"


def _problems(raw: dict[str, Any]) -> tuple[JobSpec | None, list[str]]:
    """The spec, or every problem in it: the sections' own, then the model's parameters."""
    from raydl.models import param_errors  # the models import this module

    spec, lines = None, []
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as err:
        lines = [_problem(e["loc"], e["msg"], e["type"], e.get("input")) for e in err.errors()]
    lines += [_problem(loc, msg, "", got) for loc, msg, got in param_errors(raw.get("model", {}))]
    if isinstance(raw.get("continual"), dict):
        from raydl.continual import param_errors as strategy_errors

        lines += [_problem(loc, msg, "", got) for loc, msg, got in strategy_errors(raw["continual"])]
    if isinstance(raw.get("tune"), dict):
        from raydl.tune.spec import space_errors

        lines += [_problem(loc, msg, "", got) for loc, msg, got in space_errors(raw)]
    return spec, lines


def parse_override(text: str) -> tuple[list[str], Any]:
    """`optim.lr=3e-3` -> (["optim", "lr"], 0.003). Values are parsed as YAML scalars/lists."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecError(f"bad override {_echo(text)}: expected dotted.key=value, e.g. optimizer.lr=3e-3")
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError(f"override {key[:MAX_ECHO]!r} is {len(text)} characters long; at most {MAX_SPEC_BYTES} are allowed")
    try:
        value = yaml.load(raw, Loader=_UniqueKeyLoader) if raw != "" else ""  # noqa: S506
    except yaml.YAMLError as e:
        raise SpecError(f"bad override {_echo(text)}: value is not valid YAML ({e.problem})") from None
    if isinstance(value, str) and _FLOAT.fullmatch(value):
        value = float(value)  # YAML 1.1 reads 3e-3 (no dot) as a string
    return key.split("."), value


def with_value(raw: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    """A copy of `raw` with `value` at the dotted `path` (the mappings on the way copied, or made)."""
    out = dict(raw)
    node = out
    for part in path[:-1]:
        child = node.get(part)
        child = dict(child) if isinstance(child, dict) else {}
        node[part] = child
        node = child
    node[path[-1]] = value
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = dict(raw)
    for text in overrides:
        path, value = parse_override(text)
        out = with_value(out, path, value)
    return out


def spec_and_problems(raw: dict[str, Any]) -> tuple[JobSpec | None, list[str]]:
    """The typed spec and every problem in a raw spec, each `dotted.path: what is wrong` (the spec is
    usable only when the list is empty): for callers that report problems their own way (the gateway)."""
    return _problems(raw)


def spec_from_dict(raw: Any, origin: str = "") -> JobSpec:
    if not isinstance(raw, dict):
        raise SpecError(f"invalid job spec {origin}: the top level must be a mapping of sections, got {type(raw).__name__}")
    spec, lines = _problems(raw)
    if lines:
        n = len(lines)
        raise SpecError(f"invalid job spec {origin}: {n} problem{'s' if n > 1 else ''}: " + "; ".join(lines))
    return spec


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Read a YAML job spec, apply dotted overrides and validate it (a `SpecError` lists all problems)."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"job spec not found: {p} (pass the path of a YAML file)")
    size = p.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise SpecError(f"job spec {p} is {size} bytes; a spec may be at most {MAX_SPEC_BYTES} bytes (1 MiB)")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        bom = " (it starts with a UTF-16 byte-order mark)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise SpecError(f"job spec {p} is not UTF-8 text{bom}: byte 0x{data[e.start]:02x} at offset {e.start}; "
                        "save it as UTF-8") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise SpecError(f"malformed YAML in {p}{where}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError(f"invalid job spec in {p}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return spec_from_dict(apply_overrides(raw, overrides or []), origin=f"in {p}")


from raydl.tune.spec import TuneSpec  # noqa: E402 (it builds on Section, defined above)

JobSpec.model_rebuild()


def spec_to_yaml(spec: JobSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json", by_alias=True), sort_keys=False)
