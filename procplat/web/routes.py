"""The console's pages under ``/ui/``: a thin layer over the core services, reached through
:mod:`procplat.web.data` (the same calls, and so the same permission checks and
validation, as the API). Errors of the core are shown as a page; a caller who must sign in
is sent to the sign-in page."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from procplat.api.file_response import file_response
from procplat.core.auth import Principal
from procplat.core.datasets import Datasets
from procplat.core.tasks import Tasks
from procplat.errors import BadRequest, ProcplatError, Unauthorized
from procplat.web import data, forms, session
from procplat.web.thumbnails import thumbnail_png

__all__ = ["console_mount"]

PAGE_SIZE = 25
_UPLOAD_CHUNK = 1024 * 1024
_HERE = Path(__file__).parent
_TEMPLATES = Environment(
    loader=PackageLoader("procplat.web", "templates"),
    autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True,
)
# Pages load only their own scripts, styles and images: an injected tag would not run.
_SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}

Handler = Callable[[Request, Principal | None], Awaitable[Response]]


def _datasets(request: Request) -> Datasets:
    return request.app.state.datasets


def _tasks(request: Request) -> Tasks:
    return request.app.state.tasks


def _render(request: Request, template: str, who: Principal | None, status: int = 200,
            **values: Any) -> HTMLResponse:
    html = _TEMPLATES.get_template(template).render(
        who=who, csrf=session.csrf_token(request), csrf_field=session.CSRF_FIELD,
        dashboard=request.app.state.supervisor.dashboard_link, q=quote, **values,
    )
    return HTMLResponse(html, status_code=status, headers=_SECURITY_HEADERS)


def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A console endpoint: the signed-in person is looked up; an error of the core is shown
    as a page with its status, and a 401 leads to sign-in."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        who = await session.principal(request)
        try:
            return await handler(request, who)
        except Unauthorized:
            if who is None and request.method == "GET":
                target = urlencode({"next": request.url.path})
                return RedirectResponse(f"/ui/signin?{target}", status_code=303)
            raise
        except ProcplatError as exc:
            return _render(request, "error.html", who, status=exc.status, error=exc.message)

    return endpoint


def _slugs(request: Request) -> tuple[str, str]:
    return request.path_params["org"], request.path_params["ds"]


def _int(request: Request, name: str) -> int:
    raw = request.query_params.get(name, "0")
    return int(raw) if raw.isdigit() else 0


def _ds_url(org: str, ds: str) -> str:
    return f"/ui/ds/{quote(org)}/{quote(ds)}"


async def _form(request: Request) -> dict[str, str]:
    """A posted form's text fields, after its CSRF token is checked."""
    form = await request.form(max_files=0, max_fields=100)
    session.check_csrf(request, form.get(session.CSRF_FIELD))
    return {k: v for k, v in form.items() if isinstance(v, str)}


# sign-in ----------------------------------------------------------------------------------
@page
async def signin_page(request: Request, who: Principal | None) -> Response:
    return _render(request, "signin.html", who, next=request.query_params.get("next", "/ui/"))


@page
async def signin(request: Request, who: Principal | None) -> Response:
    form = await _form(request)
    target = form.get("next", "/ui/")
    if not target.startswith("/ui/"):
        target = "/ui/"
    try:
        await session.sign_in(request, form.get("token", ""))
    except Unauthorized as exc:
        return _render(request, "signin.html", None, status=401, error=exc.message, next=target)
    return RedirectResponse(target, status_code=303)


@page
async def signout(request: Request, who: Principal | None) -> Response:
    await _form(request)
    session.sign_out(request)
    return RedirectResponse("/ui/", status_code=303)


# datasets and files -----------------------------------------------------------------------
@page
async def home(request: Request, who: Principal | None) -> Response:
    found = await run_in_threadpool(data.visible_datasets, _datasets(request), who)
    return _render(request, "home.html", who, datasets=found)


