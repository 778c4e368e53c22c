"""`raydl submit` / `raydl jobs` on a real Ray head with the dashboard's Jobs API and token auth on.

One head (`ray start --head`, own temp dir and ports, RAY_AUTH_MODE=token with a token of its own)
serves every cluster test of this module. The bad-input tests at the end need no cluster.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from clusters import DIGITS, RAYDL, RayCluster, free_port, ray_env

from raydl import jobs
from raydl.cli import main
from raydl.spec import load_spec

# ---- the head ---------------------------------------------------------------------------------


def _start_jobs_head(token: str) -> tuple[RayCluster, str]:
    import tempfile

    temp_dir = tempfile.mkdtemp(prefix="rdj-", dir="/tmp")
    port, dash = free_port(), free_port()
    args = [
        str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
        f"--temp-dir={temp_dir}", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={free_port()}", "--disable-usage-stats",
    ]
    cluster = RayCluster(temp_dir=temp_dir, address=f"127.0.0.1:{port}")
    # ray_env() turns auth off for the other tests' heads; this one has token auth on, as Ray 2.60's
    # `ray start` default, with its own token (never ~/.ray/auth_token, which other tests may read).
    env = ray_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
                  PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
    if out.returncode != 0:
        cluster.stop()
        raise RuntimeError(f"ray start --head failed ({out.returncode}):\n{(out.stdout + out.stderr)[-4000:]}")
    return cluster, f"http://127.0.0.1:{dash}"


@pytest.fixture(scope="module")
def head():
    token = secrets.token_hex(16)
    cluster, url = _start_jobs_head(token)
    try:
        deadline = time.monotonic() + 60
        while True:  # the job server comes up a moment after `ray start` returns
            try:
                jobs._get_json(url, "/api/version", jobs.Token(token, "test"))
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield url, token
    finally:
        cluster.stop()


def client_env(token: str | None, home: Path, **extra: str) -> dict[str, str]:
    env = ray_env(**extra)
    env.pop("RAY_AUTH_MODE", None)
    env["HOME"] = str(home)  # no ~/.ray/auth_token but the one a test writes
    if token:
        env["RAY_AUTH_TOKEN"] = token
    return env


def raydl(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([RAYDL, *args], env=env, capture_output=True, text=True, timeout=timeout)


def last_json(out: str) -> dict:
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, f"stdout must hold exactly one JSON object, got: {out!r}"
    return json.loads(lines[0])


# ---- the job lifecycle on the head -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.cluster
def test_submit_follow_succeeds_and_leaves_a_model_dir(head, tmp_path, in_process_env, capfd):
    url, token = head
    storage = tmp_path / "cluster-runs"
    r = raydl(["submit", DIGITS, "--address", url, "--follow", "--json", f"run.storage_path={storage}",
               "training.epochs=1", "checkpoint.every_n_epochs=1", "scaling.num_workers=1"], client_env(token, tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    rec = last_json(r.stdout)
    assert rec["status"] == "SUCCEEDED", rec
    assert re.search(r"^submitted raydl-digits-mlp-[0-9a-f]{8} ", r.stderr, re.M)
    assert "epoch 1/1" in r.stderr  # the followed logs
    model = storage / "digits-mlp" / "model"
    assert {"weights.pt", "spec.yaml", "manifest.json"} <= {p.name for p in model.iterdir()}
    assert json.loads((storage / "digits-mlp" / "result.json").read_text())["metrics"]["val_accuracy"] > 0.5

    in_process_env.setenv("RAY_AUTH_TOKEN", token)
    job_id = rec["job_id"]
    code, out, err = run_cli(["jobs", "status", job_id, "--address", url, "--json"], capfd)
    assert code == 0 and last_json(out)["status"] == "SUCCEEDED", err
    code, out, _ = run_cli(["jobs", "list", "--address", url, "--json"], capfd)
    assert job_id in [j["job_id"] for j in last_json(out)["jobs"]]
    code, out, _ = run_cli(["jobs", "logs", job_id, "--address", url], capfd)
    assert code == 0 and "epoch 1/1" in out and "model written to" in out


@pytest.mark.slow
@pytest.mark.cluster
def test_stop_a_running_job(head, tmp_path, in_process_env, capfd):
    url, token = head
    in_process_env.setenv("RAY_AUTH_TOKEN", token)
    code, out, err = run_cli(["submit", DIGITS, "--address", url, "--json", f"run.storage_path={tmp_path / 'runs'}",
                              "training.epochs=100000", "training.early_stopping=null", "run.name=long-one"], capfd)
    assert code == 0, err[-3000:]
    job_id = last_json(out)["job_id"]
    deadline = time.monotonic() + 180
    while True:
        st = last_json(run_cli(["jobs", "status", job_id, "--address", url, "--json"], capfd)[1])["status"]
        if st == "RUNNING":
            break
        assert st == "PENDING" and time.monotonic() < deadline, f"job {job_id} is {st}"
        time.sleep(0.5)
    code, out, err = run_cli(["jobs", "stop", job_id, "--address", url, "--json"], capfd)
    assert code == 0, err[-2000:]
    assert last_json(out)["status"] == "STOPPED"


@pytest.mark.slow
@pytest.mark.cluster
def test_job_failing_on_the_cluster_shows_failed_with_its_reason(head, tmp_path, in_process_env, capfd):
    """A URI source is not read locally; on the cluster nothing is there, so the job fails."""
    url, token = head
    in_process_env.setenv("RAY_AUTH_TOKEN", token)
    code, out, err = run_cli(["submit", DIGITS, "--address", url, "--follow", "--json", f"run.storage_path={tmp_path / 'runs'}",
                              "data.source=file:///nonexistent/raydl/rows.parquet", "run.name=bad-data"], capfd)
    assert code == 1, err[-3000:]
    rec = last_json(out)
    assert rec["status"] == "FAILED"
    assert "data.source" in rec["reason"] and "rows.parquet" in rec["reason"], rec["reason"]
    assert "\n" not in rec["reason"]
    code, out, _ = run_cli(["jobs", "status", rec["job_id"], "--address", url], capfd)
    assert code == 0 and out.startswith(f"{rec['job_id']}: FAILED: data.source"), out


@pytest.fixture
def in_process_env(monkeypatch, tmp_path):
    """The client side of the CLI run in this process: no token anywhere but where a test puts one."""
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return monkeypatch


@pytest.mark.slow
@pytest.mark.cluster
def test_token_missing_or_wrong_is_one_clear_line(head, tmp_path, in_process_env, capfd):
    url, token = head
    code, _, err = run_cli(["jobs", "list", "--address", url], capfd)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"raydl: error: the Ray cluster at {url} requires a token")
    in_process_env.setenv("RAY_AUTH_TOKEN", "not-the-token")
    code, _, err = run_cli(["jobs", "list", "--address", url], capfd)
    assert code == 2 and "refused the token from RAY_AUTH_TOKEN" in err, err
    # The token file Ray's clients read by default works too.
    in_process_env.delenv("RAY_AUTH_TOKEN")
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text(token + "\n")
    code, out, err = run_cli(["jobs", "list", "--address", url, "--json"], capfd)
    assert code == 0, err
    assert last_json(out)["address"] == url


@pytest.mark.slow
@pytest.mark.cluster
def test_unknown_job_id_and_too_many_workers(head, tmp_path, in_process_env, capfd):
    url, token = head
    in_process_env.setenv("RAY_AUTH_TOKEN", token)
    for action in ("status", "logs", "stop"):
        code, _, err = run_cli(["jobs", action, "raydl-no-such-job", "--address", url], capfd)
        assert code == 2 and err == (f"raydl: error: job 'raydl-no-such-job' not found on the cluster at {url}; "
                                     f"`raydl jobs list --address {url}` lists its jobs")
    before = last_json(run_cli(["jobs", "list", "--address", url, "--json"], capfd)[1])["jobs"]
    code, _, err = run_cli(["submit", DIGITS, "--address", url, f"run.storage_path={tmp_path}", "scaling.num_workers=5"], capfd)
    assert code == 2
    assert "cannot fit 5 workers (CPU: 5 asked (5 workers x 1), 2 in the cluster)" in err
    after = last_json(run_cli(["jobs", "list", "--address", url, "--json"], capfd)[1])["jobs"]
    assert len(after) == len(before)  # nothing was submitted


# ---- bad input, no cluster needed --------------------------------------------------------------


def run_cli(args: list[str], capfd) -> tuple[int, str, str]:
    code = main(args)
    got = capfd.readouterr()
    return code, got.out, got.err.strip()


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))


def test_nothing_listening_fails_in_seconds(no_token, capfd):
    url = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    code, _, err = run_cli(["jobs", "list", "--address", url], capfd)
    assert code == 2 and err == (f"raydl: error: --address {url}: nothing is listening there (connection refused); "
                                 "give the address of a running Ray head's dashboard (ray start --head --dashboard-host=0.0.0.0 prints it)")
    assert time.monotonic() - t0 < 30


def test_a_server_that_never_answers_times_out(no_token, capfd):
    """A real socket that accepts and then says nothing (a firewall or a hung head looks like this)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    try:
        code, _, err = run_cli(["jobs", "status", "x", "--address", f"127.0.0.1:{srv.getsockname()[1]}"], capfd)
    finally:
        stop.set()
        th.join()
        for s in held:
            s.close()
        srv.close()
    assert code == 2 and f"no answer within {jobs.PROBE_TIMEOUT_S:g} s" in err, err


