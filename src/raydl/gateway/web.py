"""The web page: server-rendered HTML, no build step, no script. A team signs in with its token
(kept in an HttpOnly, SameSite=Strict cookie) and sees only its own jobs, models and reports."""

from __future__ import annotations

import json
from html import escape
from typing import Any

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from raydl.errors import AuthError, NotFoundError, RaydlError
from raydl.gateway import tokens
from raydl.gateway.service import Gateway

STYLE = """body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left}pre{background:#f6f6f6;padding:1em;max-height:40em;overflow:auto}
.SUCCEEDED{color:#070}.FAILED{color:#b00}.RUNNING,.PENDING,.SUBMITTING{color:#a60}.STOPPED{color:#666}nav a{margin-right:1em}"""


def page(title: str, body: str, team: str | None = None, refresh_s: int | None = None) -> HTMLResponse:
    nav = (f'<nav><a href="/ui">jobs</a><a href="/ui/models">models</a><a href="/ui/drift">drift reports</a>'
           f'<a href="/ui/logout">sign out</a> team <b id="team">{escape(team)}</b></nav>') if team else ""
    meta = f"<meta http-equiv='refresh' content='{refresh_s}'>" if refresh_s else ""
    return HTMLResponse(f"<!doctype html><html><head><meta charset='utf-8'>{meta}<title>{escape(title)}</title>"
                        f"<style>{STYLE}</style></head><body>{nav}<h1>{escape(title)}</h1>{body}</body></html>")


def _metrics(m: dict[str, Any] | None, keys: tuple[str, ...] = ("val_accuracy", "val_loss")) -> str:
    if not m:
        return ""
    return ", ".join(f"{k}={m[k]:.4g}" for k in keys if isinstance(m.get(k), int | float))


