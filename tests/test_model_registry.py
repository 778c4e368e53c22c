"""The model registry through its Python API and `raydl registry`, on SQLite and on a real
PostgreSQL server, with local and S3 (moto) artifact storage. No training: model directories
are written by raydl's own writer (tests/model_dirs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from model_dirs import model_dir
from postgres import running_postgres

from raydl.cli import main
from raydl.model_dir import load_model
from raydl.model_registry import RegistryError
from raydl.model_registry.api import ModelRegistry, parse_ref, rollback_target
from raydl.storage import file_manifest


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """One iris model directory inside a run dir (result.json, a W&B run dir), with a drift
    profile, a calibrator and extra lineage; and a plain second one."""
    root = tmp_path_factory.mktemp("models")
    run = root / "runs" / "iris-run"
    mdir = model_dir(run / "model", source="iris", steps=40, run_name="iris-run", profile=True)
    (run / "result.json").write_text(json.dumps({"model_dir": str(mdir)}))
    (run / "wandb" / "offline-run-20261101_101010-oldrun1").mkdir(parents=True)
    (run / "wandb" / "offline-run-20261202_121212-k3x9q2ab").mkdir()
    from raydl.calibration.api import calibrate_model_dir

    calibrate_model_dir(mdir, "temperature")
    (mdir / "lineage.json").write_text(json.dumps({"strategy": "replay", "buffer": {"size": 500, "file": "buffer.parquet"}}))
    return {"full": mdir, "plain": model_dir(root / "plain", source="iris", run_name="plain")}


_pg = pytest.fixture(scope="module", name="pg")(running_postgres)


@pytest.fixture(params=["sqlite", "postgres"])
def reg(request, tmp_path):
    db = request.getfixturevalue("pg").new_database() if request.param == "postgres" else None
    with ModelRegistry(tmp_path / "store", db=db) as r:
        yield r


def test_refs_and_the_rollback_decision():
    assert parse_ref("digits") == parse_ref("digits")
    assert parse_ref("digits@3").version == 3 and parse_ref("digits@v3").version == 3
    assert parse_ref("digits@production").alias == "production"
    for bad in ("", "a/b", "digits@", "digits@3x!", "@prod"):
        with pytest.raises(RegistryError):
            parse_ref(bad)

    def ev(i, action, version, previous=None, undoes=None):
        return {"id": i, "action": action, "version": version, "previous_version": previous, "undoes": undoes}

    assert rollback_target([ev(1, "promote", 1)]) is None  # the first holder has nothing before it
    chain = [ev(1, "promote", 1), ev(2, "promote", 2, 1), ev(3, "promote", 3, 2)]
    assert rollback_target(chain) == (3, 2)
    chain.append(ev(4, "rollback", 2, 3, undoes=3))
    assert rollback_target(chain) == (2, 1)  # a second rollback goes one further back
    chain += [ev(5, "promote", 4, 2), ev(6, "rollback", 2, 4, undoes=5)]
    assert rollback_target(chain) == (2, 1)
    chain.append(ev(7, "rollback", 1, 2, undoes=2))
    assert rollback_target(chain) is None


def test_register_promote_rollback_history_delete(reg, models):
    v1 = reg.register(models["full"], "iris")
    v2 = reg.register(models["plain"], "iris", parent="iris@1", lineage={"trigger": "schedule"})
    v3 = reg.register(models["plain"], "iris")
    assert [v1["version"], v2["version"], v3["version"]] == [1, 2, 3]

    # lineage of v1, read from the model dir and its run dir
    assert v1["source_run"] == "iris-run" and v1["run_dir"] == str(models["full"].parent.resolve())
    assert v1["wandb_run_id"] == "k3x9q2ab"  # the newest W&B run of the run
    assert v1["data_fingerprint"] == json.loads((models["full"] / "manifest.json").read_text())["dataset_fingerprint"]
    assert v1["calibration"]["method"] == "temperature" and v1["calibration"]["params"]["temperature"] > 0
    assert v1["calibration"]["metrics"]["val"]["after"]["nll"] <= v1["calibration"]["metrics"]["val"]["before"]["nll"]
    assert v1["drift_profile"]["file"] == "profile.json" and v1["drift_profile"]["n_features"] == 4
    assert v1["lineage"]["strategy"] == "replay" and v1["lineage"]["buffer"]["size"] == 500
    assert v1["lineage"]["data_source"] == "iris" and v1["metrics"]["status"] == "finished"
    assert "name: iris-run" in v1["spec"] and v1["parent"] is None
    assert v2["parent"] == "iris@1" and v2["lineage"]["trigger"] == "schedule"
    # the artifact is a complete copy, loadable as a model directory
    assert v1["files"] == file_manifest(models["full"]) == file_manifest(reg.fetch("iris@1"))
    assert load_model(reg.fetch("iris@1")).calibrator is not None

    assert reg.promote("iris", 1, "production")["previous_version"] is None
    assert reg.promote("iris", 2, "production")["previous_version"] == 1
    assert reg.promote("iris", 2, "production")["changed"] is False  # no event for a no-op
    assert reg.promote("iris", 3, "staging")["changed"]
    assert reg.show("iris@production")["version"] == 2 and reg.show("iris@production")["aliases"] == ["production"]
    assert reg.show("iris")["version"] == 3 and reg.show("iris@v1")["version"] == 1
    assert reg.rollback("iris", "production") == {"name": "iris", "alias": "production", "version": 1,
                                                  "previous_version": 2, "changed": True}
    with pytest.raises(RegistryError, match="no previous holder"):
        reg.rollback("iris", "production")
    with pytest.raises(RegistryError, match="held by alias staging"):
        reg.delete("iris", 3)
    gone = reg.fetch("iris@2")
    assert reg.delete("iris", 2)["deleted"] and not gone.exists()
    assert reg.register(models["plain"], "iris")["version"] == 4  # numbers are never reused

    h = reg.history("iris")
    assert h["aliases"] == {"production": 1, "staging": 3}
    assert [v["version"] for v in h["versions"]] == [1, 3, 4]
    assert [(e["action"], e["version"], e["alias"], e["previous_version"]) for e in h["events"]] == [
        ("register", 1, None, None), ("register", 2, None, None), ("register", 3, None, None),
        ("promote", 1, "production", None), ("promote", 2, "production", 1), ("promote", 3, "staging", None),
        ("rollback", 1, "production", 2), ("delete", 2, None, None), ("register", 4, None, None)]
    assert [m["name"] for m in reg.list()] == ["iris"]
    assert reg.list()[0] == {**reg.list()[0], "versions": 3, "latest_version": 4, "aliases": {"production": 1, "staging": 3}}


def test_bad_requests_name_what_is_wrong(reg, models):
    reg.register(models["plain"], "iris")
    reg.promote("iris", 1, "production")
    cases = [
        (lambda: reg.promote("iris", 9, "production"), "promote: model 'iris' has no version 9; its versions: 1"),
        (lambda: reg.promote("nope", 1, "production"), "promote: no model named 'nope' in the registry; models: iris"),
        (lambda: reg.rollback("iris", "production"), "rollback: alias 'production' of 'iris' has no previous holder"),
        (lambda: reg.rollback("iris", "staging"), "rollback: alias 'staging' of 'iris' points at no version"),
        (lambda: reg.show("iris@canary"), "show: 'iris' has no alias 'canary'; aliases: production"),
        (lambda: reg.promote("iris", 1, "v2"), "--alias: 'v2' is not an alias"),
        (lambda: reg.register(models["plain"], "a/b"), "--name: 'a/b' is not a model name"),
        (lambda: reg.register(models["plain"], "iris", parent="iris@7"), "--parent: model 'iris' has no version 7"),
    ]
    for call, message in cases:
        with pytest.raises(RegistryError) as e:
            call()
        assert str(e.value).startswith(message), str(e.value)
    assert reg.history("iris")["aliases"] == {"production": 1} and len(reg.history("iris")["versions"]) == 1
    reg.register(models["plain"], "iris")
    reg.promote("iris", 2, "production")
    reg.delete("iris", 1)  # the previous holder, no longer held
    with pytest.raises(RegistryError, match="would go back to v1, which was deleted"):
        reg.rollback("iris", "production")


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["registry", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_json_round_trip_and_one_line_errors(tmp_path, models, capsys):
    where = ["--storage", str(tmp_path / "store")]
    rc, out, _ = run_cli(capsys, "register", str(models["full"]), "--name", "iris", "--json", *where)
    assert rc == 0 and json.loads(out)["version"] == 1 and "spec" not in json.loads(out)
    assert run_cli(capsys, "register", str(models["plain"]), "--name", "iris", *where)[1].startswith("registered iris v2 -> ")
    rc, out, _ = run_cli(capsys, "promote", "iris", "v2", "--alias", "production", "--json", *where)
    assert rc == 0 and json.loads(out) == {"name": "iris", "alias": "production", "version": 2,
                                           "previous_version": None, "changed": True}
    assert "production -> v1 (was v2)" in run_cli(capsys, "promote", "iris", "1", "--alias", "production", *where)[1]
    rc, out, _ = run_cli(capsys, "rollback", "iris", "--alias", "production", "--json", *where)
    assert json.loads(out)["version"] == 2
    rc, out, _ = run_cli(capsys, "show", "iris@production", *where)
    assert out.startswith("iris v2  [production]") and "W&B run:" in out
    rc, out, _ = run_cli(capsys, "list", "--json", *where)
    assert json.loads(out)["models"][0]["aliases"] == {"production": 2}
    rc, out, _ = run_cli(capsys, "history", "iris", "--json", *where)
    assert [e["action"] for e in json.loads(out)["events"]] == ["register", "register", "promote", "promote", "rollback"]
    assert json.loads(run_cli(capsys, "delete", "iris", "1", "--json", *where)[1]) == {"name": "iris", "version": 1, "deleted": True}

    for args, message in [
        (("promote", "iris", "5", "--alias", "production"), "promote: model 'iris' has no version 5"),
        (("rollback", "iris", "--alias", "production"), "has no previous holder"),
        (("delete", "iris", "2"), "held by alias production"),
        (("register", str(tmp_path), "--name", "iris"), "not a raydl model directory"),
        (("show", "ghost"), "no model named 'ghost'"),
    ]:
        rc, out, err = run_cli(capsys, *args, *where)
        assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and message in err, err


def test_s3_storage_with_a_sqlite_database(tmp_path, models, s3_session):
    import uuid

    root = s3_session.uri(f"registry-{uuid.uuid4().hex[:8]}")
    with pytest.raises(RegistryError, match="--db: the registry storage s3://.* is an object store"):
        ModelRegistry(root)
    with ModelRegistry(root, db=str(tmp_path / "reg.db")) as reg:
        v = reg.register(models["full"], "iris")
        assert v["artifact_uri"].startswith(f"{root}/iris/")
        local = reg.fetch("iris@1", into=tmp_path / "fetched")  # downloaded, each file checked against the marker
        assert file_manifest(local) == v["files"]
        assert load_model(local).calibrator.method == "temperature"
        reg.delete("iris", 1)
        with pytest.raises(RegistryError, match="has no version 1"):
            reg.fetch("iris@1")
    from raydl.storage import listdir

    assert listdir(f"{root}/iris") == []


def test_a_model_dir_on_s3_is_calibrated_and_registered(tmp_path, models, s3_session):
    import shutil
    import uuid

    from raydl.calibration.api import calibrate_model_dir
    from raydl.storage import publish_dir

    local = tmp_path / "plain"
    shutil.copytree(models["plain"], local)
    remote = s3_session.uri(f"runs-{uuid.uuid4().hex[:8]}", "plain", "model")  # as a remote raydl train leaves it
    publish_dir(local, remote)
    r = calibrate_model_dir(remote, "temperature")  # downloaded, calibrated, published back
    assert r["model_dir"] == remote and load_model(remote).calibrator.method == "temperature"
    with ModelRegistry(tmp_path / "store") as reg:
        v = reg.register(remote, "iris")
    assert v["run_dir"] == remote.rsplit("/", 1)[0] and v["source_run"] == "plain"
    assert v["calibration"]["method"] == "temperature" and "calibration.json" in v["files"]