@page
async def dataset_page(request: Request, who: Principal | None) -> Response:
    org, ds = _slugs(request)
    folder = request.query_params.get("path", "").strip("/")

    def read() -> tuple[Any, list[data.EntryInfo], list[data.ToolInfo]]:
        ref = data.dataset(_datasets(request), who, org, ds)
        return (data.describe(ref), data.dataset_entries(_datasets(request), ref, folder or None),
                data.tools(_tasks(request)))

    info, entries, tools = await run_in_threadpool(read)
    crumbs = []
    parts = folder.split("/") if folder else []
    for depth in range(1, len(parts) + 1):
        crumbs.append((parts[depth - 1], "/".join(parts[:depth])))
    return _render(request, "dataset.html", who, ds=info, entries=entries, folder=folder,
                   crumbs=crumbs, tools=tools, base=_ds_url(org, ds),
                   message=request.query_params.get("message"))


@page
async def file_page(request: Request, who: Principal | None) -> Response:
    org, ds = _slugs(request)

    def read() -> tuple[data.DatasetInfo, data.EntryInfo]:
        ref = data.dataset(_datasets(request), who, org, ds)
        return data.describe(ref), data.entry(_datasets(request), ref, request.path_params["path"])

    info, entry = await run_in_threadpool(read)
    return _render(request, "file.html", who, ds=info, entry=entry, base=_ds_url(org, ds))


@page
async def file_download(request: Request, who: Principal | None) -> Response:
    org, ds = _slugs(request)

    def opened() -> Any:
        ref = data.dataset(_datasets(request), who, org, ds)
        return _datasets(request).open_file(ref, request.path_params["path"])

    found = await run_in_threadpool(opened)
    return file_response(request, found.file, etag=found.etag, filename=found.name,
                         attachment=True)


async def _upload_chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(_UPLOAD_CHUNK):
        yield chunk


@page
async def upload(request: Request, who: Principal | None) -> Response:
    """A file from the browser: the multipart body is spooled by the form parser (to disk
    past 1 MiB), then streamed into the dataset by the same upload as the API's PUT."""
    org, ds = _slugs(request)
    limit = request.app.state.settings.max_upload_bytes
    form = await request.form(max_files=1, max_fields=10, max_part_size=64 * 1024)
    session.check_csrf(request, form.get(session.CSRF_FIELD))
    file = form.get("file")
    if not isinstance(file, UploadFile) or not file.filename:
        raise BadRequest("choose a file to upload")
    folder = str(form.get("folder", "")).strip("/")
    name = Path(file.filename).name
    target = f"{folder}/{name}" if folder else name
    datasets = _datasets(request)
    ref = await run_in_threadpool(datasets.open, who, org, ds, "Write")
    await datasets.upload(ref, target, _upload_chunks(file), limit)
    back = urlencode({"path": folder, "message": f"uploaded {target}"})
    return RedirectResponse(f"{_ds_url(org, ds)}/?{back}", status_code=303)


@page
async def file_thumbnail(request: Request, who: Principal | None) -> Response:
    org, ds = _slugs(request)

    def render() -> tuple[data.EntryInfo, bytes | None]:
        ref = data.dataset(_datasets(request), who, org, ds)
        entry, candidates = data.entry_raster(_datasets(request), ref, request.path_params["path"])
        return entry, thumbnail_png(candidates)

    entry, png = await run_in_threadpool(render)
    return _png(png, entry.hash)


def _png(png: bytes | None, tag: str | None) -> Response:
    if png is None:
        return Response(status_code=204)
    headers = {"cache-control": "private, max-age=300"}
    if tag:
        headers["etag"] = f'"{tag}"'
    return Response(png, media_type="image/png", headers=headers)