def install(app: FastAPI, gw: Gateway) -> None:
    def who(request: Request) -> tokens.Caller | None:
        try:
            return app.state.caller(request)
        except AuthError:
            return None

    def to_login() -> RedirectResponse:
        return RedirectResponse("/ui/login", status_code=303)

    @app.get("/ui/login", include_in_schema=False)
    def login_form(error: str = "") -> HTMLResponse:
        msg = f"<p class='FAILED'>{escape(error)}</p>" if error else ""
        return page("raydl gateway: sign in", msg + "<form method='post' action='/ui/login'>"
                    "<label>Team token <input type='password' name='token' size='70' autofocus></label> "
                    "<button type='submit'>Sign in</button></form>")

    @app.post("/ui/login", include_in_schema=False)
    def login(request: Request, token: str = Form(..., max_length=200)):
        try:
            tokens.verify(gw.store, token.strip(), gw.verified)
        except AuthError:
            return RedirectResponse("/ui/login?error=invalid+or+revoked+token", status_code=303)
        resp = RedirectResponse("/ui", status_code=303)
        resp.set_cookie("raydl_gateway_token", token.strip(), httponly=True, samesite="strict", max_age=8 * 3600,
                        secure=request.url.scheme == "https")  # behind TLS, never sent in clear
        return resp

    @app.get("/ui/logout", include_in_schema=False)
    def logout():
        resp = to_login()
        resp.delete_cookie("raydl_gateway_token")
        return resp

    @app.get("/ui", include_in_schema=False)
    def jobs_page(request: Request, status: str | None = None):
        caller = who(request)
        if caller is None:
            return to_login()
        rows, total = gw.list(caller, status if status in ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED") else None, 200, 0)
        trs = "".join(
            f"<tr class='job' data-id='{escape(r['id'])}'><td><a href='/ui/jobs/{escape(r['id'])}'>{escape(r['id'])}</a></td>"
            f"<td>{escape(r['run_name'])}</td><td class='{escape(r['status'])}'>{escape(r['status'])}</td>"
            f"<td>{r['workers']}</td><td>{escape(_metrics(r['metrics']))}</td><td>{escape(r['created_at'])}</td></tr>"
            for r in rows)
        body = (f"<p>{total} job(s)</p><table id='jobs'><tr><th>job</th><th>run</th><th>status</th><th>workers</th>"
                f"<th>metrics</th><th>submitted</th></tr>{trs}</table>" if rows else "<p id='jobs'>no jobs yet</p>")
        active = any(r["status"] in ("SUBMITTING", "PENDING", "RUNNING") for r in rows)
        return page("Jobs", body, caller.team, refresh_s=10 if active else None)

    @app.get("/ui/jobs/{job_id}", include_in_schema=False)
    def job_page(request: Request, job_id: str):
        caller = who(request)
        if caller is None:
            return to_login()
        try:
            job = gw.get(caller, job_id)
        except NotFoundError:
            return page("Not found", f"<p>no job {escape(job_id)}</p>", caller.team)
        try:
            logs = gw.logs(caller, job_id)
        except RaydlError as e:
            logs = f"(logs unavailable: {e})"
        metrics = "".join(f"<tr><td>{escape(k)}</td><td>{escape(str(v))}</td></tr>" for k, v in (job["metrics"] or {}).items())
        reports = "".join(f"<li><a href='/v1/drift/{escape(p.name)}'>{escape(p.name)}</a></li>"
                          for p in sorted(gw.config.drift_dir(caller.team).glob(f"*{job['run_name']}*.html")))
        body = (f"<p>status <b class='{escape(job['status'])}' id='status'>{escape(job['status'])}</b> "
                f"{escape(job['message'])}</p><p>model directory: <code id='model'>{escape(job['model_dir'] or '-')}</code>"
                f" · W&amp;B run: <code>{escape(job['wandb_dir'] or '-')}</code> · <a href='/ui/models'>registry</a></p>"
                f"<h2>Metrics</h2><table id='metrics'>{metrics}</table>"
                f"<h2>Drift reports</h2><ul>{reports or '<li>none for this run</li>'}</ul>"
                f"<h2>Spec</h2><pre>{escape(json.dumps(job['spec'], indent=2))}</pre>"
                f"<h2>Logs</h2><pre id='logs'>{escape(logs[-200_000:])}</pre>")
        return page(f"Job {job_id}", body, caller.team,
                    refresh_s=5 if job["status"] in ("SUBMITTING", "PENDING", "RUNNING") else None)

    @app.get("/ui/models", include_in_schema=False)
    def models_page(request: Request):
        from raydl.model_registry.api import ModelRegistry

        caller = who(request)
        if caller is None:
            return to_login()
        if caller.admin:
            return page("Models", "<p>the registry is per team: sign in with a team's token</p>", caller.team)
        folder = gw.config.registry_dir(caller.team)
        folder.mkdir(parents=True, exist_ok=True)
        parts = []
        with ModelRegistry(folder) as reg:
            for m in reg.list():
                h = reg.history(m["name"])
                events = "".join(f"<li>{escape(e['at'])}: {escape(e['action'])} v{e['version']}"
                                 f"{' as ' + escape(e['alias']) if e['alias'] else ''}</li>" for e in h["events"])
                aliases = ", ".join(f"{escape(a)} → v{v}" for a, v in sorted(h["aliases"].items())) or "none"
                versions = "".join(f"<tr><td>v{v['version']}</td><td>{escape(str(v['created_at']))}</td>"
                                   f"<td>{escape(str(v['source_run'] or '-'))}</td></tr>" for v in h["versions"])
                parts.append(f"<h2 class='model'>{escape(m['name'])}</h2><p>{m['versions']} version(s); aliases: {aliases}"
                             f"</p><table class='versions'><tr><th>version</th><th>registered</th><th>from run</th></tr>"
                             f"{versions}</table><h3>History</h3><ul class='lineage'>{events}</ul>")
        return page("Models", "".join(parts) or "<p>no models registered yet</p>", caller.team)

    @app.get("/ui/drift", include_in_schema=False)
    def drift_page(request: Request):
        caller = who(request)
        if caller is None:
            return to_login()
        folder = gw.config.drift_dir(caller.team)
        items = "".join(f"<li><a href='/v1/drift/{escape(p.name)}'>{escape(p.name)}</a></li>"
                        for p in (sorted(folder.glob("*.html")) if folder.is_dir() else []))
        return page("Drift reports", f"<ul>{items}</ul>" if items else "<p>no drift reports yet</p>", caller.team)
