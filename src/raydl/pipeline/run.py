"""One pass of a retraining pipeline over one window, crash-safe, and the one place decisions are
carried out.

    window -> drift -> decide -> [retrain -> evaluate -> calibrate -> gate -> promote] -> record

Each step runs once per pass: its outputs are written under `<run_dir>/<name>/passes/<id>-<window>/`
and recorded in the state database (`raydl.pipeline.state`) when it ends. A pass killed at any step
resumes at that step the next time `run` is called (the training run from its last checkpoint).
The registry is touched by `carry_out` only: registering is idempotent (a version carries its
pass's key in its lineage, and a redone promote step finds it instead of registering again), and
promoting the current holder changes nothing, so a redone step never makes a second version or a
second promotion. One pass of a pipeline at a time: an flock beside its run dir.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from raydl.errors import RaydlError
from raydl.pipeline import gate as gates
from raydl.pipeline import steps
from raydl.pipeline.spec import FROM_SCRATCH, PipelineSpec
from raydl.pipeline.state import State
from raydl.pipeline.windows import find, list_windows, read_window, split_holdout

TEST_HOOK_ENV = "RAYDL_PIPELINE_TEST_HOOK"
STEPS = ("window", "drift", "decide", "retrain", "evaluate", "calibrate", "gate", "promote", "record")


class PipelineError(RaydlError):
    """The pipeline cannot run as asked (unknown model or alias, a window already done, a pass running)."""


def _test_hook(point: str) -> None:
    """Kill tests only: with RAYDL_PIPELINE_TEST_HOOK=<step>:<dir>, a pass reaching <step> creates
    <dir>/reached and waits there until <dir>/release exists."""
    name, _, folder = os.environ.get(TEST_HOOK_ENV, "").partition(":")
    if name != point or not folder:
        return
    Path(folder, "reached").touch()
    while not Path(folder, "release").exists():
        time.sleep(0.02)


def registry(spec: PipelineSpec):
    from raydl.model_registry.api import ModelRegistry

    return ModelRegistry(spec.model.registry, db=spec.model.registry_db)


def find_champion(reg, spec: PipelineSpec) -> dict | None:
    """The version the serving alias points at; None when the registry has no such model and the
    pipeline may bootstrap it. An unknown model or alias is a PipelineError."""
    name, alias = spec.model.name, spec.model.alias
    models = {m["name"]: m for m in reg.list()}
    if name not in models:
        if spec.model.bootstrap:
            return None
        shown = ", ".join(sorted(models)[:10]) or "none"
        raise PipelineError(f"model.name: the registry {reg.storage} has no model {name!r} (models: {shown}); register "
                            "one with `raydl registry register`, or set model.bootstrap: true to train the first one")
    held = models[name]["aliases"]
    if alias not in held:
        shown = ", ".join(f"{a}=v{v}" for a, v in held.items()) or "none"
        raise PipelineError(f"model.alias: model {name!r} has no alias {alias!r} (aliases: {shown}); promote a version "
                            f"to it with `raydl registry promote {name} VERSION --alias {alias}`")
    return reg.show(f"{name}@{alias}")


def _columns(spec: PipelineSpec, champion_dir: str | None, window) -> tuple[list[str], str]:
    """The feature columns and the label the window must hold: the champion's, or the job spec's."""
    if champion_dir is not None:
        from raydl.model_dir import load_model

        m = load_model(champion_dir)
        return list(m.features), m.prep.label
    data = spec.job_raw().get("data") or {}
    label = data.get("label") or "label"
    if data.get("features"):
        return list(data["features"]), label
    from raydl.datasets import read_table

    names = read_table(window.path, where=f"window {window.name!r}").schema.names
    return [c for c in names if c != label], label


def _age_hours(created_at: str | None) -> float | None:
    if not created_at:
        return None
    return (datetime.now(timezone.utc) - datetime.fromisoformat(created_at)).total_seconds() / 3600


def _registered(reg, name: str, key: str) -> dict | None:
    """The version a redone promote step registered already (its lineage names this pass)."""
    try:
        versions = reg.history(name)["versions"]
    except RaydlError:
        return None
    for v in reversed(versions):
        rec = reg.show(f"{name}@{v['version']}")
        if (rec.get("lineage") or {}).get("pipeline_pass") == key:
            return rec
    return None


def carry_out(decision: dict, reg, spec: PipelineSpec, key: str, challenger_dir: str, champion: dict | None,
              lineage: dict) -> dict[str, Any]:
    """The one place a decision changes anything: promote registers the challenger (once) and
    moves the alias; reject leaves production where it is."""
    name = spec.model.name
    if decision["action"] != "promote":
        return {"action": "reject", "version": None, "production": champion["version"] if champion else None}
    rec = _registered(reg, name, key)
    if rec is None:
        parent = f"{name}@{champion['version']}" if champion else None
        rec = reg.register(challenger_dir, name, parent=parent, lineage=lineage)
    _test_hook("promote.registered")
    moved = reg.promote(name, rec["version"], spec.alias)
    return {"action": "promote", "version": rec["version"], "alias": spec.alias, "previous_version": moved["previous_version"],
            "changed": moved["changed"], "production": rec["version"], "artifact_uri": rec["artifact_uri"]}


def _notify(url: str | None, payload: dict, timeout: float) -> str | None:
    if not url:
        return None
    req = urllib.request.Request(url, data=json.dumps(payload, default=str).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 (http(s) only, checked in the spec)
            return f"HTTP {r.status}"
    except Exception as e:  # noqa: BLE001 (a notification failure does not undo the pass)
        return f"failed: {type(e).__name__}: {e}"


def _wandb(spec: PipelineSpec, pdir: Path, pass_id: int, lineage: dict, metrics: dict, drift_html: str | None) -> str | None:
    """The pass as a W&B run (job type `pipeline`): its lineage as config, metrics and decision."""
    if spec.tracking.backend == "none":
        return None
    import wandb

    run = wandb.init(project=spec.tracking.project, dir=str(pdir), mode=spec.tracking.mode, job_type="pipeline",
                     name=f"{spec.name}-pass{pass_id}", config=lineage, reinit="finish_previous",
                     settings=wandb.Settings(console="off", silent=True, x_disable_stats=True))
    logged: dict[str, Any] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    if drift_html and Path(drift_html).is_file():
        logged["drift/report"] = wandb.Html(Path(drift_html).read_text(encoding="utf-8"))
    run.log(logged)
    run.summary.update({"outcome": lineage["outcome"], "decision": lineage["decision"]["action"],
                        "registry_version": lineage.get("registry_version") or 0})
    rid = run.id
    run.finish()
    return rid


def _job(spec: PipelineSpec, st: State, pass_id: int, pdir: Path, wout: dict, champ_dir: str | None):
    """The retraining job of this pass: on the window's train part, or (from_scratch) on the
    train parts of every window so far."""
    data = wout["train"]
    if spec.retrain.strategy == FROM_SCRATCH and st.earlier(pass_id, "train"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        parts = [pq.read_table(p) for p in [*st.earlier(pass_id, "train"), data]]
        data = steps.write_parquet(pa.concat_tables(parts), pdir / "train-all.parquet")
    return steps.job_spec(spec, run_name=f"{spec.name}-p{pass_id}", storage=pdir / "train", train_data=data,
                          champion_dir=champ_dir)


def run_pass(spec: PipelineSpec, *, window: str | None = None, force: bool = False, address: str | None = None,
             say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """One pass over `window` (default: the interrupted pass, else the next window not done)."""
    from raydl.runlock import RunLock, RunLockedError

    home = spec.home
    try:
        lock = RunLock(home.parent / f".{spec.name}.pipeline.lock", run=f"pipeline {spec.name}", where=home).acquire()
    except RunLockedError as e:
        raise PipelineError(f"a pass of pipeline {spec.name} is already running ({str(e).split('(', 1)[-1].split(';')[0]}; "
                            "passes of one pipeline never overlap: wait for it") from None
    try:
        with State(home) as st, registry(spec) as reg:
            return _pass(spec, st, reg, window, force, address, say)
    finally:
        lock.release()


def _pass(spec, st: State, reg, window, force, address, say) -> dict[str, Any]:
    windows = list_windows(spec.data.location)
    open_ = st.unfinished()
    if open_ and window not in (None, open_["window"]):
        raise PipelineError(f"pass {open_['id']} of window {open_['window']!r} was interrupted; finish it first "
                            f"(run without --window, or with --window {open_['window']})")
    if open_:
        pass_id, wname = open_["id"], open_["window"]
        st.mark_resumed(pass_id)
        done = [s["step"] for s in st.steps(pass_id)]
        say(f"resuming pass {pass_id} (window {wname}) after step {done[-1] if done else 'none'}")
        w = find(windows, wname) if any(x.name == wname for x in windows) else None
        champion = None if st.step(pass_id, "window") else find_champion(reg, spec)
    else:
        done_w = st.done_windows()
        if window is not None:
            w = find(windows, window)
            if w.name in done_w and not force:
                p = done_w[w.name]
                raise PipelineError(f"--window {window}: already processed by pass {p['id']} ({p['outcome']}); "
                                    "pass --force to process it again")
        else:
            w = next((x for x in windows if x.name not in done_w), None)
            if w is None:
                say(f"no new window ({len(windows)} done)")
                return {"pipeline": spec.name, "outcome": "idle", "window": None, "windows_done": len(done_w)}
        champion = find_champion(reg, spec)
    champion_dir = str(reg.fetch(f"{spec.model.name}@{champion['version']}")) if champion else None
    if not open_:
        features, label = _columns(spec, champion_dir, w)
        table = read_window(w, features, label)  # bad input: one line, before anything is recorded
        pass_id = st.start(w.name, w.path, force, table.num_rows)
        say(f"pass {pass_id}: window {w.name} ({table.num_rows} rows)")
    pdir = spec.home / "passes" / f"{pass_id:04d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', (w.name if w else open_['window']))}"
    key = f"{spec.name}#{pass_id}"

    def step(name: str, fn: Callable[[], dict]) -> dict:
        out = st.step(pass_id, name)
        if out is not None:
            return out
        _test_hook(name)
        say(f"  {name} ...")
        t0 = time.time()
        try:
            out = fn()
        except RaydlError as e:
            if name == "promote":  # the registry may be busy: the pass stays open and the next run redoes it
                raise
            # A problem a person must fix (bad data for training, a profile missing, ...): the pass ends
            # as failed, so a schedule goes on to the next window; --window W --force retries this one.
            wname = w.name if w else open_["window"]
            st.finish(pass_id, "failed", {"action": "fail", "reasons": [f"{name}: {e}"], "checks": []},
                      {"pipeline": spec.name, "pass": pass_id, "window": wname, "failed_step": name, "error": str(e)})
            raise PipelineError(f"pass {pass_id} failed at step {name}: {e} (the window {wname!r} is recorded as failed; "
                                f"fix the cause, then `raydl pipeline run --window {wname} --force`)") from None
        st.record(pass_id, name, t0, out)
        return out

    def do_window() -> dict:
        features, label = _columns(spec, champion_dir, w)
        table = read_window(w, features, label)
        train, hold = split_holdout(table, spec.data.holdout, spec.data.seed, w.name)
        champ = {k: champion[k] for k in ("version", "artifact_uri", "created_at")} if champion else None
        return {"window": w.name, "path": w.path, "rows": train.num_rows + hold.num_rows, "features": len(features),
                "label": label, "data": steps.write_parquet(table, pdir / "window.parquet"),
                "train": steps.write_parquet(train, pdir / "train.parquet"),
                "holdout": steps.write_parquet(hold, pdir / "holdout.parquet"), "champion": champ,
                "champion_dir": champion_dir}

    wout = step("window", do_window)
    champ, champ_dir = wout["champion"], wout["champion_dir"]

    def do_drift() -> dict:
        if champ is None:
            return {"skipped": "no champion yet"}
        if spec.trigger.drift is None:
            return {"skipped": "trigger.drift is off"}
        out = steps.drift(spec, champ_dir, wout["data"], pdir)
        out.pop("report")
        return out

    dout = step("drift", do_drift)

    def do_decide() -> dict:
        report = json.loads(Path(dout["json"]).read_text()) if "json" in dout else None
        return gates.trigger(spec.trigger, drift=report, new_rows=st.rows_since_retrain() + wout["rows"],
                             age_hours=_age_hours(champ and champ["created_at"]), has_champion=champ is not None,
                             force=bool(st.get(pass_id)["forced"])).to_dict()

    tdec = step("decide", do_decide)
    say(f"  trigger: {tdec['action']} ({'; '.join(tdec['reasons'])})")
    metrics: dict[str, Any] = {}
    rout = gdec = pout = cout = None
    if tdec["action"] == "retrain":
        rout = step("retrain", lambda: steps.retrain(_job(spec, st, pass_id, pdir, wout, champ_dir), address))
        old = st.earlier(pass_id)

        def do_evaluate() -> dict:
            m = steps.score(rout["model_dir"], wout["holdout"], old, "challenger")
            if champ_dir:
                m.update(steps.score(champ_dir, wout["holdout"], old, "champion"))
            m = steps.with_forgetting(m)
            return {"metrics": m, "json": steps.write_json(pdir / "metrics.json", m)}

        eout = step("evaluate", do_evaluate)

        def do_calibrate() -> dict:
            if spec.calibrate.method == "none":
                return {"method": "none", "metrics": {}}
            fit = steps.calibrate(rout["model_dir"], spec.calibrate.method)
            after = steps.score(rout["model_dir"], wout["holdout"], old, "challenger")
            m = steps.with_forgetting({**eout["metrics"], **after})
            return {**fit, "metrics": m, "json": steps.write_json(pdir / "metrics.json", m)}

        cout = step("calibrate", do_calibrate)
        metrics = cout["metrics"] or eout["metrics"]
        gdec = step("gate", lambda: gates.gate(spec.gate.rules, metrics).to_dict())
        say(f"  gate: {gdec['action']}")
        for r in gdec["reasons"]:
            say(f"    {r}")
        lineage = {"pipeline": spec.name, "pipeline_pass": key, "window": wout["window"], "trigger": tdec,
                   "drift_report": {k: dout.get(k) for k in ("json", "html", "drifted")},
                   "training_run": rout["run_dir"], "training_wandb_run": rout["wandb_run_id"],
                   "strategy": rout["strategy"], "started_from": champ and f"{spec.model.name}@{champ['version']}",
                   "metrics": metrics, "calibration": cout.get("method"), "decision": gdec,
                   "steps": list(STEPS), "pass_dir": str(pdir)}
        pout = step("promote", lambda: carry_out(gdec, reg, spec, key, rout["model_dir"], champ, lineage))
    outcome = "skipped" if tdec["action"] == "skip" else ("promoted" if pout["action"] == "promote" else "rejected")
    decision = gdec or tdec

    def do_record() -> dict:
        lineage = {"pipeline": spec.name, "pass": pass_id, "window": wout["window"], "outcome": outcome,
                   "trigger": tdec, "drift": dout, "training": rout, "calibration": cout and {k: cout.get(k) for k in ("method", "fitted_on")},
                   "metrics": metrics, "decision": decision, "registry_version": pout and pout.get("version"),
                   "production": (pout or {}).get("production", champ and champ["version"]),
                   "steps": [s["step"] for s in st.steps(pass_id)] + ["record"], "pass_dir": str(pdir)}
        lineage["wandb_run_id"] = _wandb(spec, pdir, pass_id, lineage, metrics, dout.get("html"))
        payload = {"pipeline": spec.name, "pass": pass_id, "window": wout["window"], "outcome": outcome,
                   "decision": decision, "registry_version": lineage["registry_version"],
                   "production": lineage["production"], "metrics": metrics}
        lineage["notify"] = _notify(spec.notify.webhook, payload, spec.notify.timeout_s)
        steps.write_json(pdir / "decision.json", decision)
        steps.write_json(pdir / "lineage.json", lineage)
        return lineage

    lineage = step("record", do_record)
    st.finish(pass_id, outcome, decision, lineage)
    say(f"pass {pass_id}: {outcome}" + (f" v{lineage['registry_version']}" if lineage["registry_version"] else "")
        + f"; production: {('v' + str(lineage['production'])) if lineage['production'] else 'none'}")
    return {"pipeline": spec.name, "pass": pass_id, "window": wout["window"], "outcome": outcome,
            "reasons": decision["reasons"], "registry_version": lineage["registry_version"],
            "production": lineage["production"], "pass_dir": str(pdir), "resumed": bool(open_)}