# tools and tasks --------------------------------------------------------------------------
@page
async def tasks_page(request: Request, who: Principal | None) -> Response:
    org, ds = _slugs(request)
    tool_id = request.query_params.get("toolId") or None
    state = request.query_params.get("state") or None
    skip = _int(request, "skip")

    def read() -> tuple[data.DatasetInfo, list[data.TaskInfo], list[data.ToolInfo]]:
        ref = data.dataset(_datasets(request), who, org, ds)
        found = data.tasks_of(_tasks(request), who, org, ds, tool_id, state, skip, PAGE_SIZE + 1)
        return data.describe(ref), found, data.tools(_tasks(request))

    info, found, tools = await run_in_threadpool(read)
    query = {"toolId": tool_id or "", "state": state or ""}
    return _render(request, "tasks.html", who, ds=info, tasks=found[:PAGE_SIZE],
                   tools=tools, states=data.state_names(), tool_id=tool_id, state=state,
                   skip=skip, more=len(found) > PAGE_SIZE, page_size=PAGE_SIZE,
                   query=urlencode(query), base=_ds_url(org, ds))


@page
async def task_page(request: Request, who: Principal | None) -> Response:
    org, ds = _slugs(request)
    task_id = request.path_params["task"]

    def read() -> tuple[data.DatasetInfo, data.TaskInfo, data.LogChunk]:
        ref = data.dataset(_datasets(request), who, org, ds)
        found = data.task(_tasks(request), who, org, ds, task_id)
        return data.describe(ref), found, data.task_log(_tasks(request), who, org, ds, task_id, 0)

    info, task, log = await run_in_threadpool(read)
    return _render(request, "task.html", who, ds=info, task=task, log=log,
                   base=_ds_url(org, ds), message=request.query_params.get("message"))


@page
async def task_live(request: Request, who: Principal | None) -> Response:
    """What the task page polls: state, progress and the log lines since its cursor."""
    org, ds = _slugs(request)
    task_id = request.path_params["task"]
    since = _int(request, "since")

    def read() -> tuple[data.TaskInfo, data.LogChunk]:
        return (data.task(_tasks(request), who, org, ds, task_id),
                data.task_log(_tasks(request), who, org, ds, task_id, since))

    task, log = await run_in_threadpool(read)
    return JSONResponse({
        "state": task.state, "terminal": task.terminal, "percent": task.percent,
        "phase": task.phase, "cursor": log.cursor, "lines": list(log.lines),
        "error": task.error,
    }, headers={"cache-control": "no-store"})


@page
async def task_cancel(request: Request, who: Principal | None) -> Response:
    org, ds = _slugs(request)
    await _form(request)
    task_id = request.path_params["task"]
    await _tasks(request).cancel(who, org, ds, task_id)
    return RedirectResponse(f"{_ds_url(org, ds)}/tasks/{quote(task_id)}?message=cancelled",
                            status_code=303)


@page
async def task_result(request: Request, who: Principal | None) -> Response:
    org, ds = _slugs(request)
    artifact, path = await run_in_threadpool(
        data.artifact_path, _tasks(request), who, org, ds, request.path_params["task"])
    return file_response(request, path, etag=artifact.sha256, filename=artifact.file_name,
                         attachment=True)


@page
async def task_thumbnail(request: Request, who: Principal | None) -> Response:
    org, ds = _slugs(request)

    def render() -> tuple[data.ArtifactInfo, bytes | None]:
        artifact, path = data.artifact_path(_tasks(request), who, org, ds,
                                            request.path_params["task"])
        return artifact, thumbnail_png([path])

    artifact, png = await run_in_threadpool(render)
    return _png(png, artifact.sha256)


async def _run_form(request: Request, who: Principal | None, values: dict[str, str],
                    errors: dict[str, str], error: str | None, status: int = 200) -> Response:
    org, ds = _slugs(request)

    def read() -> tuple[data.DatasetInfo, data.ToolInfo, list[str]]:
        ref = data.dataset(_datasets(request), who, org, ds)
        tool = data.tool(_tasks(request), request.path_params["tool"])
        return data.describe(ref), tool, data.raster_paths(_datasets(request), ref)

    info, tool, rasters = await run_in_threadpool(read)
    fields = forms.fields_of(tool.schema, values, errors)
    return _render(request, "run.html", who, status=status, ds=info, tool=tool, fields=fields,
                   rasters=rasters, error=error, base=_ds_url(org, ds))