@pytest.mark.parametrize("address, words", [
    ("ftp://host:21", "not a Jobs API address"),
    ("http://host:99999", "not a Jobs API address"),
    ("http://host:8265/some/path", "not a Jobs API address"),
])
def test_malformed_address(no_token, capfd, address, words):
    code, _, err = run_cli(["jobs", "list", "--address", address], capfd)
    assert code == 2 and words in err and len(err.splitlines()) == 1


def test_no_address_at_all(no_token, capfd):
    code, _, err = run_cli(["jobs", "list"], capfd)
    assert code == 2 and "pass --address http://HEAD:8265" in err


@pytest.mark.parametrize("kind, words", [
    ("pipeline", "--kind pipeline: submitting `raydl pipeline` as a Ray job is not supported yet; available now: train, tune, continual"),
    ("bake", "--kind 'bake': unknown kind; available: train, tune, continual (planned: pipeline)"),
    ("tune", f"{DIGITS}: --kind tune needs a `tune:` section (see configs/*tune*.yaml)"),
    ("continual", f"{DIGITS}: --kind continual needs a `stream:` section (see configs/*continual*.yaml)"),
])
def test_kind_not_available(no_token, capfd, tmp_path, kind, words):
    code, _, err = run_cli(["submit", DIGITS, "--kind", kind, "--address", "http://127.0.0.1:1"], capfd)
    assert code == 2 and err == f"raydl: error: {words}"


