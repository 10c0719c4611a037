"""The FastAPI application: routes that call `runner.api.views` and `runner.api.dashboard`.

`create_app(settings)` returns the ASGI app to serve: the FastAPI app inside `Guard` (Host
allowlist, size limits, security headers), so no request reaches a route without those checks.
Every route but `/livez`, the login form and the two static files needs a key; the interactive
docs pages are off (they load their script from a CDN), the OpenAPI document is at
`/openapi.json` behind the key like everything else.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection
from starlette.types import Scope

from runner.api import dashboard, datacheck, views
from runner.api.auth import COOKIE_NAME, Gate, Verdict, presented_key
from runner.api.errors import ApiError
from runner.api.guard import Guard
from runner.api.settings import ApiSettings
from runner.api.submit import JOB_NAME, JobIndex, submit_job
from runner.api.views import RUN_ID

__all__ = ["create_app"]

STATIC = Path(__file__).with_name("static")
_STATIC_TYPES = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}

JobName = Annotated[str, PathParam(pattern=JOB_NAME, description="the job name (its `name`, else its file stem)")]
RunId = Annotated[str | None, Query(pattern=RUN_ID, description="a run id; default: the job's newest run")]

# Module level: the dependency's annotations are resolved in this module's globals.
_bearer = HTTPBearer(auto_error=False, description="the API key as a bearer token")
_header_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="the API key")
Bearer = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
HeaderKey = Annotated[str | None, Security(_header_key)]

_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"description": "no key, or a wrong one: send `Authorization: Bearer KEY` or `X-API-Key: KEY`"},
    429: {"description": "too many wrong keys from this address: wait for Retry-After seconds"},
}
_ERRORS = {"description": "what is wrong, where (file, line, column, key path) and how to fix it"}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("runner")
    except PackageNotFoundError:
        return "0"


def _safe_next(value: str | None) -> str:
    """Only a path on this server: never `//host` or a full URL (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


# The request body of POST /datasets/validate, for the OpenAPI document.
_VALIDATE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["path"],
                    "additionalProperties": False,
                    "properties": {
                        "path": {
                            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                            "description": "file(s) on the server, relative to the first data root",
                        },
                        "format": {"type": "string", "enum": list(datacheck.DATA_FORMATS), "default": "auto"},
                        "fields": {"type": "object", "additionalProperties": {"type": "string"}},
                        "image_root": {
                            "type": "string",
                            "description": "the folder image paths of image-text "
                            "records are relative to, under a data root (default: the file's folder)",
                        },
                    },
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "additionalProperties": False,
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "format": {"type": "string", "enum": list(datacheck.DATA_FORMATS), "default": "auto"},
                        "fields": {"type": "string", "description": "a JSON object: canonical field -> your field"},
                        "image_root": {
                            "type": "string",
                            "description": "the folder image paths are relative to, "
                            "under a data root (default: the first data root)",
                        },
                    },
                }
            },
        },
    }
}


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: a lone surrogate echoed from a request or a data
    record (valid in a Python str, not in UTF-8) cannot turn an answer into a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


def _refused(verdict: Verdict) -> HTTPException:
    if verdict.status == 429:
        return HTTPException(
            429,
            f"too many wrong keys from this address; try again in {verdict.retry_after:.0f} s",
            headers={"Retry-After": str(max(1, round(verdict.retry_after)))},
        )
    return HTTPException(
        401,
        "an API key is needed: send Authorization: Bearer KEY or X-API-Key: KEY",
        headers={"WWW-Authenticate": 'Bearer realm="runner"'},
    )


