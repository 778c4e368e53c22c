"""Acceptance 5: the gateway's web page in headless Chromium, driven through the DevTools protocol:
a team signs in with its token through the form, sees its own jobs (with status and metrics) and a
job's page with its logs; the other team's jobs appear nowhere, and its job's page is not found."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import tempfile
import time

import httpx
import pytest
from clusters import free_port
from gateway_server import auth, make_config, make_token, serve_thread
from model_dirs import model_dir

from raydl.gateway.config import config_from_dict
from raydl.model_registry.api import ModelRegistry

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not on PATH")]

SPEC = {"run": {"name": "web-{}"}, "data": {"source": "iris"}, "scaling": {"num_workers": 1}, "tracking": "none"}


class Browser:
    """Headless Chromium and one page, spoken to over the DevTools protocol (websocket-client)."""

    def __init__(self) -> None:
        import websocket

        port = free_port()
        self.proc = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", f"--remote-debugging-port={port}",
             "--remote-allow-origins=*", f"--user-data-dir={tempfile.mkdtemp()}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json() if t["type"] == "page"]
                if pages:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "chromium's DevTools endpoint did not come up"
            time.sleep(0.3)
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60)
        self.ids = itertools.count(1)

    def call(self, method: str, **params):
        n = next(self.ids)
        self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == n:
                assert "error" not in msg, msg
                return msg.get("result", {})

    def js(self, expr: str):
        return self.call("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value")

    def wait_path(self, path: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while not (self.js("location.pathname") == path and self.js("document.readyState") == "complete"):
            assert time.monotonic() < deadline, f"page never reached {path}: at {self.js('location.href')}"
            time.sleep(0.1)
        return self.js("document.documentElement.outerHTML")

    def go(self, url: str, path: str) -> str:
        self.call("Page.navigate", url=url)
        return self.wait_path(path)

    def sign_in(self, base: str, token: str) -> str:
        self.call("Network.clearBrowserCookies")
        self.go(f"{base}/ui", "/ui/login")  # not signed in: sent to the form
        self.js(f"document.querySelector('input[name=token]').value = {json.dumps(token)};"
                "document.querySelector('form').submit()")
        return self.wait_path("/ui")

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def test_each_team_sees_only_its_jobs_in_the_browser(tmp_path):
    cfg = make_config(tmp_path)
    a, b = make_token(cfg, "team-a"), make_token(cfg, "team-b")
    with serve_thread(cfg) as (url, _):
        ids = {}
        for team, tok in (("a", a), ("b", b)):
            ids[team] = [httpx.post(f"{url}/v1/jobs", headers=auth(tok), timeout=30,
                                    json={"spec": {**SPEC, "run": {"name": f"web-{team}{i}"}}}).json()["id"] for i in range(2)]
        httpx.post(f"{url}/v1/jobs/{ids['a'][1]}/cancel", headers=auth(a))
        folder = config_from_dict(cfg).registry_dir("team-a")
        folder.mkdir(parents=True)
        with ModelRegistry(folder) as reg:
            reg.register(model_dir(tmp_path / "m1", run_name="web-a0"), "iris-a")
            reg.register(model_dir(tmp_path / "m2", run_name="web-a1"), "iris-a")
            reg.promote("iris-a", 2, "production")
        browser = Browser()
        try:
            browser.call("Network.enable")
            html = browser.sign_in(url, a)
            assert 'id="team">team-a<' in html
            assert all(i in html for i in ids["a"]) and not any(i in html for i in ids["b"]), html
            assert html.count('class="job"') == 2 and "STOPPED" in html and "RUNNING" in html
            job = browser.go(f"{url}/ui/jobs/{ids['a'][0]}", f"/ui/jobs/{ids['a'][0]}")
            assert 'id="status">RUNNING<' in job and "noop runner: job" in job and "web-a0" in job
            other = browser.go(f"{url}/ui/jobs/{ids['b'][0]}", f"/ui/jobs/{ids['b'][0]}")
            assert "Not found" in other and "web-b0" not in other
            models = browser.go(f"{url}/ui/models", "/ui/models")
            assert "iris-a" in models and "production → v2" in models and models.count("<tr><td>v") == 2
            assert "register v1" in models and "promote v2 as production" in models  # the history, oldest first
            html = browser.sign_in(url, b)
            assert 'id="team">team-b<' in html
            assert all(i in html for i in ids["b"]) and not any(i in html for i in ids["a"]), html
            assert "iris-a" not in browser.go(f"{url}/ui/models", "/ui/models")
            browser.call("Network.clearBrowserCookies")
            assert "Sign in" in browser.go(f"{url}/ui/models", "/ui/login")
            browser.go(f"{url}/ui/login", "/ui/login")
            browser.js("document.querySelector('input[name=token]').value = 'rdg_0123456789abcdef_nope';"
                       "document.querySelector('form').submit()")
            time.sleep(1)
            assert "invalid or revoked token" in browser.wait_path("/ui/login")
        finally:
            browser.close()
