"""A real Kubernetes API server for tests: etcd + kube-apiserver on free loopback ports, own data dir.

kube-apiserver 1.20 is built from Debian's Kubernetes source by .ci/kube-apiserver (cached in
~/.cache/raydl-k8s); etcd is Debian's etcd-server. The server runs real RBAC (`--authorization-mode=RBAC`)
with static bearer tokens: `admin` (system:masters), `alice` (group raydl:team-a), `bob` (group
raydl:team-b). The KubeRay v1.7.0 CRDs from k8s/crds are loaded, adapted to what a 1.20 server takes
(see `for_old_server`), and each team's platform overlay is applied, so quotas and Roles are the
project's own. No controller runs: nothing reconciles RayJobs, and tests write `status` themselves.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from clusters import free_port
from k8s_schema import K8S, crd_docs, render

CACHE = Path(os.environ.get("RAYDL_K8S_CACHE", Path.home() / ".cache" / "raydl-k8s"))
APISERVER = Path(os.environ.get("RAYDL_KUBE_APISERVER", CACHE / "bin" / "kube-apiserver"))
TOKENS = {"admin": ("admin-token", "system:masters"), "alice": ("alice-token", "raydl:team-a"),
          "bob": ("bob-token", "raydl:team-b")}


def available() -> str | None:
    """None when a server can be started here, else why not."""
    if not APISERVER.is_file():
        return f"{APISERVER} is missing: run .ci/kube-apiserver to build it"
    if shutil.which("etcd") is None:
        return "etcd is not on PATH: apt-get install etcd-server (.ci/kube-apiserver does)"
    if shutil.which("openssl") is None:
        return "openssl is not on PATH"
    return None


def for_old_server(crd: dict) -> dict:
    """The KubeRay CRD as a 1.20 API server accepts it: without CEL rules (x-kubernetes-validations,
    1.25+), without `default: ""` (1.20 reads an empty-string default as null and refuses it), and with
    list-maps turned atomic (their keys then lack the default 1.20 asks of list-map keys). The type,
    enum, required and structure checks that tests rely on are untouched."""
    crd = copy.deepcopy(crd)

    def walk(n):
        if isinstance(n, dict):
            n.pop("x-kubernetes-validations", None)
            if n.get("default") == "":
                n.pop("default")
            if n.get("x-kubernetes-list-type") == "map":
                n["x-kubernetes-list-type"] = "atomic"
                n.pop("x-kubernetes-list-map-keys", None)
            for v in n.values():
                walk(v)
        elif isinstance(n, list):
            for v in n:
                walk(v)

    walk(crd)
    return crd


@dataclass
class ApiServer:
    root: Path
    url: str = ""
    procs: list[subprocess.Popen] = field(default_factory=list)

    def kubeconfig(self, path: Path, current: str = "alice") -> Path:
        users = [{"name": u, "user": {"token": t}} for u, (t, _) in TOKENS.items()]
        ctxs = [{"name": u, "context": {"cluster": "test", "user": u, **({"namespace": "team-a"} if u == "alice" else {})}}
                for u in TOKENS]
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": current, "users": users, "contexts": ctxs,
            "clusters": [{"name": "test", "cluster": {"server": self.url, "insecure-skip-tls-verify": True}}]}))
        return path

    def client(self, user: str = "admin"):
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host, cfg.verify_ssl = self.url, False
        cfg.api_key = {"authorization": f"Bearer {TOKENS[user][0]}"}
        return client.ApiClient(cfg)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


def _wait_ready(srv: ApiServer, timeout: float = 90.0) -> None:
    import ssl
    import urllib.request

    ctx = ssl._create_unverified_context()  # the server's self-signed serving cert
    req = urllib.request.Request(srv.url + "/readyz", headers={"Authorization": f"Bearer {TOKENS['admin'][0]}"})
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=2) as r:
                if r.read() == b"ok":
                    return
        except OSError:
            pass
        if any(p.poll() is not None for p in srv.procs) or time.monotonic() > deadline:
            logs = "\n".join(f"{name}:\n{(srv.root / name).read_text()[-2000:]}" for name in ("etcd.log", "apiserver.log"))
            raise RuntimeError(f"kube-apiserver did not become ready:\n{logs}")
        time.sleep(0.3)


def start() -> ApiServer:
    """etcd and kube-apiserver, ready, with the CRDs and overlays loaded. Two tries, each on fresh ports:
    a port found free can be taken by another process (a Ray of a parallel test) before etcd binds it."""
    for attempt in range(2):
        try:
            return _start()
        except RuntimeError:
            if attempt:
                raise
    raise AssertionError("unreachable")


def _start() -> ApiServer:
    root = Path(tempfile.mkdtemp(prefix="raydl-kapi-"))
    srv = ApiServer(root)
    try:
        subprocess.run(["openssl", "genrsa", "-out", str(root / "sa.key"), "2048"], check=True, capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", str(root / "sa.key"), "-pubout", "-out", str(root / "sa.pub")],
                       check=True, capture_output=True)
        (root / "tokens.csv").write_text("".join(f'{t},{u},{u},"{g}"\n' for u, (t, g) in TOKENS.items()))
        client, peer, api = free_port(), free_port(), free_port()
        etcd_log = open(root / "etcd.log", "w")  # noqa: SIM115 (kept open for the process)
        srv.procs.append(subprocess.Popen(
            ["etcd", "--data-dir", str(root / "etcd"), "--listen-client-urls", f"http://127.0.0.1:{client}",
             "--advertise-client-urls", f"http://127.0.0.1:{client}", "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}", "--initial-cluster", f"default=http://127.0.0.1:{peer}",
             "--listen-metrics-urls", f"http://127.0.0.1:{free_port()}", "--max-request-bytes", str(8 << 20)],
            stdout=etcd_log, stderr=subprocess.STDOUT))
        api_log = open(root / "apiserver.log", "w")  # noqa: SIM115
        srv.procs.append(subprocess.Popen(
            [str(APISERVER), f"--etcd-servers=http://127.0.0.1:{client}", "--bind-address=127.0.0.1",
             f"--secure-port={api}", "--insecure-port=0", f"--cert-dir={root / 'certs'}",
             f"--token-auth-file={root / 'tokens.csv'}", "--authorization-mode=RBAC",
             "--service-account-issuer=https://raydl.test", f"--service-account-key-file={root / 'sa.pub'}",
             f"--service-account-signing-key-file={root / 'sa.key'}", "--service-cluster-ip-range=10.96.0.0/24",
             "--advertise-address=127.0.0.1", "--enable-priority-and-fairness=false"],
            stdout=api_log, stderr=subprocess.STDOUT))
        srv.url = f"https://127.0.0.1:{api}"
        _wait_ready(srv)
        _load_crds(srv)
        for team in ("team-a", "team-b"):
            apply(srv, render(K8S / "overlays" / team))
    except BaseException:
        srv.stop()
        raise
    return srv


def _load_crds(srv: ApiServer) -> None:
    from kubernetes import client

    ext = client.ApiextensionsV1Api(srv.client())
    for crd in crd_docs():
        ext.create_custom_resource_definition(for_old_server(crd))
    deadline = time.monotonic() + 60
    for crd in crd_docs():
        while True:
            got = ext.read_custom_resource_definition(crd["metadata"]["name"])
            if any(c.type == "Established" and c.status == "True" for c in (got.status.conditions or [])):
                break
            assert time.monotonic() < deadline, f"CRD {crd['metadata']['name']} was not established"
            time.sleep(0.2)


def apply(srv: ApiServer, objs: list[dict]) -> None:
    """Create rendered objects as the admin: built-in kinds and KubeRay custom resources."""
    from kubernetes import client, utils

    api = srv.client()
    for o in sorted(objs, key=lambda o: o["kind"] != "Namespace"):
        if o["apiVersion"].startswith("ray.io/"):
            group, version = o["apiVersion"].split("/")
            client.CustomObjectsApi(api).create_namespaced_custom_object(
                group, version, o["metadata"]["namespace"], o["kind"].lower() + "s", o)
        else:
            utils.create_from_dict(api, o)