def create_app(settings: ApiSettings) -> Guard:
    app = FastAPI(
        default_response_class=AsciiJSONResponse,
        title="runner API",
        version=_version(),
        description=(
            "Jobs, runs, metrics and data checks of one `runner watch` jobs folder. Every endpoint but "
            "`/livez` needs `Authorization: Bearer KEY` or `X-API-Key: KEY`. Non-finite numbers in "
            'metrics and statuses are given as the strings "NaN", "Infinity" and "-Infinity".'
        ),
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    limits = settings.limits
    gate = Gate(
        settings.keys,
        failures_per_minute=limits.auth_failures_per_minute,
        session_ttl=limits.session_ttl,
        max_sessions=limits.max_sessions,
    )
    job_index = JobIndex(settings.jobs_dir)

    async def require_key(request: Request, credentials: Bearer = None, api_key: HeaderKey = None) -> None:
        """A key in a header; for reads, the dashboard's session cookie also does."""
        presented = credentials.credentials if credentials is not None else api_key
        if (
            presented is None
            and request.method in ("GET", "HEAD")
            and gate.sessions.valid(request.cookies.get(COOKIE_NAME))
        ):
            return
        verdict = gate.check_key(presented, _client(request))
        if not verdict.ok:
            raise _refused(verdict)

    keyed = [Depends(require_key)]

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return AsciiJSONResponse(exc.body(), status_code=exc.status, headers=exc.headers or None)

    _job_routes(app, settings, job_index, keyed)
    _dataset_routes(app, settings, keyed)
    _dashboard_routes(app, settings, gate)
    _session_routes(app, settings, gate)

    def holds_key(scope: Scope) -> bool:
        """For the guard's share of request slots: a valid key or session (no throttle accounting)."""
        connection = HTTPConnection(scope)
        return settings.keys.check(presented_key(connection.headers)) or gate.sessions.valid(
            connection.cookies.get(COOKIE_NAME)
        )

    return Guard(app, settings, holds_key)


def _job_routes(app: FastAPI, settings: ApiSettings, job_index: JobIndex, keyed: list[Any]) -> None:
    # ---------------------------------------------------------------- health

    @app.get("/livez", tags=["health"], summary="the process answers (no key needed, tells nothing)")
    def livez() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        dependencies=keyed,
        responses={**_UNAUTHORIZED, 503: {"description": "not ready"}},
        summary="a daemon holds the jobs folder's lock and the queue is readable",
    )
    def readyz() -> JSONResponse:
        ready, body = views.readiness(settings)
        return AsciiJSONResponse(body, status_code=200 if ready else 503)

    # ------------------------------------------------------------------ jobs

    @app.get(
        "/jobs",
        tags=["jobs"],
        dependencies=keyed,
        responses=_UNAUTHORIZED,
        summary="every job's newest run (and any older run still pending): state, progress, loss, ETA",
    )
    def list_jobs() -> dict[str, Any]:
        return {"jobs": views.jobs_table(settings)}

    @app.post(
        "/jobs",
        tags=["jobs"],
        dependencies=keyed,
        status_code=201,
        summary="submit a job file (TOML); validated like `runner validate`, written into the jobs folder",
        responses={
            **_UNAUTHORIZED,
            200: {"description": "the same file is already there: nothing changed"},
            403: {"description": "the job names paths outside the allowed data roots"},
            409: {"description": "the name clashes with another file of the jobs folder"},
            413: {"description": "the body is over the size limit"},
            422: _ERRORS,
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/toml": {"schema": {"type": "string"}},
                    "text/plain": {"schema": {"type": "string"}},
                },
            }
        },
    )
    async def submit(
        request: Request, name: Annotated[str | None, Query(description="the job name, when the file sets none")] = None
    ) -> JSONResponse:
        arrived = request.scope["state"]["arrival"]
        data = await request.body()
        status, body = await run_in_threadpool(submit_job, settings, job_index, data, name, arrived)
        return AsciiJSONResponse(body, status_code=status)

    @app.get(
        "/jobs/{name}",
        tags=["jobs"],
        dependencies=keyed,
        responses={**_UNAUTHORIZED, 404: {"description": "no such job"}},
        summary="a run's status: state, reason, attempt, progress, model, adapter / LoRA settings, errors",
    )
    def get_job(name: JobName, run: RunId = None) -> dict[str, Any]:
        return views.job_detail(settings, name, run)

    @app.get(
        "/jobs/{name}/metrics",
        tags=["jobs"],
        dependencies=keyed,
        responses={**_UNAUTHORIZED, 404: {"description": "no such job"}},
        summary="the run's metrics.jsonl records; with since=STEP only those logged after that step",
    )
    def get_metrics(
        name: JobName,
        run: RunId = None,
        since: Annotated[int | None, Query(ge=0, description="only records with step > since")] = None,
    ) -> dict[str, Any]:
        return views.job_metrics(settings, name, since, run)

    @app.post(
        "/jobs/{name}/cancel",
        tags=["jobs"],
        dependencies=keyed,
        status_code=202,
        responses={
            **_UNAUTHORIZED,
            404: {"description": "no such job"},
            409: {"description": "the job has no queued, running or interrupted run"},
        },
        summary="cancel the job's pending runs, as `runner cancel` does",
    )
    def cancel(name: JobName) -> JSONResponse:
        status, body = views.cancel_job(settings, name)
        return AsciiJSONResponse(body, status_code=status)