def test_invalid_spec_fails_before_any_cluster_is_contacted(no_token, capfd):
    # The address has nothing behind it: the spec's problems are reported, all of them, not the address.
    code, _, err = run_cli(["submit", DIGITS, "--address", f"http://127.0.0.1:{free_port()}",
                         "optimizer.lr=-1", "training.epochs=0", "run.storage_path=/tmp/x"], capfd)
    assert code == 2 and "2 problems" in err and "optimizer.lr" in err and "training.epochs" in err


def test_relative_storage_path_is_refused(no_token, capfd):
    code, _, err = run_cli(["submit", DIGITS, "--address", "http://127.0.0.1:1"], capfd)
    assert code == 2 and err.startswith("raydl: error: run.storage_path: 'runs' is relative")


def test_local_data_too_large_to_ship(no_token, capfd, tmp_path):
    big = tmp_path / "big.parquet"
    with open(big, "wb") as fh:  # sparse: 101 MiB long, no disk used
        fh.truncate(jobs.MAX_SHIP_BYTES + 1024**2)
    code, _, err = run_cli(["submit", DIGITS, "--address", "http://127.0.0.1:1", f"data.source={big}",
                         "run.storage_path=/tmp/x"], capfd)
    assert code == 2
    assert err == (f"raydl: error: data.source {str(big)!r} is 101.0 MiB; a job's working_dir can carry at most 100 MiB "
                   "(the dashboard's upload limit): put the data where the cluster can read it and give its URI, "
                   "e.g. data.source=s3://bucket/path/")