@page
async def run_form(request: Request, who: Principal | None) -> Response:
    values = {k: v for k, v in request.query_params.items() if k != "tool"}
    return await _run_form(request, who, values, {}, None)


@page
async def run_submit(request: Request, who: Principal | None) -> Response:
    org, ds = _slugs(request)
    values = await _form(request)
    tool = await run_in_threadpool(data.tool, _tasks(request), request.path_params["tool"])
    params = forms.params_from_form(tool.schema, values)
    body = {"toolId": tool.id, "version": tool.version, "params": params,
            "force": bool(values.get("force"))}
    try:
        submitted = await _tasks(request).submit(who, org, ds, body)
    except BadRequest as exc:
        names = list(tool.schema.get("properties", {}))
        errors, leftover = forms.errors_by_field(exc.message, exc.details, names)
        return await _run_form(request, who, values, errors, leftover, status=400)
    task_id = submitted.task_id
    return RedirectResponse(f"{_ds_url(org, ds)}/tasks/{quote(task_id)}", status_code=303)


# admin ------------------------------------------------------------------------------------
@page
async def admin_page(request: Request, who: Principal | None) -> Response:
    state = request.query_params.get("state") or None
    skip = _int(request, "skip")

    def read() -> tuple[list[data.TaskInfo], int, list[data.UserInfo]]:
        found, total = data.admin_tasks(_tasks(request), who, state, skip, PAGE_SIZE)
        return found, total, data.users(_tasks(request), who)

    found, total, users = await run_in_threadpool(read)
    return _render(request, "admin.html", who, tasks=found, total=total, users=users,
                   states=data.state_names(), state=state, skip=skip, page_size=PAGE_SIZE)


def _redirect_to_slash(_request: Request) -> Response:
    return RedirectResponse("/ui/", status_code=308)


DS = "/ds/{org}/{ds}"
_PAGES: list[BaseRoute] = [
    Route("/", home, methods=["GET"]),
    Route("/signin", signin_page, methods=["GET"]),
    Route("/signin", signin, methods=["POST"]),
    Route("/signout", signout, methods=["POST"]),
    Route("/admin", admin_page, methods=["GET"]),
    Route(DS + "/", dataset_page, methods=["GET"]),
    Route(DS + "/upload", upload, methods=["POST"]),
    Route(DS + "/file/{path:path}", file_page, methods=["GET"]),
    Route(DS + "/raw/{path:path}", file_download, methods=["GET", "HEAD"]),
    Route(DS + "/thumb/{path:path}", file_thumbnail, methods=["GET"]),
    Route(DS + "/tasks", tasks_page, methods=["GET"]),
    Route(DS + "/tasks/{task}", task_page, methods=["GET"]),
    Route(DS + "/tasks/{task}/live", task_live, methods=["GET"]),
    Route(DS + "/tasks/{task}/cancel", task_cancel, methods=["POST"]),
    Route(DS + "/tasks/{task}/result", task_result, methods=["GET", "HEAD"]),
    Route(DS + "/tasks/{task}/thumb", task_thumbnail, methods=["GET"]),
    Route(DS + "/run/{tool}", run_form, methods=["GET"]),
    Route(DS + "/run/{tool}", run_submit, methods=["POST"]),
    Mount("/static", app=StaticFiles(directory=_HERE / "static"), name="console-static"),
]


def console_mount(settings: Any, secret: str) -> list[BaseRoute]:
    """``/ui`` (redirected to ``/ui/``) and the console under it, in its signed session."""
    return [
        Route("/ui", _redirect_to_slash, methods=["GET"]),
        Mount("/ui", routes=_PAGES, middleware=[session.session_middleware(settings, secret)]),
    ]