def _dataset_routes(app: FastAPI, settings: ApiSettings, keyed: list[Any]) -> None:
    # -------------------------------------------------------------- datasets

    @app.post(
        "/datasets/validate",
        tags=["data"],
        dependencies=keyed,
        summary="check a data file as a job would: format, record count, every bad record with its location",
        responses={
            **_UNAUTHORIZED,
            403: {"description": "the path is outside the allowed data roots"},
            404: {"description": "no such file"},
            413: {"description": "the upload is too large"},
            415: {"description": "neither JSON nor multipart/form-data"},
            422: _ERRORS,
        },
        openapi_extra=_VALIDATE_BODY,
    )
    async def validate_dataset(request: Request) -> dict[str, Any]:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            asked = datacheck.parse_json_request(await request.body())
            sources = await run_in_threadpool(datacheck.path_sources, settings, asked.paths)
            return await run_in_threadpool(datacheck.check, settings, sources, asked)
        if kind == "multipart/form-data":
            return await _validate_upload(request)
        raise ApiError(
            415,
            'send application/json {"path": ..., "format": ...} or multipart/form-data with a '
            "'file' part (and optionally 'format', 'fields' and 'image_root')",
        )

    async def _validate_upload(request: Request) -> dict[str, Any]:
        """The multipart parser streams the file part to a spooled temporary file (on disk past 1 MiB);
        the check reads it from there, record by record."""
        try:
            form = await request.form(max_files=1, max_fields=8)
        except HTTPException as exc:  # a malformed multipart body: the client's mistake, say which
            raise ApiError(422, f"cannot read the multipart body: {exc.detail}") from None
        try:
            unknown = sorted(set(form.keys()) - {"file", "format", "fields", "image_root"})
            if unknown:
                raise ApiError(
                    422,
                    f"unknown part(s) {', '.join(map(repr, unknown))[:300]}; expected file, format, fields, image_root",
                )
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise ApiError(422, "multipart/form-data needs a file part named 'file'")
            texts = [form.get(part) for part in ("format", "fields", "image_root")]
            if not all(t is None or isinstance(t, str) for t in texts):
                raise ApiError(422, "'format', 'fields' and 'image_root' are text parts")
            data_format, raw_fields, image_root = (t if isinstance(t, str) else None for t in texts)
            asked = datacheck.ValidateRequest(
                [], str(data_format or "auto"), datacheck.parse_form_fields(raw_fields), image_root or None
            )
            name = datacheck.upload_name(upload.filename)
            source = datacheck.Source(name, lambda: contextlib.nullcontext(upload.file), Path(name).suffix)
            return await run_in_threadpool(datacheck.check, settings, [source], asked)
        finally:
            await form.close()

    @app.get("/openapi.json", include_in_schema=False, dependencies=keyed)
    def openapi() -> dict[str, Any]:
        return app.openapi()


