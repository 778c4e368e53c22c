"""A real gateway for tests: uvicorn serving `create_app` on a free port, in a thread of this
process (fast tests) or as `raydl gateway serve` in a subprocess (restart tests kill it)."""

from __future__ import annotations

import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml
from clusters import RAYDL, free_port

from raydl.gateway import migrations, tokens
from raydl.gateway.config import config_from_dict
from raydl.gateway.store import Store, engine_for


def make_config(data_dir: Path, **over) -> dict:
    raw = {"data_dir": str(data_dir), "runner": "noop",
           "teams": {"team-a": {"max_concurrent_jobs": 3, "max_workers": 6, "max_gpus": 0},
                     "team-b": {"max_concurrent_jobs": 3, "max_workers": 6, "max_gpus": 0}}}
    raw.update(over)
    return raw


def make_token(cfg_raw: dict, team: str, role: str = "member") -> str:
    cfg = config_from_dict(cfg_raw)
    migrations.upgrade(cfg.database_url)
    eng = engine_for(cfg.database_url)
    try:
        return tokens.create(Store(eng), team, role)[1]
    finally:
        eng.dispose()


@contextmanager
def serve_thread(cfg_raw: dict, runner=None):
    """Yields the base URL of a gateway running in a thread; stops it on exit."""
    import uvicorn

    from raydl.gateway.app import create_app

    app = create_app(config_from_dict(cfg_raw), runner)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, "/healthz")
    try:
        yield url, app
    finally:
        server.should_exit = True
        t.join(10)


def wait_ready(url: str, path: str = "/healthz", timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}{path} not ready after {timeout:.0f} s")
        time.sleep(0.2)


def start_process(cfg_raw: dict, folder: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """`raydl gateway serve` in a subprocess (its log in folder/gateway.log)."""
    cfg_path = folder / "gateway.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg_raw))
    port = free_port()
    log = open(folder / "gateway.log", "ab")  # noqa: SIM115 (the process holds it)
    proc = subprocess.Popen([RAYDL, "gateway", "serve", "--config", str(cfg_path), "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, "/healthz", 120, proc)
    return proc, url


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
