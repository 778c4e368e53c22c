"""The gateway's HTTP API on a real uvicorn server, the Ray edge replaced by `NoopRunner` (jobs stay
RUNNING until cancelled), so auth, isolation, quotas, validation and limits are checked in seconds.
The same flows against a real Ray head are in test_gateway_cluster.py."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest
from clusters import REPO
from gateway_server import auth, make_config, make_token, serve_thread
from model_dirs import model_dir
from postgres import running_postgres

from raydl.cli import main
from raydl.gateway import migrations
from raydl.gateway.config import config_from_dict
from raydl.gateway.runner import NoopRunner

SPEC = {"run": {"name": "digits-mlp"}, "data": {"source": "digits"}, "model": {"name": "mlp", "hidden": [16]},
        "training": {"epochs": 1}, "scaling": {"num_workers": 2}, "tracking": "none"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gw")
    cfg = make_config(folder)
    toks = {"a": make_token(cfg, "team-a"), "b": make_token(cfg, "team-b"),
            "a_maint": make_token(cfg, "team-a", "maintainer"), "admin": make_token(cfg, "admin", "admin")}
    with serve_thread(cfg) as (url, app):
        yield url, toks, cfg, app


def submit(url: str, token: str, spec: dict | None = None, **kw) -> httpx.Response:
    headers = kw.pop("headers", auth(token))
    return httpx.post(f"{url}/v1/jobs", json={"kind": "train", "spec": spec or SPEC}, headers=headers, timeout=30, **kw)


def cancel_all(url: str, token: str) -> None:
    for j in httpx.get(f"{url}/v1/jobs?status=RUNNING&limit=500", headers=auth(token)).json()["jobs"]:
        httpx.post(f"{url}/v1/jobs/{j['id']}/cancel", headers=auth(token))


def test_no_token_a_wrong_token_and_a_revoked_token_get_401(gw, capsys):
    url, toks, cfg, _ = gw
    assert httpx.get(f"{url}/v1/jobs").status_code == 401
    r = httpx.get(f"{url}/v1/jobs", headers=auth("rdg_0123456789abcdef_" + "x" * 43))
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{url}/v1/jobs", headers={"Authorization": "Basic Zm9vOmJhcg=="}).status_code == 401
    fresh = make_token(cfg, "team-a")
    assert httpx.get(f"{url}/v1/jobs", headers=auth(fresh)).status_code == 200
    (gw_dir := cfg["data_dir"])
    import yaml

    from raydl.gateway.config import config_from_dict

    path = f"{gw_dir}/gateway.yaml"
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    assert main(["gateway", "token", "revoke", fresh.split("_")[1], "--config", path]) == 0
    assert httpx.get(f"{url}/v1/jobs", headers=auth(fresh)).status_code == 401  # at once, though it was cached
    assert main(["gateway", "token", "list", "--config", path, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {t["id"]: t["revoked_at"] is not None for t in listed}[fresh.split("_")[1]] is True
    assert all("hash" not in t and "token" not in t for t in listed)
    # stored as a salted hash only: the secret appears nowhere in the database
    db = sqlite3.connect(config_from_dict(cfg).database_url.removeprefix("sqlite:///"))
    dump = "\n".join(db.iterdump())
    assert fresh.split("_", 2)[2] not in dump and fresh not in dump


def test_submit_get_list_paged_and_filtered_yaml_too(gw):
    url, toks, _, _ = gw
    cancel_all(url, toks["a"])
    r = submit(url, toks["a"])
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] in ("PENDING", "RUNNING") and job["team"] == "team-a" and job["workers"] == 2
    assert job["spec"]["run"]["storage_path"].endswith(f"/teams/team-a/runs/{job['id']}")
    y = httpx.post(f"{url}/v1/jobs?kind=train", content="run: {name: y}\ndata: {source: iris}\nscaling: {num_workers: 1}\n",
                   headers={**auth(toks["a"]), "Content-Type": "application/yaml"})
    assert y.status_code == 201, y.text
    got = httpx.get(f"{url}/v1/jobs/{job['id']}", headers=auth(toks["a"])).json()
    assert got["status"] == "RUNNING" and got["id"] == job["id"]
    page1 = httpx.get(f"{url}/v1/jobs?limit=1", headers=auth(toks["a"])).json()
    page2 = httpx.get(f"{url}/v1/jobs?limit=1&offset=1", headers=auth(toks["a"])).json()
    assert page1["total"] >= 2 and len(page1["jobs"]) == 1 and page1["jobs"][0]["id"] != page2["jobs"][0]["id"]
    assert httpx.post(f"{url}/v1/jobs/{y.json()['id']}/cancel", headers=auth(toks["a"])).json()["status"] == "STOPPED"
    stopped = httpx.get(f"{url}/v1/jobs?status=STOPPED&limit=500", headers=auth(toks["a"])).json()["jobs"]
    assert y.json()["id"] in [j["id"] for j in stopped] and job["id"] not in [j["id"] for j in stopped]
    logs = httpx.get(f"{url}/v1/jobs/{job['id']}/logs", headers=auth(toks["a"])).json()
    assert "noop runner" in logs["text"] and logs["complete"] is False


def test_another_teams_job_is_404_everywhere(gw):
    url, toks, _, _ = gw
    cancel_all(url, toks["a"])
    job = submit(url, toks["a"]).json()
    for method, path in (("GET", ""), ("GET", "/logs"), ("POST", "/cancel")):
        r = httpx.request(method, f"{url}/v1/jobs/{job['id']}{path}", headers=auth(toks["b"]))
        assert r.status_code == 404, (path, r.text)
    assert job["id"] not in [j["id"] for j in httpx.get(f"{url}/v1/jobs?limit=500", headers=auth(toks["b"])).json()["jobs"]]
    assert httpx.get(f"{url}/v1/jobs/{job['id']}", headers=auth(toks["a"])).json()["status"] == "RUNNING"  # not cancelled
    usage = httpx.get(f"{url}/v1/admin/usage", headers=auth(toks["admin"])).json()
    assert {u["team"] for u in usage} == {"team-a", "team-b"}
    assert httpx.get(f"{url}/v1/admin/usage", headers=auth(toks["a"])).status_code == 403


def test_over_quota_is_429_and_a_cancel_frees_it(gw):
    url, toks, _, app = gw
    cancel_all(url, toks["b"])
    ids = [submit(url, toks["b"]).json()["id"] for _ in range(3)]  # 3 jobs x 2 workers = the quota (3, 6)
    r = submit(url, toks["b"])
    assert r.status_code == 429 and "over its quota" in r.json()["detail"] and "3 of 3 concurrent jobs" in r.json()["detail"]
    httpx.post(f"{url}/v1/jobs/{ids[0]}/cancel", headers=auth(toks["b"]))
    big = submit(url, toks["b"], {**SPEC, "scaling": {"num_workers": 4}})
    assert big.status_code == 429 and "4 workers asked for, over the limit of 6" in big.json()["detail"]
    assert submit(url, toks["b"]).status_code == 201
    # a job that ends on the cluster without anyone asking the gateway frees its place at once
    app.state.gateway.runner.stop(httpx.get(f"{url}/v1/jobs?status=RUNNING", headers=auth(toks["b"])).json()["jobs"][0]["id"],
                                  "team-b")
    assert submit(url, toks["b"]).status_code == 201
    gpu = submit(url, toks["a"], {**SPEC, "scaling": {"num_workers": 1, "use_gpu": True}})
    assert gpu.status_code == 429 and "GPUs" in gpu.json()["detail"]
    cancel_all(url, toks["b"])


def test_a_retry_with_the_same_idempotency_key_gets_the_same_job(gw):
    url, toks, _, _ = gw
    cancel_all(url, toks["a"])
    first = submit(url, toks["a"], headers={**auth(toks["a"]), "Idempotency-Key": "nightly-2026-12-03"})
    again = submit(url, toks["a"], headers={**auth(toks["a"]), "Idempotency-Key": "nightly-2026-12-03"})
    assert (first.status_code, again.status_code) == (201, 200) and first.json()["id"] == again.json()["id"]
    other_team = submit(url, toks["b"], headers={**auth(toks["b"]), "Idempotency-Key": "nightly-2026-12-03"})
    assert other_team.status_code == 201 and other_team.json()["id"] != first.json()["id"]  # keys are per team
    running = httpx.get(f"{url}/v1/jobs?status=RUNNING", headers=auth(toks["a"])).json()["jobs"]
    assert [j["id"] for j in running] == [first.json()["id"]]
    cancel_all(url, toks["a"])
    cancel_all(url, toks["b"])


def test_raydl_submit_and_jobs_through_the_gateway(gw, capfd, monkeypatch):
    url, toks, _, _ = gw
    cancel_all(url, toks["b"])
    monkeypatch.delenv("RAYDL_GATEWAY_TOKEN", raising=False)
    assert main(["submit", str(REPO / "configs" / "digits_mlp.yaml"), "--gateway", url]) == 2
    assert "set RAYDL_GATEWAY_TOKEN" in capfd.readouterr().err
    monkeypatch.setenv("RAYDL_GATEWAY_TOKEN", toks["b"])
    assert main(["submit", str(REPO / "configs" / "digits_mlp.yaml"), "scaling.num_workers=1", "--gateway", url, "--json"]) == 0
    job = json.loads(capfd.readouterr().out)
    assert job["team"] == "team-b" and job["workers"] == 1
    assert main(["jobs", "list", "--gateway", url]) == 0
    assert job["id"] in capfd.readouterr().out
    assert main(["jobs", "logs", job["id"], "--gateway", url]) == 0
    assert "noop runner" in capfd.readouterr().out
    assert main(["jobs", "stop", job["id"], "--gateway", url, "--json"]) == 0
    assert json.loads(capfd.readouterr().out)["status"] == "STOPPED"
    monkeypatch.setenv("RAYDL_GATEWAY_TOKEN", toks["a"])
    assert main(["jobs", "status", job["id"], "--gateway", url]) == 2  # another team's job
    assert "HTTP 404" in capfd.readouterr().err


def test_an_invalid_spec_is_422_with_every_problem_and_its_path(gw):
    url, toks, _, _ = gw
    bad = {"run": {"name": "x"}, "data": {"source": "/etc/passwd"}, "optimizer": {"lr": -1},
           "training": {"epochs": 0, "bogus": 1}, "model": {"name": "mlp", "hidden": "wide"}}
    r = httpx.post(f"{url}/v1/jobs", json={"kind": "tune", "spec": bad}, headers=auth(toks["a"]))
    assert r.status_code == 422, r.text
    problems = r.json()["problems"]
    for path in ("kind:", "optimizer.lr:", "training.epochs:", "training.bogus: unknown key", "model.hidden:", "data.source:"):
        assert any(p.startswith(path) for p in problems), (path, problems)
    assert httpx.post(f"{url}/v1/jobs", content=b"{not json", headers={**auth(toks["a"]), "Content-Type": "application/json"}
                      ).status_code == 422
    r = httpx.post(f"{url}/v1/jobs", content="a: [1,", headers={**auth(toks["a"]), "Content-Type": "application/yaml"})
    assert r.status_code == 422 and "malformed YAML" in r.json()["problems"][0]


def test_limits_413_and_no_stack_trace_on_500(gw, tmp_path):
    url, toks, _, _ = gw
    r = httpx.post(f"{url}/v1/jobs", content=b"x" * (2 << 20), headers={**auth(toks["a"]), "Content-Type": "application/yaml"})
    assert r.status_code == 413 and "at most 1048576 bytes" in r.json()["detail"]

    class Broken(NoopRunner):
        def logs(self, job_id, team):
            raise ZeroDivisionError("secret internals")

        def submit(self, job_id, team, kind, spec, metadata):
            if spec.run.name == "explode":
                raise ZeroDivisionError("secret internals")
            super().submit(job_id, team, kind, spec, metadata)

    cfg = make_config(tmp_path, limits={"burst": 5, "requests_per_minute": 0.5})
    token = make_token(cfg, "team-a")
    with serve_thread(cfg, Broken()) as (u2, _):
        job = submit(u2, token)
        assert job.status_code == 201
        r = httpx.get(f"{u2}/v1/jobs/{job.json()['id']}/logs", headers=auth(token))
        assert r.status_code == 500 and r.json()["error_id"] in r.json()["detail"]
        assert "Traceback" not in r.text and "secret internals" not in r.text and "ZeroDivision" not in r.text
        r = submit(u2, token, {**SPEC, "run": {"name": "explode"}})  # the hand-over fails unexpectedly
        assert r.status_code == 500 and "secret" not in r.text
        (failed,) = [j for j in httpx.get(f"{u2}/v1/jobs?status=FAILED", headers=auth(token)).json()["jobs"]]
        assert failed["run_name"] == "explode" and failed["message"] == "not submitted: ZeroDivisionError"
        codes = [httpx.get(f"{u2}/v1/jobs", headers=auth(token)) for _ in range(3)]  # burst 5: 4 used above
        assert [c.status_code for c in codes] == [200, 429, 429]
        r = codes[-1]
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "rate limit" in r.json()["detail"]
        # guessing tokens: after 20 failures in a row the address waits before another token is even hashed
        guesses = [httpx.get(f"{u2}/v1/jobs", headers=auth(f"rdg_{i:016x}_" + "g" * 43)).status_code for i in range(30)]
        assert guesses[:20] == [401] * 20 and 429 in guesses[20:], guesses  # (the bucket refills a little meanwhile)


def test_registry_roles_and_isolation(gw):
    url, toks, cfg, _ = gw
    from raydl.gateway.config import config_from_dict
    from raydl.model_registry.api import ModelRegistry

    folder = config_from_dict(cfg).registry_dir("team-a")
    folder.mkdir(parents=True, exist_ok=True)
    with ModelRegistry(folder) as reg:
        for i in (1, 2):
            reg.register(model_dir(folder.parent / f"m{i}"), "digits")
    assert [m["name"] for m in httpx.get(f"{url}/v1/models", headers=auth(toks["a"])).json()] == ["digits"]
    assert httpx.get(f"{url}/v1/models", headers=auth(toks["b"])).json() == []
    assert httpx.get(f"{url}/v1/models/digits", headers=auth(toks["b"])).status_code == 404
    body = {"version": 1, "alias": "production"}
    assert httpx.post(f"{url}/v1/models/digits/promote", json=body, headers=auth(toks["a"])).status_code == 403
    assert httpx.post(f"{url}/v1/models/digits/promote", json=body, headers=auth(toks["a_maint"])).status_code == 200
    body["version"] = 2
    assert httpx.post(f"{url}/v1/models/digits/promote", json=body, headers=auth(toks["a_maint"])).status_code == 200
    r = httpx.post(f"{url}/v1/models/digits/rollback", json={"alias": "production"}, headers=auth(toks["a_maint"]))
    assert r.status_code == 200, r.text
    hist = httpx.get(f"{url}/v1/models/digits", headers=auth(toks["a"])).json()
    assert hist["aliases"] == {"production": 1}
    assert [e["action"] for e in hist["events"]][-3:] == ["promote", "promote", "rollback"]


def test_drift_reports_are_per_team(gw):
    url, toks, cfg, _ = gw
    from raydl.gateway.config import config_from_dict

    folder = config_from_dict(cfg).drift_dir("team-a")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "digits-2026-12-01.html").write_text("<html><body>drift!</body></html>")
    assert [r["name"] for r in httpx.get(f"{url}/v1/drift", headers=auth(toks["a"])).json()] == ["digits-2026-12-01.html"]
    assert httpx.get(f"{url}/v1/drift", headers=auth(toks["b"])).json() == []
    assert "drift!" in httpx.get(f"{url}/v1/drift/digits-2026-12-01.html", headers=auth(toks["a"])).text
    assert httpx.get(f"{url}/v1/drift/digits-2026-12-01.html", headers=auth(toks["b"])).status_code == 404
    assert httpx.get(f"{url}/v1/drift/..%2F..%2Fgateway.db", headers=auth(toks["a"])).status_code == 404


def test_health_and_readiness(gw):
    url, *_ = gw
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{url}/readyz").json() == {"status": "ready"}
    assert "/v1/jobs" in httpx.get(f"{url}/openapi.json").json()["paths"]


def test_migrations_keep_the_history_and_reconcile_fails_what_never_reached_ray(tmp_path):
    from raydl.gateway.config import config_from_dict
    from raydl.gateway.service import NEVER_SUBMITTED

    cfg = config_from_dict(make_config(tmp_path))
    migrations.upgrade(cfg.database_url, "0001")
    db = sqlite3.connect(cfg.database_url.removeprefix("sqlite:///"))
    db.execute("INSERT INTO jobs (id, team, kind, status, message, run_name, spec, workers, gpus, storage_path, created_at,"
               " updated_at) VALUES ('old-1', 'team-a', 'train', 'SUCCEEDED', '', 'r', '{}', 1, 0, '/x', 't', 't'),"
               " ('lost-1', 'team-a', 'train', 'SUBMITTING', '', 'r', '{}', 1, 0, '/x', 't', 't')")
    db.commit()
    migrations.upgrade(cfg.database_url)
    assert migrations.current(cfg.database_url) == "0003"
    token = make_token(make_config(tmp_path), "team-a")
    with serve_thread(make_config(tmp_path)) as (url, _):  # starts with reconcile
        jobs = {j["id"]: j for j in httpx.get(f"{url}/v1/jobs", headers=auth(token)).json()["jobs"]}
    assert jobs["old-1"]["status"] == "SUCCEEDED" and jobs["old-1"]["wandb_dir"] is None
    assert jobs["lost-1"]["status"] == "FAILED" and jobs["lost-1"]["message"] == NEVER_SUBMITTED


def test_the_background_refresh_keeps_the_history_true_without_reads(tmp_path):
    import time

    from raydl.gateway.store import Store, engine_for

    cfg = make_config(tmp_path, refresh_s=0.2)
    token = make_token(cfg, "team-a")
    with serve_thread(cfg) as (url, app):
        job_id = submit(url, token).json()["id"]
        app.state.gateway.runner.stop(job_id, "team-a")  # it ends on the cluster; nobody asks the gateway
        store = Store(engine_for(config_from_dict(cfg).database_url))
        deadline = time.monotonic() + 10
        while store.job(job_id).status != "STOPPED":
            assert time.monotonic() < deadline, store.job(job_id).status
            time.sleep(0.1)
        store.engine.dispose()


def test_the_shipped_gateway_configs_are_valid():
    import yaml

    from raydl.gateway.config import load_config

    shipped = load_config(REPO / "services" / "gateway" / "gateway.yaml")
    assert shipped.runner == "ray" and set(shipped.teams) == {"team-a", "team-b"}
    k8s = (REPO / "k8s" / "base" / "gateway" / "config.yaml").read_text()
    assert config_from_dict(yaml.safe_load(yaml.safe_load(k8s)["data"]["gateway.yaml"])).runner == "ray"


def test_bad_gateway_config_is_one_line_exit_2(tmp_path, capsys):
    p = tmp_path / "gateway.yaml"
    p.write_text("data_dir: relative/dir\nrunner: ray\nteams: {Team_A: {max_workers: -1}}\n")
    assert main(["gateway", "token", "list", "--config", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "teams" in err and "teams.Team_A.max_workers" in err
    assert main(["gateway", "token", "create", "--config", str(tmp_path / "nope.yaml"), "--team", "a"]) == 2


_pg = pytest.fixture(scope="module", name="pg")(running_postgres)


@pytest.mark.slow
def test_on_postgres_migrations_and_submissions(pg, tmp_path):
    cfg = make_config(tmp_path, database=pg.new_database())
    migrations.upgrade(config_from_dict(cfg).database_url, "0002")
    token = make_token(cfg, "team-a")  # upgrades to the head
    assert migrations.current(config_from_dict(cfg).database_url) == "0003"
    with serve_thread(cfg) as (url, _):
        ids = [submit(url, token, {**SPEC, "scaling": {"num_workers": 1}}).json()["id"] for _ in range(3)]
        assert submit(url, token, {**SPEC, "scaling": {"num_workers": 1}}).status_code == 429
        listed = httpx.get(f"{url}/v1/jobs", headers=auth(token)).json()
    assert sorted(j["id"] for j in listed["jobs"]) == sorted(ids) and listed["total"] == 3