def _dashboard_routes(app: FastAPI, settings: ApiSettings, gate: Gate) -> None:
    # ------------------------------------------------------------- dashboard

    def browser_ok(request: Request) -> bool:
        if gate.sessions.valid(request.cookies.get(COOKIE_NAME)):
            return True
        key = presented_key(request.headers)
        return key is not None and gate.check_key(key, _client(request)).ok

    def login_needed(request: Request) -> HTMLResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return HTMLResponse(dashboard.login_page(_safe_next(target)), status_code=401)

    def html(render: Callable[[], str]) -> Response:
        try:
            return HTMLResponse(render())
        except ApiError as exc:  # an unknown job or run: a page that says so, not a JSON body
            return HTMLResponse(dashboard.error_page(exc.status, exc.detail), status_code=exc.status)

    @app.get("/", include_in_schema=False)
    def index(request: Request) -> Response:
        if not browser_ok(request):
            return login_needed(request)
        return HTMLResponse(dashboard.index_page(settings))

    @app.get("/ui/jobs-table", include_in_schema=False)
    def jobs_fragment(request: Request) -> Response:
        if not browser_ok(request):
            return Response("log in again", status_code=401, media_type="text/plain")
        return HTMLResponse(dashboard.jobs_table(settings))

    @app.get("/ui/jobs/{name}", include_in_schema=False)
    def job_page(request: Request, name: JobName, run: RunId = None) -> Response:
        if not browser_ok(request):
            return login_needed(request)
        return html(lambda: dashboard.job_page(settings, name, run))

    @app.get("/ui/jobs/{name}/live", include_in_schema=False)
    def job_fragment(request: Request, name: JobName, run: RunId = None) -> Response:
        if not browser_ok(request):
            return Response("log in again", status_code=401, media_type="text/plain")
        return html(lambda: dashboard.job_live(settings, name, run))

    @app.get("/static/{filename}", include_in_schema=False)
    def static(filename: str) -> Response:
        media = _STATIC_TYPES.get(filename)
        if media is None:
            raise HTTPException(404, "no such file")
        return Response((STATIC / filename).read_bytes(), media_type=media, headers={"cache-control": "no-cache"})


def _session_routes(app: FastAPI, settings: ApiSettings, gate: Gate) -> None:
    limits = settings.limits

    def over_tls(request: Request) -> bool:
        """Whether the browser reached us over TLS: directly, or through a proxy trusted to say so."""
        if request.url.scheme == "https":
            return True
        forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        return settings.behind_tls_proxy and forwarded == "https"

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        """A key (header, or the login form's field) for a session cookie of the dashboard: a new
        random token per login, ended by /logout, by its expiry or by a restart."""
        key = presented_key(request.headers)
        from_form = key is None
        next_path = "/"
        if from_form:
            form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=8)
            key = (form.get("key") or [""])[0]
            next_path = _safe_next((form.get("next") or ["/"])[0])
        verdict = gate.check_key(key or None, _client(request))
        if not verdict.ok:
            message = (
                f"Too many wrong keys from this address; try again in {verdict.retry_after:.0f} s."
                if verdict.status == 429
                else "That key was not accepted."
            )
            headers = {"Retry-After": str(max(1, round(verdict.retry_after)))} if verdict.status == 429 else None
            if from_form:
                return HTMLResponse(
                    dashboard.login_page(next_path, message), status_code=verdict.status, headers=headers
                )
            return AsciiJSONResponse({"detail": message}, status_code=verdict.status, headers=headers)
        response: Response = (
            RedirectResponse(next_path, status_code=303)
            if from_form
            else AsciiJSONResponse({"ok": True, "expires_in": int(limits.session_ttl)})
        )
        response.set_cookie(
            COOKIE_NAME,
            gate.sessions.open(),
            max_age=int(limits.session_ttl),
            httponly=True,
            samesite="strict",
            path="/",
            secure=over_tls(request),
        )
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        gate.sessions.close(request.cookies.get(COOKIE_NAME))
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict", secure=over_tls(request))
        return response