def test_missing_local_data(no_token, capfd, tmp_path):
    code, _, err = run_cli(["submit", DIGITS, "--address", "http://127.0.0.1:1", f"data.source={tmp_path}/none.csv",
                         "run.storage_path=/tmp/x"], capfd)
    assert code == 2 and "data.source: no file or directory at" in err


def test_token_path_unreadable(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "nope"))
    with pytest.raises(jobs.AuthError, match="RAY_AUTH_TOKEN_PATH=.*cannot read the token file"):
        jobs.find_token()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert jobs.find_token() is None


# ---- the pure parts ----------------------------------------------------------------------------


def test_stage_ships_local_data_and_rewrites_the_source(tmp_path):
    data = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"x": [1.0, 2.0, 3.0, 4.0], "y": [0, 1, 0, 1]}), data)
    spec = load_spec(DIGITS, [f"data.source={data}", "data.label=y", "run.storage_path=/mnt/runs"])
    staged = tmp_path / "staged"
    staged.mkdir()
    shipped = jobs.stage(spec, staged)
    assert shipped.data.source == "data/rows.parquet"
    assert (staged / "data" / "rows.parquet").read_bytes() == data.read_bytes()
    again = load_spec(staged / "spec.yaml")
    assert again == shipped and again.run.storage_path == "/mnt/runs"
    assert jobs.runtime_env(staged, ["raydl==0.1.0"]) == {"working_dir": str(staged), "pip": ["raydl==0.1.0"]}
    assert jobs.entrypoint("train") == "raydl train spec.yaml"


def test_failure_reason_prefers_raydls_own_line():
    logs = "epoch 1/2 ...\nraydl: error: data.source: cannot read 'x' as parquet: nope\n"
    assert jobs.failure_reason("Job entrypoint command failed with exit code 2\nlast logs...", logs) == \
        "data.source: cannot read 'x' as parquet: nope"
    assert jobs.failure_reason("Job entrypoint command failed with exit code 1\nmore", "Traceback") == \
        "Job entrypoint command failed with exit code 1"


def test_shortfall_is_the_same_check_as_raydl_trains():
    from raydl.capacity import shortfall, worker_need

    spec = load_spec(DIGITS, ["scaling.num_workers=2", "scaling.cpus_per_worker=2"])
    need = worker_need(spec.scaling)
    assert need == {"CPU": 2.0}
    assert shortfall(need, 2, [{"CPU": 4.0}]) is None
    # 4 CPUs in all, but 1 + 3 on two nodes: only one 2-CPU worker fits on a node
    assert shortfall(need, 2, [{"CPU": 1.0}, {"CPU": 3.0}]) == (
        "scaling: the cluster cannot fit 2 workers (only 1 worker(s) fit on the nodes' resources); "
        "lower scaling.num_workers or per-worker resources")
    gpu = worker_need(load_spec(DIGITS, ["scaling.use_gpu=true"]).scaling)
    assert "GPU: 2 asked (2 workers x 1), 0 in the cluster" in shortfall(gpu, 2, [{"CPU": 8.0}])


def test_the_jobs_api_imports_ray_under_one_lock_from_many_threads():
    # the gateway serves requests from a thread pool: two first requests at once imported Ray from
    # two threads (`ray.job_submission` in one, `ray.exceptions` in the other), which deadlocks inside
    # Ray's package and left it half-imported for the life of the process (CI, stop 17)
    code = """
import sys, threading
from raydl import jobs
seen = []
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "ray":
            seen.append(jobs._RAY_IMPORT.locked())
sys.meta_path.insert(0, Watch())
errs = []
def go(i):
    try:
        if i % 2:
            jobs.Cluster("http://127.0.0.1:9", None, "")._call("probing", None, lambda: 0)
        else:
            jobs.ray_jobs_api()
    except Exception as e:
        errs.append(repr(e))
ts = [threading.Thread(target=go, args=(i,)) for i in range(4)]
[t.start() for t in ts]
[t.join() for t in ts]
print(errs, len(seen), all(seen))
"""
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    errs, n, all_locked = got.stdout.strip().rsplit(" ", 2)
    assert got.returncode == 0 and errs == "[]" and int(n) > 50 and all_locked == "True", got.stdout + got.stderr[-2000:]
