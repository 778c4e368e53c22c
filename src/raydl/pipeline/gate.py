"""Deciding, without doing: the trigger (retrain or skip) and the promotion gate, both pure.

    parse_rule("challenger.new.accuracy >= champion.new.accuracy + 0.02")
    gate(["challenger.new.ece <= 0.05"], metrics)  -> Decision(passed, reasons, checks)

A gate rule is `METRIC OP VALUE`: METRIC is `challenger|champion` `.old|.new` `.NAME` (NAME one of
the metrics evaluation computes) or `forgetting` (the champion's accuracy on the old holdout minus
the challenger's); OP is >=, <=, > or <; VALUE is a number, or a metric plus or minus a number.
A rule that needs a champion or an old holdout the pass does not have (the first pass) is
recorded as not applicable; it neither passes nor fails the gate. `raydl.pipeline.run` carries
the decisions out, in one place.
"""

from __future__ import annotations

import operator
import re
from dataclasses import asdict, dataclass, field
from typing import Any

NAMES = ("accuracy", "f1", "precision", "recall", "loss", "ece", "mce", "brier", "nll")
METRIC_NAMES = tuple(f"{who}.{part}.{n}" for who in ("challenger", "champion") for part in ("old", "new")
                     for n in NAMES) + ("forgetting",)
OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_REF = r"[A-Za-z_][A-Za-z0-9_.]*"
_RULE = re.compile(rf"^\s*({_REF})\s*(>=|<=|>|<)\s*(?:({_REF})\s*(?:([+-])\s*([0-9.eE+-]+))?|([+-]?[0-9.eE+-]+))\s*$")


@dataclass(frozen=True)
class Rule:
    text: str
    metric: str
    op: str
    other: str | None  # a metric on the right, or None
    offset: float  # added to `other`, or the constant


def _known(ref: str) -> str:
    if ref not in METRIC_NAMES:
        raise ValueError(f"metric {ref!r} is not computed; computed: {', '.join(METRIC_NAMES[:len(NAMES)])}, "
                         f"... (challenger|champion).(old|new).({'|'.join(NAMES)}), forgetting")
    return ref


def parse_rule(text: str) -> Rule:
    m = _RULE.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError('not a rule; write METRIC OP VALUE, e.g. "challenger.new.accuracy >= champion.new.accuracy + 0.02"')
    lhs, op, other, sign, num, const = m.groups()
    try:
        if other is not None:
            offset = float(num) * (-1 if sign == "-" else 1) if num else 0.0
        else:
            offset = float(const)
    except ValueError:
        raise ValueError("the number in it is not a number") from None
    return Rule(text, _known(lhs), op, _known(other) if other else None, offset)


@dataclass(frozen=True)
class Decision:
    """What to do, and why: the trigger's (`action` retrain|skip) or the gate's (promote|reject)."""

    action: str
    reasons: list[str]
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def go(self) -> bool:
        return self.action in ("retrain", "promote")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _needs(ref: str | None, metrics: dict[str, float]) -> str | None:
    if ref is None or ref in metrics:
        return None
    if ref == "forgetting" or ref.startswith("champion."):
        return "no champion" if not any(k.startswith("champion.") for k in metrics) else "no old holdout"
    return "no old holdout" if ".old." in ref else "not measured"


def gate(rules: list[str], metrics: dict[str, float]) -> Decision:
    """Every rule checked against `metrics` (keys as in METRIC_NAMES): promote when none fails."""
    checks, reasons = [], []
    for text in rules:
        r = parse_rule(text)
        missing = _needs(r.metric, metrics) or _needs(r.other, metrics)
        if missing:
            checks.append({"rule": text, "status": "not_applicable", "why": missing})
            reasons.append(f"{text}: not applicable ({missing})")
            continue
        value = metrics[r.metric]
        bound = (metrics[r.other] if r.other else 0.0) + r.offset
        ok = OPS[r.op](value, bound)
        checks.append({"rule": text, "status": "pass" if ok else "fail", "value": value, "bound": bound})
        reasons.append(f"{text}: {r.metric} = {value:.4f} {'meets' if ok else 'misses'} {r.op} {bound:.4f}")
    failed = [c for c in checks if c["status"] == "fail"]
    if not rules:
        reasons.append("no gate rules: promote")
    return Decision("reject" if failed else "promote", reasons, checks)


def trigger(cfg: Any, *, drift: dict[str, Any] | None, new_rows: int, age_hours: float | None,
            has_champion: bool, force: bool = False) -> Decision:
    """Retrain or skip: `cfg` is the pipeline's `trigger:` section; `drift` the drift check's JSON."""
    if not has_champion:
        return Decision("retrain", ["no champion yet: the first model is trained from scratch (bootstrap)"])
    fired, quiet = [], []
    if cfg.drift is not None and drift is not None:
        d = cfg.drift
        n = len(drift.get("drifted_features") or [])
        feats = n >= d.min_features
        mv = bool((drift.get("multivariate") or {}).get("drifted"))
        outs = [o["name"] for o in drift.get("output") or [] if o.get("drifted")]
        verdicts = {"features": (feats, f"{n}/{len(drift.get('features') or [])} features drifted "
                                        f"({', '.join((drift.get('drifted_features') or [])[:5])})"),
                    "multivariate": (mv, "multivariate reconstruction error drifted"),
                    "output": (bool(outs), f"model-output OOD scores drifted ({', '.join(outs)})")}
        for name in d.verdicts:
            hit, text = verdicts[name]
            (fired if hit else quiet).append(f"drift/{name}: {text}" if hit else f"drift/{name}: no drift")
    if cfg.new_rows is not None:
        (fired if new_rows >= cfg.new_rows else quiet).append(f"new labelled rows: {new_rows} (threshold {cfg.new_rows})")
    if cfg.max_age_hours is not None and age_hours is not None:
        old = age_hours >= cfg.max_age_hours
        (fired if old else quiet).append(f"champion age {age_hours:.2f} h (max {cfg.max_age_hours:g} h)")
    if cfg.always:
        fired.append("trigger.always")
    if force and not fired:
        fired.append("--force")
    return Decision("retrain" if fired else "skip", fired or quiet or ["no trigger configured"])
