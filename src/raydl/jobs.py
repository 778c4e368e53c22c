"""`raydl submit` and `raydl jobs` on a Ray cluster's Jobs API (the dashboard, http://HEAD:8265).

The driver runs on the cluster, not on the laptop: it survives the laptop, and is listed, followed
and stopped later. Before anything is sent, the spec is validated locally (every problem at once),
its data resolved when it is built-in or local, the address probed (seconds, not Ray's minutes), the
token checked, and the cluster's nodes compared with the workers asked for. The resolved spec and any
local data it names travel in the job's runtime_env `working_dir`; the entrypoint is `raydl KIND
spec.yaml` from the one table `KINDS`.

Token authentication: like Ray's own clients, the token comes from RAY_AUTH_TOKEN, else the file named
by RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token, and travels as `Authorization: Bearer`; RAY_AUTH_MODE=
disabled sends none. A 401 or 403 from the cluster is explained in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raydl.capacity import shortfall, worker_need
from raydl.errors import AuthError, DataError, NotFoundError, ResourceError, SpecError
from raydl.spec import JobSpec, spec_to_yaml
from raydl.storage import is_uri

# kind -> the raydl command the job runs. Only kinds whose command exists in this raydl are listed;
# PLANNED ones are known names whose command has not landed yet.
KINDS: dict[str, str] = {"train": "train", "tune": "tune", "continual": "continual"}
PLANNED = ("pipeline",)
# kind -> the spec section its command needs (checked locally, before anything is sent)
NEEDS = {"tune": "tune", "continual": "stream"}
SPEC_FILE = "spec.yaml"
DATA_DIR = "data"
# A job's working_dir is zipped and uploaded through the dashboard, which takes at most 100 MiB a
# request (ray.dashboard's DASHBOARD_CLIENT_MAX_SIZE); larger data belongs in object storage.
MAX_SHIP_BYTES = 100 * 1024**2
PROBE_TIMEOUT_S = 3.0
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


# ---- pure parts ------------------------------------------------------------------------------


def missing_section(kind: str, sections: Any) -> str | None:
    """'--kind K needs a `S:` section ...' when the spec (or its raw mapping) lacks what K's command needs."""
    section = NEEDS.get(kind)
    if section is None:
        return None
    has = sections.get(section) if isinstance(sections, dict) else getattr(sections, section, None)
    if has is not None:
        return None
    return f"--kind {kind} needs a `{section}:` section (see configs/*{kind}*.yaml)"


def entrypoint(kind: str) -> str:
    """The shell command a job of `kind` runs in its working_dir."""
    if kind not in KINDS:
        avail = ", ".join(KINDS)
        if kind in PLANNED:
            raise SpecError(f"--kind {kind}: submitting `raydl {kind}` as a Ray job is not supported yet; available now: {avail}")
        raise SpecError(f"--kind {kind!r}: unknown kind; available: {avail} (planned: {', '.join(PLANNED)})")
    return f"raydl {KINDS[kind]} {SPEC_FILE}"


def dashboard_url(address: str | None, env: dict | None = None) -> str:
    """http(s)://host:port of the Jobs API from --address, RAY_API_SERVER_ADDRESS, or an http(s) RAY_ADDRESS."""
    env = os.environ if env is None else env
    ray_address = env.get("RAY_ADDRESS", "")
    given = address or env.get("RAY_API_SERVER_ADDRESS") or (ray_address if ray_address.startswith("http") else "")
    where = "--address" if address else "RAY_API_SERVER_ADDRESS/RAY_ADDRESS"
    if not given:
        raise ResourceError("no Ray cluster given: pass --address http://HEAD:8265 (the dashboard's Jobs API) "
                            "or set RAY_API_SERVER_ADDRESS")
    url = given if "://" in given else f"http://{given}"
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1 or parts.path.strip("/"):
        raise ResourceError(f"{where} {given!r}: not a Jobs API address; expected http://host:port "
                            "(the Ray dashboard, port 8265 by default), e.g. http://10.0.0.5:8265")
    return url.rstrip("/")


@dataclass(frozen=True)
class Token:
    value: str
    source: str  # where it came from, for error messages (never the token itself)


