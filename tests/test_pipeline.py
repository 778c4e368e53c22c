"""Retraining pipelines without a training run: the spec, the pure decisions, windows, bad input
(one line, exit 2, nothing recorded), the CronJob (validated offline), and a skip-only pass."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from pipeline_env import REPO, Webhook, champion, pipeline_file

from raydl.cli import main
from raydl.errors import SpecError
from raydl.pipeline.gate import Decision, gate, parse_rule, trigger
from raydl.pipeline.scenario import digits_windows
from raydl.pipeline.spec import load_pipeline
from raydl.pipeline.state import State
from raydl.pipeline.windows import list_windows

PIPELINES = sorted((REPO / "pipelines").glob("*.yaml"))


@pytest.fixture(scope="module")
def windows(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("windows")
    digits_windows(out, seed=0)
    return out


def _err(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    return lines[0]


# ---- the spec ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_every_shipped_pipeline_validates(path):
    spec = load_pipeline(path)
    assert spec.gate.rules and spec.model.job
    # its job spec is a valid job spec once a window is put in
    from raydl.pipeline.steps import job_spec

    job = job_spec(spec, run_name="x", storage=Path("/tmp/x"), train_data="w.parquet", champion_dir="/tmp/champion")
    assert job.continual.strategy == spec.retrain.strategy and job.finetune.from_ == "/tmp/champion"


def test_every_shipped_pipeline_is_run_on_small_data():
    # each shipped pipeline runs end to end in a test; a new one needs its own run test here
    runs = {"digits_continual.yaml": "tests/test_pipeline_e2e.py"}
    assert {p.name for p in PIPELINES} == set(runs)


def test_every_problem_is_listed_with_its_dotted_path(tmp_path):
    raw = yaml.safe_load((REPO / "pipelines" / "digits_continual.yaml").read_text())
    raw["data"]["holdout"] = 1.5
    raw["trigger"]["drift"]["alpha"] = "x"
    raw["gate"]["rules"] = ["challenger.new.auc >= 0.9", "challenger.new.accuracy >= champion.new.accuracy + 0.02"]
    raw["model"]["job"]["training"]["epochs"] = 0
    raw["retrain"]["strategy"] = "magic"
    raw["bogus"] = 1
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError) as e:
        load_pipeline(p)
    msg = str(e.value)
    for where in ("data.holdout", "trigger.drift.alpha", "gate.rules", "model.job: training.epochs", "retrain.strategy",
                  "bogus: unknown key"):
        assert where in msg, (where, msg)
    assert "'challenger.new.auc' is not computed" in msg
    assert "from_scratch" in msg and "ewc" in msg


def test_retrain_strategy_goes_into_the_job_spec_by_name():
    from raydl.pipeline.spec import pipeline_from_dict
    from raydl.pipeline.steps import job_spec

    raw = yaml.safe_load((REPO / "pipelines" / "digits_continual.yaml").read_text())
    for strategy, params in (("ewc", {"weight": 5.0}), ("naive", {})):
        spec = pipeline_from_dict({**raw, "retrain": {"strategy": strategy, "params": params, "overrides": ["training.epochs=2"]}})
        job = job_spec(spec, run_name="r", storage=Path("/tmp/s"), train_data="t.parquet", champion_dir="/c")
        assert job.continual.strategy == strategy and job.continual.params == params and job.training.epochs == 2
    spec = pipeline_from_dict({**raw, "retrain": {"strategy": "from_scratch"}})
    job = job_spec(spec, run_name="r", storage=Path("/tmp/s"), train_data="t.parquet", champion_dir="/c")
    assert job.continual is None and job.finetune is None


# ---- pure decisions ---------------------------------------------------------------------------


def test_gate_rules_decide_with_reasons():
    r = parse_rule("challenger.new.accuracy >= champion.new.accuracy + 0.02")
    assert (r.metric, r.op, r.other, r.offset) == ("challenger.new.accuracy", ">=", "champion.new.accuracy", 0.02)
    rules = ["challenger.new.accuracy >= champion.new.accuracy + 0.02", "forgetting <= 0.01", "challenger.new.ece <= 0.05"]
    m = {"challenger.new.accuracy": 0.93, "champion.new.accuracy": 0.90, "challenger.old.accuracy": 0.95,
         "champion.old.accuracy": 0.97, "forgetting": 0.02, "challenger.new.ece": 0.04}
    d = gate(rules, m)
    assert d.action == "reject" and [c["status"] for c in d.checks] == ["pass", "fail", "pass"]
    assert "forgetting = 0.0200 misses <= 0.0100" in d.reasons[1]
    assert gate(rules, {**m, "forgetting": 0.0}).action == "promote"
    first = gate(rules, {"challenger.new.accuracy": 0.9, "challenger.new.ece": 0.03})  # a bootstrap pass
    assert first.action == "promote" and [c["status"] for c in first.checks] == ["not_applicable", "not_applicable", "pass"]
    for bad in ("accuracy >= 0.9", "challenger.new.accuracy => 0.9", "challenger.new.accuracy >= x.y"):
        with pytest.raises(ValueError):
            parse_rule(bad)


def test_trigger_decides_retrain_or_skip():
    from raydl.pipeline.spec import TriggerSection

    drift = {"drifted_features": ["a", "b"], "features": [{}] * 10, "multivariate": {"drifted": False}, "output": []}
    calm = {"drifted_features": [], "features": [{}] * 10, "multivariate": {"drifted": False}, "output": []}
    t = TriggerSection()
    kw = {"new_rows": 10, "age_hours": 1.0, "has_champion": True}
    assert trigger(t, drift=drift, **kw).action == "retrain"
    quiet = trigger(t, drift=calm, **kw)
    assert quiet.action == "skip" and "drift/features: no drift" in quiet.reasons
    assert trigger(t, drift=calm, force=True, **kw).reasons == ["--force"]
    rows = TriggerSection(drift=None, new_rows=100)
    assert trigger(rows, drift=None, **{**kw, "new_rows": 150}).action == "retrain"
    aged = trigger(TriggerSection(drift=None, max_age_hours=24), drift=None, **{**kw, "age_hours": 30})
    assert aged.action == "retrain" and "champion age 30.00 h" in aged.reasons[0]
    assert trigger(TriggerSection(always=True), drift=calm, **kw).action == "retrain"
    assert trigger(t, drift=None, new_rows=0, age_hours=None, has_champion=False).action == "retrain"
    assert isinstance(quiet, Decision) and quiet.to_dict()["action"] == "skip"


# ---- windows ----------------------------------------------------------------------------------


def test_windows_come_in_order_of_name_and_number(tmp_path):
    for n in ("part-10", "part-9", "part-1"):
        (tmp_path / f"{n}.parquet").write_bytes(b"")
    (tmp_path / "2026-12-01").mkdir()
    (tmp_path / ".hidden.parquet").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    assert [w.name for w in list_windows(str(tmp_path))] == ["2026-12-01", "part-1", "part-9", "part-10"]
    assert [w.name for w in list_windows(str(tmp_path / "part-*.parquet"))] == ["part-1", "part-9", "part-10"]
    listed = [str(tmp_path / "part-9.parquet"), str(tmp_path / "part-1.parquet")]
    assert [w.name for w in list_windows(listed)] == ["part-9", "part-1"]


# ---- bad input: one line, exit 2, nothing recorded --------------------------------------------


@pytest.fixture
def served(tmp_path, windows):
    """A champion in a real registry and a pipeline on the windows (no training needed)."""
    champion(tmp_path, windows / "01-baseline.parquet")
    return tmp_path


def _no_pass(p: Path) -> None:
    spec = load_pipeline(p)
    if (spec.home / "state.db").exists():
        with State(spec.home) as st:
            assert st.passes() == []


def test_unknown_registry_model_or_alias(tmp_path, served, windows, capsys):
    p = pipeline_file(tmp_path, windows, model={"name": "nope", "bootstrap": False})
    assert main(["pipeline", "run", str(p)]) == 2
    line = _err(capsys)
    assert "model.name: the registry" in line and "has no model 'nope' (models: digits-continual)" in line
    p = pipeline_file(tmp_path, windows, model={"alias": "staging"})
    assert main(["pipeline", "run", str(p)]) == 2
    line = _err(capsys)
    assert "model.alias: model 'digits-continual' has no alias 'staging' (aliases: production=v1)" in line
    _no_pass(p)


def test_a_second_pass_of_a_running_pipeline_is_refused(tmp_path, served, windows, capsys):
    from raydl.runlock import RunLock

    p = pipeline_file(tmp_path, windows)
    spec = load_pipeline(p)
    with RunLock(spec.home.parent / f".{spec.name}.pipeline.lock", run="held by the test"):
        assert main(["pipeline", "run", str(p)]) == 2
    assert "a pass of pipeline digits-continual is already running (pid" in _err(capsys)
    _no_pass(p)


def test_window_whose_columns_do_not_match_the_champion(tmp_path, served, windows, capsys):
    bad = tmp_path / "bad-windows"
    bad.mkdir()
    t = pq.read_table(windows / "02-shifted.parquet")
    pq.write_table(t.rename_columns([c.replace("px", "pixel") for c in t.column_names]), bad / "w1.parquet")
    p = pipeline_file(tmp_path, bad)
    assert main(["pipeline", "run", str(p)]) == 2
    line = _err(capsys)
    assert "window 'w1'" in line and "columns do not match the model: missing px00" in line
    _no_pass(p)


def test_empty_window(tmp_path, served, windows, capsys):
    bad = tmp_path / "empty-windows"
    bad.mkdir()
    pq.write_table(pq.read_table(windows / "02-shifted.parquet").slice(0, 0), bad / "w1.parquet")
    p = pipeline_file(tmp_path, bad)
    assert main(["pipeline", "run", str(p)]) == 2
    assert "window 'w1'" in (line := _err(capsys)) and "has no rows" in line
    _no_pass(p)


def test_gate_rule_on_a_metric_that_is_not_computed(tmp_path, windows, capsys):
    p = pipeline_file(tmp_path, windows, gate={"rules": ["challenger.new.auroc >= 0.9"]})
    assert main(["pipeline", "run", str(p)]) == 2
    line = _err(capsys)
    assert "gate.rules" in line and "'challenger.new.auroc' is not computed" in line


def test_invalid_cron(tmp_path, windows, capsys):
    p = pipeline_file(tmp_path, windows)
    for cron in ("61 * * * *", "every day", "* * *"):
        assert main(["pipeline", "schedule", str(p), "--cron", cron]) == 2
        assert f"--cron: {cron!r} is not a cron expression" in _err(capsys)


def test_data_location_that_does_not_exist(tmp_path, served, capsys):
    p = pipeline_file(tmp_path, tmp_path / "nowhere")
    assert main(["pipeline", "run", str(p)]) == 2
    assert "data.location:" in (line := _err(capsys)) and "does not exist" in line
    p = pipeline_file(tmp_path, [str(tmp_path / "nowhere.parquet")])
    assert main(["pipeline", "run", str(p)]) == 2
    assert "no file or directory at" in _err(capsys)


# ---- a pass that skips (no training), status and history -------------------------------------


def test_a_calm_window_is_skipped_recorded_once_and_notified(tmp_path, served, windows, capsys):
    hook = Webhook()
    try:
        data = tmp_path / "calm"
        data.mkdir()
        shutil.copy(windows / "01-baseline.parquet", data / "a.parquet")
        p = pipeline_file(tmp_path, data, notify={"webhook": hook.url})
        assert main(["pipeline", "run", str(p)]) == 0
        assert "pass 1: skipped; production: v1" in capsys.readouterr().out
        assert hook.bodies[0]["outcome"] == "skipped" and hook.bodies[0]["decision"]["action"] == "skip"
        assert hook.bodies[0]["production"] == 1 and hook.bodies[0]["registry_version"] is None
        assert main(["pipeline", "run", str(p)]) == 0
        assert "no new window (1 done)" in capsys.readouterr().out
        assert main(["pipeline", "run", str(p), "--window", "a"]) == 2
        assert "already processed by pass 1 (skipped); pass --force" in _err(capsys)
        assert main(["pipeline", "status", str(p)]) == 0
        text = capsys.readouterr().out
        assert "digits-continual@production = v1; windows 1/1 done" in text and "skipped" in text
        assert main(["pipeline", "history", str(p), "--json"]) == 0
        import json

        hist = json.loads(capsys.readouterr().out)["passes"]
        assert [h["outcome"] for h in hist] == ["skipped"]
        steps = hist[0]["lineage"]["steps"]
        assert steps == ["window", "drift", "decide", "record"]
        pdir = Path(hist[0]["lineage"]["pass_dir"])
        assert {"drift.json", "drift.html", "decision.json", "lineage.json"} <= {f.name for f in pdir.iterdir()}
    finally:
        hook.close()


def test_a_step_that_fails_ends_the_pass_as_failed(tmp_path, windows, capsys):
    v = champion(tmp_path, windows / "01-baseline.parquet")
    (Path(v["artifact_uri"]) / "profile.json").unlink()
    data = tmp_path / "one"
    data.mkdir()
    shutil.copy(windows / "01-baseline.parquet", data / "a.parquet")
    p = pipeline_file(tmp_path, data)
    assert main(["pipeline", "run", str(p)]) == 2
    line = _err(capsys)
    assert "pass 1 failed at step drift:" in line and "profile" in line and "--window a --force" in line
    assert main(["pipeline", "run", str(p)]) == 0  # the schedule would go on: nothing left
    assert "no new window" in capsys.readouterr().out
    assert main(["pipeline", "run", str(p), "--window", "a"]) == 2  # --force would process it again
    assert "already processed by pass 1 (failed)" in _err(capsys)
    with State(load_pipeline(p).home) as st:
        assert [(x["status"], x["outcome"]) for x in st.passes()] == [("done", "failed")]


# ---- Kubernetes -------------------------------------------------------------------------------


def test_cronjob_validates_against_the_kubernetes_schema(tmp_path, windows, capsys):
    from k8s_schema import problems

    p = pipeline_file(tmp_path, windows)
    out = tmp_path / "cron.yaml"
    assert main(["pipeline", "k8s", str(p), "--cron", "0 3 * * *", "--namespace", "team-a", "--out", str(out)]) == 0
    capsys.readouterr()
    objs = list(yaml.safe_load_all(out.read_text()))
    assert [o["kind"] for o in objs] == ["ConfigMap", "CronJob"]
    found = [x for o in objs for x in problems(o)]
    assert not found, found
    cron = objs[1]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid" and cron["schedule"] == "0 3 * * *"
    c = cron["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert c["command"][:3] == ["raydl", "pipeline", "run"]
    shipped = yaml.safe_load(objs[0]["data"]["pipeline.yaml"])
    assert load_pipeline(_write(tmp_path / "in-pod.yaml", shipped)).name == "digits-continual"
    # a broken object is caught by the same check (the test can fail)
    broken = {**objs[1], "spec": {**cron, "concurencyPolicy": "Forbid"}}  # misspelt: strict validation rejects it
    assert problems(broken)
    assert main(["pipeline", "k8s", str(pipeline_file(tmp_path, "rel/windows")), "--cron", "0 3 * * *"]) == 2
    assert "cannot read local paths" in _err(capsys)


def _write(p: Path, doc: dict) -> Path:
    p.write_text(yaml.safe_dump(doc))
    return p


def test_state_records_steps_once(tmp_path):
    with State(tmp_path) as st:
        pid = st.start("w", "/w", False, 10)
        st.record(pid, "window", 0.0, {"holdout": "/h"})
        assert st.step(pid, "window") == {"holdout": "/h"} and st.step(pid, "drift") is None
        assert st.unfinished()["id"] == pid
        st.finish(pid, "skipped", {"action": "skip"}, {})
        assert st.unfinished() is None and st.rows_since_retrain() == 10
        assert st.earlier(pid + 1) == ["/h"] and st.earlier(pid) == []



# ---- scheduling ------------------------------------------------------------------------------


@pytest.mark.slow
def test_schedule_never_overlaps_and_coalesces_missed_runs(tmp_path, served, windows):
    """Every 2 s, passes that take about 3 s (a slow webhook): they run one after the other, the fire
    times a pass runs over become one pass, and Ctrl-C stops the process cleanly."""
    import json
    import signal
    import time

    from pipeline_env import cli_env, raydl

    data = tmp_path / "calm"
    data.mkdir()
    for i in range(6):
        shutil.copy(windows / "01-baseline.parquet", data / f"w{i}.parquet")
    hook = Webhook(delay_s=3.0)
    p = pipeline_file(tmp_path, data, trigger={"drift": None, "new_rows": 10**9}, notify={"webhook": hook.url})
    proc = raydl("pipeline", "schedule", str(p), "--cron", "* * * * * */2", env=cli_env(tmp_path))
    try:
        spec = load_pipeline(p)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if (spec.home / "state.db").exists():
                with State(spec.home) as st:
                    if sum(x["status"] == "done" for x in st.passes()) >= 3:
                        break
            time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        hook.close()
    assert proc.returncode == 0, err
    assert "stopped" in out and "coalesced into one pass" in out, out
    with State(spec.home) as st:
        done = [x for x in st.passes() if x["status"] == "done"]
    assert len(done) >= 3 and hook.max_in_flight == 1
    for a, b in zip(done, done[1:]):
        assert a["finished_at"] <= b["started_at"], "passes overlapped"
        assert b["started_at"] - a["finished_at"] < 1.5, "a missed run was not run at once when the pass ended"
    # coalesced: one pass per pass-length (3 s), not one per fire time (2 s) piling up
    span = done[-1]["finished_at"] - done[0]["started_at"]
    assert len(done) <= span / 3.0 + 1
    assert [x["window"] for x in done] == [f"w{i}" for i in range(len(done))]
    status = subprocess_out(["pipeline", "status", str(p), "--json"], tmp_path)
    assert json.loads(status)["windows_done"] == len(done)


def subprocess_out(args: list[str], tmp: Path) -> str:
    import subprocess
    import sys

    from pipeline_env import cli_env

    r = subprocess.run([sys.executable, "-m", "raydl.cli", *args], env=cli_env(tmp), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_windows_under_an_object_store_prefix(s3_session, windows):
    from raydl import storage
    from raydl.pipeline.windows import read_window

    base = s3_session.uri("pipeline-windows")
    for name in ("02-shifted", "01-baseline"):
        storage.write_bytes_atomic(storage.join(base, f"{name}.parquet"), (windows / f"{name}.parquet").read_bytes())
    found = list_windows(base)
    assert [w.name for w in found] == ["01-baseline", "02-shifted"]
    t = read_window(found[1], [f"px{i:02d}" for i in range(64)], "digit")
    assert t.num_rows == pq.read_table(windows / "02-shifted.parquet").num_rows
    from raydl.errors import DataError

    with pytest.raises(DataError, match="nothing under"):
        list_windows(s3_session.uri("no-such-prefix"))
