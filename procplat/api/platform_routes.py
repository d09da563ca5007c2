"""Routes for users, orgs, members, datasets, files, entries and the direct ZIP download."""

from __future__ import annotations

from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from procplat.api.file_response import file_response
from procplat.api.http import (
    caller,
    caller_async,
    json_response,
    query,
    query_bool,
    read_json_object,
)
from procplat.api.views import (
    created_org_json,
    dataset_json,
    entry_json,
    member_json,
    org_json,
    page_json,
)
from procplat.core import auth
from procplat.core.datasets import Datasets, user_path
from procplat.errors import BadRequest, NotFound, PayloadTooLarge
from tools.archive.zip_policy import archive_members
from tools.archive.zip_stream import stream_zip
from tools.contract import InvalidParams


def _datasets(request: Request) -> Datasets:
    return request.app.state.datasets


def _slugs(request: Request) -> tuple[str, str]:
    return request.path_params["org"], request.path_params["ds"]


async def create_user(request: Request) -> Response:
    body = await read_json_object(request)
    who = await caller_async(request)
    username, token = await run_in_threadpool(
        auth.create_user, request.app.state.db, who, body.get("username"), body.get("admin", False)
    )
    return json_response({"username": username, "token": token}, 201)


async def create_org(request: Request) -> Response:
    body = await read_json_object(request)
    who = await caller_async(request)
    org = await run_in_threadpool(_datasets(request).create_org, who, body.get("slug"), body.get("name"))
    return json_response(created_org_json(org), 201)


def list_orgs(request: Request) -> Response:
    page = _datasets(request).list_orgs(caller(request), query(request, "skip"), query(request, "take"))
    return json_response(page_json(page, org_json))


def list_datasets(request: Request) -> Response:
    page = _datasets(request).list_datasets(
        caller(request), request.path_params["org"], query(request, "skip"), query(request, "take")
    )
    return json_response(page_json(page, dataset_json))


async def add_member(request: Request) -> Response:
    body = await read_json_object(request)
    who = await caller_async(request)
    member = await run_in_threadpool(
        _datasets(request).add_member, who, request.path_params["org"], body.get("username")
    )
    return json_response(member_json(member), 201)


async def create_dataset(request: Request) -> Response:
    body = await read_json_object(request)
    who = await caller_async(request)
    ref = await run_in_threadpool(
        _datasets(request).create_dataset, who, request.path_params["org"], body.get("slug"),
        body.get("visibility"),
    )
    return json_response(dataset_json(ref), 201)


def get_dataset(request: Request) -> Response:
    ref = _datasets(request).open(caller(request), *_slugs(request))
    return json_response(dataset_json(ref))


async def put_file(request: Request) -> Response:
    datasets = _datasets(request)
    who = await caller_async(request)
    ref = await run_in_threadpool(datasets.open, who, *_slugs(request), "Write")
    limit = request.app.state.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"upload exceeds the limit of {limit} bytes")
    entry, created = await datasets.upload(ref, request.path_params["path"], request.stream(), limit)
    return json_response(entry_json(entry), 201 if created else 200)


def get_file(request: Request) -> Response:
    datasets = _datasets(request)
    ref = datasets.open(caller(request), *_slugs(request))
    opened = datasets.open_file(ref, request.path_params["path"])
    return file_response(request, opened.file, etag=opened.etag, filename=opened.name)


async def delete_file(request: Request) -> Response:
    datasets = _datasets(request)
    who = await caller_async(request)
    ref = await run_in_threadpool(datasets.open, who, *_slugs(request), "Write")
    await run_in_threadpool(datasets.delete, ref, request.path_params["path"])
    return Response(status_code=204)


def list_entries(request: Request) -> Response:
    datasets = _datasets(request)
    ref = datasets.open(caller(request), *_slugs(request))
    entries = datasets.entries(
        ref, query(request, "path"), query(request, "type"), query_bool(request, "recursive")
    )
    return json_response([entry_json(entry) for entry in entries])


def get_entry(request: Request) -> Response:
    datasets = _datasets(request)
    ref = datasets.open(caller(request), *_slugs(request))
    rel = user_path(request.path_params["path"])
    found = datasets.entry(ref, rel)
    if found is None:
        raise NotFound(f"entry '{rel}' not found")
    return json_response(entry_json(found))


def download_zip(request: Request) -> Response:
    datasets = _datasets(request)
    ref = datasets.open(caller(request), *_slugs(request))
    paths = request.query_params.getlist("path")
    if not paths:
        raise BadRequest("name at least one ?path=; whole datasets go through the bulk-download tool")
    try:
        members = archive_members(ref.root, paths)
    except InvalidParams as exc:
        raise BadRequest(str(exc)) from None
    threshold = request.app.state.settings.bulk_download_async_threshold_bytes
    total = sum(m.size for m in members)
    if total > threshold:
        raise PayloadTooLarge(
            f"selection of {total} bytes is above {threshold} bytes; use the bulk-download tool"
        )
    return StreamingResponse(
        iterate_in_threadpool(stream_zip(members)),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{ref.slug}.zip"'},
    )


ROUTES = [
    Route("/users", create_user, methods=["POST"]),
    Route("/orgs", create_org, methods=["POST"]),
    Route("/orgs", list_orgs, methods=["GET"]),
    Route("/orgs/{org}/members", add_member, methods=["POST"]),
    Route("/orgs/{org}/ds", create_dataset, methods=["POST"]),
    Route("/orgs/{org}/ds", list_datasets, methods=["GET"]),
    Route("/orgs/{org}/ds/{ds}", get_dataset, methods=["GET"]),
    Route("/orgs/{org}/ds/{ds}/files/{path:path}", put_file, methods=["PUT"]),
    Route("/orgs/{org}/ds/{ds}/files/{path:path}", get_file, methods=["GET", "HEAD"]),
    Route("/orgs/{org}/ds/{ds}/files/{path:path}", delete_file, methods=["DELETE"]),
    Route("/orgs/{org}/ds/{ds}/entries", list_entries, methods=["GET"]),
    Route("/orgs/{org}/ds/{ds}/entries/{path:path}", get_entry, methods=["GET"]),
    Route("/orgs/{org}/ds/{ds}/download", download_zip, methods=["GET"]),
]
