"""Acceptance 1 and 2 of the gateway against a real Ray head with the Jobs API (token auth on):
team A submits the digits config through HTTP (`raydl submit --gateway`), follows it to SUCCEEDED
and sees its metrics and model; team B cannot see or cancel it; no token and a revoked token get
401; an over-quota submission 429; an invalid spec 422. Then the gateway is killed while jobs run
and restarted: every job is listed once, with its true status.

One head and one gateway process (`raydl gateway serve`) serve the module.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from clusters import DIGITS, RAYDL
from gateway_server import auth, make_token, start_process
from test_jobs import _start_jobs_head, client_env

from raydl import jobs
from raydl.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

FAST = {"training": {"epochs": 1, "batch_size": 32, "early_stopping": None}, "scaling": {"num_workers": 1},
        "checkpoint": {"every_n_epochs": 1}, "tracking": {"backend": "wandb", "mode": "offline"}}


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    import secrets

    ray_token = secrets.token_hex(16)
    cluster, dash = _start_jobs_head(ray_token)
    folder = tmp_path_factory.mktemp("gwc")
    env = client_env(ray_token, folder)
    proc = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                jobs._get_json(dash, "/api/version", jobs.Token(ray_token, "test"))
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        cfg = {"data_dir": str(folder / "data"), "runner": "ray", "ray_address": dash,
               "teams": {"team-a": {"max_concurrent_jobs": 1, "max_workers": 2},
                         "team-b": {"max_concurrent_jobs": 2, "max_workers": 2}}}
        (folder / "gateway.yaml").write_text(yaml.safe_dump(cfg))
        toks = {}
        for name, team in (("a", "team-a"), ("b", "team-b"), ("a2", "team-a")):
            token = make_token(cfg, team)
            toks[name] = {"token": token, "id": token.split("_")[1]}
        proc, url = start_process(cfg, folder, env)
        state = {"proc": proc, "url": url, "cfg": cfg, "folder": folder, "env": env, "dash": dash,
                 "ray_token": ray_token, "toks": toks}
        yield state
    finally:
        p = state["proc"] if "state" in locals() else proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        cluster.stop()


def wait_status(url: str, token: str, job_id: str, want: set[str], timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{url}/v1/jobs/{job_id}", headers=auth(token), timeout=30).json()
        if job["status"] in want:
            return job
        assert time.monotonic() < deadline, f"{job_id} is {job['status']} after {timeout:.0f} s: {job['message']}"
        time.sleep(1)


def test_end_to_end_digits_through_the_gateway(platform):
    url, toks, env = platform["url"], platform["toks"], platform["env"]
    a, b = toks["a"]["token"], toks["b"]["token"]
    assert httpx.get(f"{url}/v1/jobs").status_code == 401
    overrides = ["training.epochs=1", "scaling.num_workers=1", "checkpoint.every_n_epochs=1",
                 "training.early_stopping=null"]
    follower = subprocess.Popen([RAYDL, "submit", DIGITS, *overrides, "--gateway", url, "--follow", "--json"],
                                env={**env, "RAYDL_GATEWAY_TOKEN": a}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (listed := httpx.get(f"{url}/v1/jobs", headers=auth(a)).json()["jobs"]):
            assert time.monotonic() < deadline and follower.poll() is None, follower.stderr.read() if follower.poll() else ""
            time.sleep(0.3)
        job_id = listed[0]["id"]
        # team A's quota is one concurrent job: a second one now is refused, not queued
        spec = yaml.safe_load(Path(DIGITS).read_text())
        over = httpx.post(f"{url}/v1/jobs", json={"spec": {**spec, **FAST}}, headers=auth(a))
        assert over.status_code == 429 and "1 of 1 concurrent jobs" in over.json()["detail"], over.text
        # team B sees nothing of it and cannot cancel it
        assert httpx.get(f"{url}/v1/jobs/{job_id}", headers=auth(b)).status_code == 404
        assert httpx.post(f"{url}/v1/jobs/{job_id}/cancel", headers=auth(b)).status_code == 404
        assert httpx.get(f"{url}/v1/jobs/{job_id}/logs", headers=auth(b)).status_code == 404
        assert httpx.get(f"{url}/v1/jobs", headers=auth(b)).json()["total"] == 0
        # an invalid spec: every problem with its path, nothing submitted
        bad = {**spec, "optimizer": {"lr": 0}, "training": {"epochs": -1}, "model": {"name": "mlp", "hiden": [3]}}
        r = httpx.post(f"{url}/v1/jobs", json={"spec": bad}, headers=auth(b))
        assert r.status_code == 422 and len(r.json()["problems"]) >= 3, r.text
        out, err = follower.communicate(timeout=300)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err[-3000:]
    final = json.loads(out.strip().splitlines()[-1])
    assert final["id"] == job_id and final["status"] == "SUCCEEDED", final
    assert "epoch 1/1" in err  # the followed logs
    assert final["metrics"]["val_accuracy"] > 0.5
    print(f"digits through the gateway, 1 epoch, 1 worker: val_accuracy={final['metrics']['val_accuracy']:.4f}")
    model = Path(final["model_dir"])
    assert {"weights.pt", "spec.yaml", "manifest.json"} <= {p.name for p in model.iterdir()}
    assert str(model).startswith(platform["cfg"]["data_dir"] + f"/teams/team-a/runs/{job_id}/")
    assert final["wandb_dir"] and Path(final["wandb_dir"]).exists()
    # a revoked token stops working at once
    a2 = toks["a2"]
    assert httpx.get(f"{url}/v1/jobs/{job_id}", headers=auth(a2["token"])).status_code == 200
    assert main(["gateway", "token", "revoke", a2["id"], "--config", str(platform["folder"] / "gateway.yaml")]) == 0
    assert httpx.get(f"{url}/v1/jobs/{job_id}", headers=auth(a2["token"])).status_code == 401


def test_restart_loses_nothing_and_shows_true_status(platform):
    url, b = platform["url"], platform["toks"]["b"]["token"]
    spec = yaml.safe_load(Path(DIGITS).read_text())
    long = {**spec, **FAST, "run": {"name": "long"},
            "training": {"epochs": 100000, "early_stopping": None}, "tracking": "none"}
    failing = {**spec, **FAST, "run": {"name": "bad-data"}, "data": {**spec["data"], "source": "file:///nonexistent/x.parquet"}}
    j1 = httpx.post(f"{url}/v1/jobs", json={"spec": long}, headers=auth(b)).json()["id"]
    wait_status(url, b, j1, {"RUNNING"})
    j2 = httpx.post(f"{url}/v1/jobs", json={"spec": failing}, headers=auth(b)).json()["id"]
    before = {j["id"] for j in httpx.get(f"{url}/v1/jobs?limit=500", headers=auth(platform["toks"]["a"]["token"])).json()["jobs"]}
    platform["proc"].send_signal(signal.SIGKILL)  # no shutdown: whatever was in flight is cut
    platform["proc"].wait(30)
    client = jobs.Cluster(platform["dash"], jobs.Token(platform["ray_token"], "test"), "")
    assert str(client.wait(j2, 180).status) == "FAILED"  # it ends while the gateway is down
    proc, url2 = start_process(platform["cfg"], platform["folder"], platform["env"])
    platform["proc"], platform["url"] = proc, url2
    listed = httpx.get(f"{url2}/v1/jobs?limit=500", headers=auth(b)).json()
    ids = [j["id"] for j in listed["jobs"]]
    assert sorted(ids) == sorted({j1, j2}) and listed["total"] == 2  # nothing lost, nothing duplicated
    status = {j["id"]: j["status"] for j in listed["jobs"]}
    assert status == {j1: "RUNNING", j2: "FAILED"}, listed
    after = {j["id"] for j in httpx.get(f"{url2}/v1/jobs?limit=500", headers=auth(platform["toks"]["a"]["token"])).json()["jobs"]}
    assert after == before
    assert "reconciled active jobs" in (platform["folder"] / "gateway.log").read_text()
    stopped = httpx.post(f"{url2}/v1/jobs/{j1}/cancel", headers=auth(b)).json()
    assert wait_status(url2, b, j1, {"STOPPED"}, 120)["status"] == "STOPPED", stopped
