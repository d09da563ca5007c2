"""Routes under ``/sys``: health, features, the admin task list, and ``/openapi.json``."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from procplat.api.http import caller, json_response, query
from procplat.api.openapi import openapi_document


async def health(request: Request) -> Response:
    state = request.app.state
    try:
        await run_in_threadpool(state.db.ping)
        index_ok = True
    except Exception:
        index_ok = False
    dask_ok = await state.supervisor.engine.ping()
    body = {
        "status": "ok" if index_ok and dask_ok else "unavailable",
        "index": index_ok,
        "dask": dask_ok,
        "dashboardLink": state.supervisor.dashboard_link,
    }
    return json_response(body, 200 if index_ok and dask_ok else 503)


def features(request: Request) -> Response:
    return json_response(request.app.state.tasks.features())


def admin_tasks(request: Request) -> Response:
    return json_response(request.app.state.tasks.list_all(
        caller(request), query(request, "toolId"), query(request, "state"),
        query(request, "userId"), query(request, "skip"), query(request, "take"),
    ))


def openapi(request: Request) -> Response:
    return json_response(openapi_document(request.app.state.tasks.registry))


ROUTES = [
    Route("/sys/health", health, methods=["GET"]),
    Route("/sys/features", features, methods=["GET"]),
    Route("/sys/tasks", admin_tasks, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]