def find_token(env: dict | None = None) -> Token | None:
    """The cluster token the way Ray's clients find it, or None (none found, or RAY_AUTH_MODE=disabled)."""
    env = os.environ if env is None else env
    if env.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return Token(env["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN")
    named = env.get("RAY_AUTH_TOKEN_PATH")
    path = Path(named).expanduser() if named else Path.home() / ".ray" / "auth_token"
    try:
        value = path.read_text().strip()
    except OSError as e:
        if named:
            raise AuthError(f"RAY_AUTH_TOKEN_PATH={named!r}: cannot read the token file ({e.strerror or e})") from None
        return None
    if not value and named:
        raise AuthError(f"RAY_AUTH_TOKEN_PATH={named!r}: the token file is empty")
    return Token(value, f"RAY_AUTH_TOKEN_PATH={named}" if named else str(path)) if value else None


def auth_headers(token: Token | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token.value}"} if token else {}


def auth_problem(status: int, url: str, token: Token | None) -> AuthError | None:
    """One line for a 401/403 from the dashboard, else None."""
    if status == 401:
        return AuthError(f"the Ray cluster at {url} requires a token (token authentication is on) and raydl found none: "
                         "set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a file holding it, or put it in ~/.ray/auth_token "
                         "(`ray get-auth-token` on the head prints it)")
    if status == 403:
        src = token.source if token else "the request"
        return AuthError(f"the Ray cluster at {url} refused the token from {src}: it is not this cluster's token "
                         "(`ray get-auth-token` on the head prints the right one)")
    return None


def _source_files(source: Path) -> list[Path]:
    return [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())


def shipped_source(spec: JobSpec) -> Path | None:
    """The local file or directory `data.source` names, or None (built-in dataset or URI)."""
    from raydl.datasets import DATASETS

    src = spec.data.source
    if src in DATASETS or is_uri(src):
        return None
    path = Path(src).expanduser()
    if not path.exists():
        raise DataError(f"data.source: no file or directory at {src!r} (and it is not a built-in dataset: "
                        f"{', '.join(DATASETS.names())})")
    size = sum(p.stat().st_size for p in _source_files(path))
    if size > MAX_SHIP_BYTES:
        raise DataError(f"data.source {src!r} is {size / 1024**2:.1f} MiB; a job's working_dir can carry at most "
                        f"{MAX_SHIP_BYTES // 1024**2} MiB (the dashboard's upload limit): put the data where the cluster "
                        "can read it and give its URI, e.g. data.source=s3://bucket/path/")
    return path


def check_storage_path(spec: JobSpec) -> None:
    sp = spec.run.storage_path
    if not (is_uri(sp) or sp.startswith(("/", "~"))):
        raise SpecError(f"run.storage_path: {sp!r} is relative; a submitted job runs in a temporary directory on the "
                        "cluster, so give an absolute path or URI the cluster can write, e.g. "
                        "run.storage_path=/mnt/shared/runs or s3://bucket/runs")


def stage(spec: JobSpec, dest: Path) -> JobSpec:
    """Fill `dest` with what the job needs (spec.yaml, and data/<name> for local data); return the
    spec as the job sees it (data.source rewritten to the shipped relative path)."""
    local = shipped_source(spec)
    if local is not None:
        target = dest / DATA_DIR / local.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if local.is_dir():
            shutil.copytree(local, target)
        else:
            shutil.copy2(local, target)
        spec = spec.model_copy(update={"data": spec.data.model_copy(update={"source": f"{DATA_DIR}/{local.name}"})})
    (dest / SPEC_FILE).write_text(spec_to_yaml(spec))
    return spec


def runtime_env(working_dir: Path, pip: list[str] | None = None) -> dict:
    env: dict = {"working_dir": str(working_dir)}
    if pip:
        env["pip"] = list(pip)
    return env


def failure_reason(message: str | None, logs: str) -> str:
    """One line for a failed job: raydl's own `raydl: error:` line from its logs when there is one."""
    for line in reversed(logs.splitlines()):
        if line.startswith("raydl: error:"):
            return line.removeprefix("raydl: error:").strip()
    first = (message or "").strip().splitlines()
    return first[0] if first else "no message"


# ---- talking to the cluster ------------------------------------------------------------------


def _get_json(url: str, path: str, token: Token | None, timeout: float = PROBE_TIMEOUT_S):
    req = urllib.request.Request(url + path, headers=auth_headers(token))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 (http/https checked)
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        problem = auth_problem(e.code, url, token)
        if problem:
            raise problem from None
        raise ResourceError(f"{url}{path}: HTTP {e.code} {e.reason}; is {url} a Ray dashboard (Jobs API, port 8265)?") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        why = ("nothing is listening there (connection refused)" if isinstance(reason, ConnectionRefusedError) else
               f"cannot resolve host {urllib.parse.urlsplit(url).hostname!r}" if isinstance(reason, socket.gaierror) else
               f"no answer within {timeout:g} s" if isinstance(reason, TimeoutError | socket.timeout) else
               f"cannot reach it ({getattr(reason, 'strerror', None) or reason})")
        raise ResourceError(f"--address {url}: {why}; give the address of a running Ray head's dashboard "
                            "(ray start --head --dashboard-host=0.0.0.0 prints it)") from None
    except ValueError:
        raise ResourceError(f"{url}{path}: the answer is not JSON; is {url} a Ray dashboard (Jobs API, port 8265)?") from None


_RAY_IMPORT = threading.Lock()


def ray_jobs_api():
    """(JobSubmissionClient, AuthenticationError), imported by one thread at a time: `import ray`
    from two threads at once (the gateway's request threads) deadlocks inside Ray's package and
    leaves it half-imported for the life of the process."""
    with _RAY_IMPORT:
        from ray.exceptions import AuthenticationError
        from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient, AuthenticationError


@dataclass(frozen=True)
class Cluster:
    """A Ray cluster reached through its dashboard: the address, the token, the Ray version it runs."""

    url: str
    token: Token | None
    ray_version: str

    @classmethod
    def connect(cls, address: str | None) -> Cluster:
        url = dashboard_url(address)
        token = find_token()
        version = _get_json(url, "/api/version", token)
        if not isinstance(version, dict) or "ray_version" not in version:
            raise ResourceError(f"{url}: /api/version did not answer like a Ray dashboard; give the Jobs API address (port 8265)")
        return cls(url, token, version["ray_version"])

    def client(self):
        JobSubmissionClient, _ = ray_jobs_api()
        return JobSubmissionClient(self.url, headers=auth_headers(self.token))

    def node_resources(self) -> list[dict[str, float]]:
        """Total resources of each alive node (the dashboard's state API)."""
        got = _get_json(self.url, "/api/v0/nodes?limit=10000&detail=true", self.token, timeout=30)
        rows = got["data"]["result"]["result"]
        return [n.get("resources_total") or {} for n in rows if n.get("state") == "ALIVE"]

    def check_fits(self, spec: JobSpec) -> None:
        problem = shortfall(worker_need(spec.scaling), spec.scaling.num_workers, self.node_resources())
        if problem:
            raise ResourceError(f"{problem} (cluster at {self.url})")

    def _call(self, what: str, job_id: str | None, fn, *args):
        _, AuthenticationError = ray_jobs_api()  # noqa: N806 (a class)
        try:
            return fn(*args)
        except AuthenticationError as e:  # the token was accepted by the probe, then refused (rotated?)
            raise auth_problem(401 if str(e).startswith("Authentication required") else 403, self.url, self.token) from None
        except RuntimeError as e:
            text = str(e)
            if "status code 404" in text or "does not exist" in text:
                raise NotFoundError(f"job {job_id!r} not found on the cluster at {self.url}; "
                                    f"`raydl jobs list --address {self.url}` lists its jobs") from None
            raise ResourceError(f"{what} on {self.url} failed: {text.splitlines()[0] if text else type(e).__name__}") from None

    def info(self, job_id: str):
        return self._call("reading the job", job_id, self.client().get_job_info, job_id)

    def list(self) -> list:
        return self._call("listing jobs", None, self.client().list_jobs)

    def logs(self, job_id: str) -> str:
        self.info(job_id)
        return self._call("reading the logs", job_id, self.client().get_job_logs, job_id)

    def follow(self, job_id: str, write) -> None:
        """Stream the job's logs to `write` until the job ends."""
        import asyncio

        client = self.client()
        self.info(job_id)

        async def pump() -> None:
            async for chunk in client.tail_job_logs(job_id):
                write(chunk)

        self._call("following the logs", job_id, asyncio.run, pump())

    def stop(self, job_id: str, wait_s: float = 60.0):
        """Ask the job to stop; wait (up to `wait_s`) for it to reach a terminal state."""
        self.info(job_id)
        self._call("stopping the job", job_id, self.client().stop_job, job_id)
        return self.wait(job_id, wait_s)

    def wait(self, job_id: str, wait_s: float):
        deadline = time.monotonic() + wait_s
        info = self.info(job_id)
        while str(info.status) not in TERMINAL and time.monotonic() < deadline:
            time.sleep(0.5)
            info = self.info(job_id)
        return info

    def submit(self, entry: str, env: dict, submission_id: str, metadata: dict[str, str]) -> str:
        return self._call("submitting the job", submission_id, lambda: self.client().submit_job(
            entrypoint=entry, runtime_env=env, submission_id=submission_id, metadata=metadata))


def job_record(info) -> dict:
    """A job as plain JSON: what `raydl jobs status --json` and `list --json` print."""
    return {"job_id": info.submission_id or info.job_id, "status": str(info.status), "message": info.message,
            "entrypoint": info.entrypoint, "start_time": info.start_time, "end_time": info.end_time,
            "metadata": info.metadata or {}}
