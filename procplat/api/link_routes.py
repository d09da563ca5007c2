"""Signed links: made under ``.../tasks/{task}/result/link`` and ``.../files/{path}/link``
(the caller's access checked as for a download), opened under ``/links/{token}/{name}``
without a token, through the same file response as the authenticated routes."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from procplat.api.file_response import file_response
from procplat.api.http import caller_async, json_response, read_json_object
from procplat.api.views import link_json
from procplat.core.auth import Principal
from procplat.core.links import LINK_PREFIX, Links

__all__ = ["ROUTES", "ready_result_link"]


def _links(request: Request) -> Links:
    return request.app.state.links


async def _expires_in(request: Request) -> Any:
    """``expiresIn`` of the body; a request without a body takes the default."""
    if request.headers.get("content-length") in (None, "0") \
            and "transfer-encoding" not in request.headers:
        return None
    return (await read_json_object(request)).get("expiresIn")


def ready_result_link(request: Request, who: Principal | None, task_id: str) -> dict[str, Any]:
    """A link to the task's artifact for its status (``?link=true``), of the default life."""
    p = request.path_params
    link = _links(request).result_link(who, p["org"], p["ds"], task_id, None)
    return link_json(link, str(request.base_url))


async def result_link(request: Request) -> Response:
    expires_in = await _expires_in(request)
    who = await caller_async(request)
    p = request.path_params
    link = await run_in_threadpool(
        _links(request).result_link, who, p["org"], p["ds"], p["task"], expires_in
    )
    return json_response(link_json(link, str(request.base_url)), 201)


async def file_link(request: Request) -> Response:
    expires_in = await _expires_in(request)
    who = await caller_async(request)
    p = request.path_params
    link = await run_in_threadpool(
        _links(request).file_link, who, p["org"], p["ds"], p["path"], expires_in
    )
    return json_response(link_json(link, str(request.base_url)), 201)


async def open_link(request: Request) -> Response:
    target = await run_in_threadpool(_links(request).open, request.path_params["token"])
    return file_response(request, target.source, etag=target.etag, filename=target.filename,
                         attachment=target.attachment)


ROUTES = [
    Route("/orgs/{org}/ds/{ds}/tasks/{task}/result/link", result_link, methods=["POST"]),
    Route("/orgs/{org}/ds/{ds}/files/{path:path}/link", file_link, methods=["POST"]),
    Route(LINK_PREFIX + "/{token}/{name}", open_link, methods=["GET", "HEAD"]),
]
