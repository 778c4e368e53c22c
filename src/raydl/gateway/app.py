"""The /v1 API (FastAPI). Every handler: who is calling (bearer token, or the web page's cookie),
then one call into `service.Gateway`. Errors map to statuses in one table; anything unexpected is
logged with an id and answered 500 with that id, never a stack trace."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from contextlib import asynccontextmanager
from typing import Any, Literal

import yaml
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from raydl.errors import AuthError, NotFoundError, RaydlError, ResourceError
from raydl.gateway import tokens
from raydl.gateway.config import GatewayConfig
from raydl.gateway.limits import BodyLimit, FailedAuth, RateLimiter
from raydl.gateway.runner import JobRunner, make_runner
from raydl.gateway.service import Forbidden, Gateway, OverQuota, Problems
from raydl.gateway.store import STATUSES, Store, engine_for
from raydl.model_registry import RegistryError

log = logging.getLogger("raydl.gateway")
COOKIE = "raydl_gateway_token"
MAX_LOG_CHUNK = 1 << 20


# ---- the API's shapes (they are the OpenAPI schema) -------------------------------------------


class SubmitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field("train", max_length=32, description="train, tune (needs a tune: section) or continual (needs a stream: section)")
    spec: dict[str, Any] | str = Field(..., description="the job spec: a mapping, or YAML text")


class JobOut(BaseModel):
    id: str
    team: str
    kind: str
    status: Literal[STATUSES]  # type: ignore[valid-type]
    message: str
    run_name: str
    workers: int
    gpus: float
    created_at: str
    updated_at: str
    ended_at: str | None
    metrics: dict[str, Any] | None
    model_dir: str | None
    wandb_dir: str | None
    spec: dict[str, Any] | None = None


class JobPage(BaseModel):
    jobs: list[JobOut]
    total: int
    limit: int
    offset: int


class LogsOut(BaseModel):
    job_id: str
    text: str
    offset: int
    next_offset: int
    complete: bool


class PromoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(..., ge=1)
    alias: str = Field(..., min_length=1, max_length=64)


class RollbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alias: str = Field(..., min_length=1, max_length=64)


class Error(BaseModel):
    detail: str
    problems: list[str] | None = None
    error_id: str | None = None


ERRORS = {401: {"model": Error}, 404: {"model": Error}, 429: {"model": Error}}
REGISTRY_ERRORS = {**ERRORS, 403: {"model": Error}, 409: {"model": Error}, 422: {"model": Error}}


# ---- errors ------------------------------------------------------------------------------------


def _status(e: RaydlError) -> int:
    if isinstance(e, Problems):
        return 422
    if isinstance(e, AuthError):
        return 401
    if isinstance(e, Forbidden):
        return 403
    if isinstance(e, NotFoundError):
        return 404
    if isinstance(e, OverQuota):
        return 429
    if isinstance(e, RegistryError):
        text = str(e)
        if "is not a model name" in text or "is not an alias" in text:
            return 422
        return 404 if "no model named" in text or "has no version" in text or "has no alias" in text else 409
    if isinstance(e, ResourceError):
        return 503
    return 400


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(RaydlError)
    async def raydl_error(request: Request, e: RaydlError):
        status = _status(e)
        body = {"detail": str(e)}
        if isinstance(e, Problems):
            body = {"detail": "invalid job spec", "problems": e.problems}
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, e: RequestValidationError):
        problems = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        return JSONResponse({"detail": "invalid request", "problems": problems}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):
        error_id = uuid.uuid4().hex[:12]
        log.exception("error %s on %s %s", error_id, request.method, request.url.path)
        return JSONResponse({"detail": f"internal error; quote id {error_id} to the platform team",
                             "error_id": error_id}, status_code=500)


# ---- the app -----------------------------------------------------------------------------------


def create_app(config: GatewayConfig, runner: JobRunner | None = None, *, migrate: bool = True) -> FastAPI:
    from raydl.gateway import migrations, web

    if migrate:
        migrations.upgrade(config.database_url)
    gw = Gateway(config, Store(engine_for(config.database_url)), runner or make_runner(config))
    limiter = RateLimiter(config.limits.requests_per_minute, config.limits.burst)
    failures = FailedAuth()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        counts = await run_in_threadpool(gw.reconcile)
        log.info("reconciled active jobs from the cluster: %s", counts or "none")
        loop = asyncio.create_task(_refresh_loop(gw, config.refresh_s))
        yield
        loop.cancel()
        gw.store.engine.dispose()

    app = FastAPI(title="raydl gateway", version="1", lifespan=lifespan,
                  description="Submit and follow raydl jobs for your team. Authenticate with `Authorization: Bearer <token>`.")
    app.state.gateway = gw
    app.add_middleware(BodyLimit, max_bytes=config.limits.max_body_bytes)
    _install_errors(app)

    def caller(request: Request) -> tokens.Caller:
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if not header:
            presented = request.cookies.get(COOKIE, "")
        elif scheme.lower() != "bearer":
            raise AuthError("use Authorization: Bearer <token>")
        if not presented:
            raise AuthError("no token: send Authorization: Bearer <token> (`raydl gateway token create` makes one)")
        ip = request.client.host if request.client else "?"
        if failures.blocked(ip):  # guessing tokens costs a hash each: a client that keeps failing waits first
            raise _RateLimited(failures.blocked(ip))
        try:
            who = tokens.verify(gw.store, presented.strip(), gw.verified)
        except AuthError:
            failures.failed(ip)
            raise
        wait = limiter.take(who.token_id)
        if wait:
            raise _RateLimited(wait)
        return who

    @app.exception_handler(_RateLimited)
    async def rate_limited(request: Request, e: _RateLimited):
        return JSONResponse({"detail": f"rate limit: at most {config.limits.requests_per_minute:g} requests a minute "
                                       f"per token (burst {config.limits.burst}); retry in {e.wait:.1f} s"},
                            status_code=429, headers={"Retry-After": str(max(1, round(e.wait)))})

    app.state.caller = caller

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"model": Error}})
    def readyz():
        from sqlalchemy import text

        try:
            with gw.store.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as e:  # noqa: BLE001
            return JSONResponse({"detail": f"database: {type(e).__name__}"}, status_code=503)
        problem = gw.runner.problem()
        if problem:
            return JSONResponse({"detail": f"cluster: {problem}"}, status_code=503)
        return {"status": "ready"}

    submit_body = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": SubmitIn.model_json_schema()},
        "application/yaml": {"schema": {"type": "string", "description": "the spec as YAML; ?kind= names the kind"}}}}}

    @app.post("/v1/jobs", status_code=201, response_model=JobOut, tags=["jobs"], openapi_extra=submit_body,
              responses={**ERRORS, 200: {"model": JobOut, "description": "a retry: the job this Idempotency-Key made"},
                         413: {"model": Error}, 422: {"model": Error}, 503: {"model": Error}})
    async def submit(request: Request, who: tokens.Caller = Depends(caller),
                     kind: str = Query("train", max_length=32),
                     idempotency_key: str | None = Header(None, min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
                                                          description="a retry with the same key returns the first job (200)")) -> Any:
        raw = await request.body()
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        body = _parse_submission(raw, ctype, kind)
        spec = body.spec
        if isinstance(spec, str):
            spec = _yaml_mapping(spec)
        job, new = await run_in_threadpool(gw.submit, who, body.kind, spec, idempotency_key)
        return job if new else JSONResponse(jsonable_encoder(JobOut.model_validate(job)), status_code=200)

    @app.get("/v1/jobs", response_model=JobPage, tags=["jobs"], responses=ERRORS)
    def list_jobs(who: tokens.Caller = Depends(caller), status: Literal[STATUSES] | None = None,  # type: ignore[valid-type]
                  limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=10**9)) -> Any:
        rows, total = gw.list(who, status, limit, offset)
        return {"jobs": rows, "total": total, "limit": limit, "offset": offset}

    @app.get("/v1/jobs/{job_id}", response_model=JobOut, tags=["jobs"], responses=ERRORS)
    def get_job(job_id: str, who: tokens.Caller = Depends(caller)) -> Any:
        return gw.get(who, job_id)

    @app.get("/v1/jobs/{job_id}/logs", response_model=LogsOut, tags=["jobs"], responses=ERRORS)
    def job_logs(job_id: str, who: tokens.Caller = Depends(caller), offset: int = Query(0, ge=0, le=10**12),
                 limit: int = Query(65536, ge=1, le=MAX_LOG_CHUNK)) -> Any:
        text = gw.logs(who, job_id)
        chunk = text[offset:offset + limit]
        status = gw.get(who, job_id)["status"]
        end = offset + len(chunk)
        return {"job_id": job_id, "text": chunk, "offset": offset, "next_offset": end,
                "complete": end >= len(text) and status not in ("SUBMITTING", "PENDING", "RUNNING")}

    @app.post("/v1/jobs/{job_id}/cancel", response_model=JobOut, tags=["jobs"], responses=ERRORS)
    def cancel_job(job_id: str, who: tokens.Caller = Depends(caller)) -> Any:
        return gw.cancel(who, job_id)

    @app.get("/v1/models", tags=["registry"], responses=REGISTRY_ERRORS)
    def list_models(who: tokens.Caller = Depends(caller)) -> list[dict[str, Any]]:
        with _registry(gw, who) as reg:
            return reg.list()

    @app.get("/v1/models/{name}", tags=["registry"], responses=REGISTRY_ERRORS)
    def model_history(name: str, who: tokens.Caller = Depends(caller)) -> dict[str, Any]:
        with _registry(gw, who) as reg:
            out = reg.history(name)
            out["lineage"] = {v["version"]: reg.show(f"{name}@{v['version']}").get("lineage") for v in out["versions"]}
            return out

    @app.post("/v1/models/{name}/promote", tags=["registry"], responses=REGISTRY_ERRORS)
    def promote(name: str, body: PromoteIn, who: tokens.Caller = Depends(caller)) -> dict[str, Any]:
        _may_promote(who)
        with _registry(gw, who) as reg:
            return reg.promote(name, body.version, body.alias)

    @app.post("/v1/models/{name}/rollback", tags=["registry"], responses=REGISTRY_ERRORS)
    def rollback(name: str, body: RollbackIn, who: tokens.Caller = Depends(caller)) -> dict[str, Any]:
        _may_promote(who)
        with _registry(gw, who) as reg:
            return reg.rollback(name, body.alias)

    @app.get("/v1/drift", tags=["drift"], responses=ERRORS)
    def list_drift(who: tokens.Caller = Depends(caller)) -> list[dict[str, Any]]:
        folder = config.drift_dir(who.team)
        files = sorted(folder.glob("*.html")) + sorted(folder.glob("*.json")) if folder.is_dir() else []
        return [{"name": p.name, "bytes": p.stat().st_size, "url": f"/v1/drift/{p.name}"} for p in files]

    @app.get("/v1/drift/{name}", tags=["drift"], responses=ERRORS, response_class=FileResponse)
    def get_drift(name: str, who: tokens.Caller = Depends(caller)):
        folder = config.drift_dir(who.team)
        path = folder / name
        if "/" in name or name.startswith(".") or path.suffix not in (".html", ".json") or not path.is_file():
            raise NotFoundError(f"drift report {name!r} not found")
        return FileResponse(path, media_type="text/html" if path.suffix == ".html" else "application/json")

    @app.get("/v1/admin/usage", tags=["admin"], responses={**ERRORS, 403: {"model": Error}})
    def usage(who: tokens.Caller = Depends(caller)) -> list[dict[str, Any]]:
        if not who.admin:
            raise Forbidden("admin only: each team's usage against its quota")
        return gw.usage()

    @app.get("/", include_in_schema=False)
    def root():
        return RedirectResponse("/ui")

    web.install(app, gw)
    return app


async def _refresh_loop(gw: Gateway, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            await run_in_threadpool(gw.refresh_active)
        except Exception:  # noqa: BLE001 (logged; the loop goes on)
            log.exception("background refresh failed")


class _RateLimited(Exception):
    def __init__(self, wait: float) -> None:
        self.wait = wait


def _yaml_mapping(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise Problems([f"spec: malformed YAML{where}: {getattr(e, 'problem', None) or e}"]) from None


def _parse_submission(raw: bytes, ctype: str, kind: str) -> SubmitIn:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Problems(["body: not UTF-8 text"]) from None
    if ctype in ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"):
        return SubmitIn(kind=kind, spec=text)
    if ctype != "application/json":
        raise Problems([f"content-type: {ctype!r}; send application/json ({{kind, spec}}) or application/yaml (the spec)"])
    try:
        return SubmitIn.model_validate(json.loads(text))
    except json.JSONDecodeError as e:
        raise Problems([f"body: not JSON ({e.msg} at line {e.lineno}, column {e.colno})"]) from None
    except ValidationError as e:
        raise Problems([f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors()]) from None


def _registry(gw: Gateway, who: tokens.Caller):
    from raydl.model_registry.api import ModelRegistry

    if who.admin:
        raise Forbidden("the registry is per team: use a team's token")
    folder = gw.config.registry_dir(who.team)
    folder.mkdir(parents=True, exist_ok=True)
    return ModelRegistry(folder)


def _may_promote(who: tokens.Caller) -> None:
    if not who.may_promote():
        raise Forbidden(f"role {who.role!r} may not promote or roll back; a maintainer token can")
