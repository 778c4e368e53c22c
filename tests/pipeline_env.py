"""What the pipeline tests share: the digits windows, a pipeline file written for a test's own
paths, a champion in a real registry (trained in-process, no Ray), a real webhook server, and the
CLI run in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "pipelines" / "digits_continual.yaml"
CLASSES = list(range(10))


def pipeline_file(tmp: Path, windows: Path | str | list, name: str = "digits-continual", **sections) -> Path:
    """The shipped digits pipeline, pointed at `tmp` (run dir, registry) and `windows`, with
    `sections` replacing top-level sections (or keys, for `model`)."""
    raw = yaml.safe_load(SHIPPED.read_text())
    raw["name"] = name
    raw["run_dir"] = str(tmp / "runs")
    raw["model"]["registry"] = str(tmp / "registry")
    raw["data"]["location"] = windows if isinstance(windows, list) else str(windows)
    raw["tracking"] = {"backend": "none"}
    for k, v in sections.items():
        if k == "model":
            raw["model"].update(v)
        else:
            raw[k] = v
    out = tmp / f"{name}.yaml"
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def champion(tmp: Path, window: Path, name: str = "digits-continual", alias: str = "production") -> dict:
    """A model trained in this process on `window` (full-batch Adam, no Ray), with its drift
    profile, registered as `name` v1 and promoted to `alias`."""
    from model_dirs import model_dir

    from raydl.model_registry.api import ModelRegistry

    mdir = model_dir(tmp / "champion-run" / "model", source=str(window), steps=80, profile=True,
                     data={"source": str(window), "label": "digit", "classes": CLASSES},
                     model={"name": "mlp", "hidden": [64]})  # the shipped pipeline's model
    with ModelRegistry(tmp / "registry") as reg:
        v = reg.register(mdir, name)
        reg.promote(name, v["version"], alias)
    return v


class Webhook:
    """A real HTTP server that records every JSON body POSTed to it (and how many were in flight
    at once), answering after `delay_s`."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.bodies: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                with lock:
                    hook.in_flight += 1
                    hook.max_in_flight = max(hook.max_in_flight, hook.in_flight)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(delay_s)
                with lock:
                    hook.bodies.append(body)
                    hook.in_flight -= 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def cli_env(tmp: Path, **extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "RAYDL_HOME": str(tmp / "home"), "WANDB_SILENT": "true", "RAY_USAGE_STATS_ENABLED": "0", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def raydl(*args: str, env: dict, **kw) -> subprocess.Popen:
    """`raydl ARGS` in its own process group (so a test can SIGKILL it and everything it started)."""
    return subprocess.Popen([sys.executable, "-m", "raydl.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)
