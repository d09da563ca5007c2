"""Routes under ``/sys``: health, features, the admin task list, and ``/openapi.json``."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from procplat.api.http import caller, json_response, query
from procplat.api.openapi import openapi_document
from procplat.api.views import features_json, page_json, task_json


async def health(request: Request) -> Response:
    """Whether the index and the scheduler answer, and which process supervises. A replica
    with the ``api`` role has no Dask client: its ``dask`` is null and does not count."""
    state = request.app.state
    supervisor = state.supervisor
    try:
        await run_in_threadpool(state.db.ping)
        index_ok = True
    except Exception:
        index_ok = False
    dask_ok = await supervisor.engine.ping() if supervisor.uses_dask else None
    holder = None
    if index_ok:
        try:
            holder = await supervisor.holder()
        except Exception:  # the index went away between the two questions
            index_ok = False
    ok = index_ok and dask_ok is not False
    body = {
        "status": "ok" if ok else "unavailable",
        "index": index_ok,
        "dask": dask_ok,
        "dashboardLink": supervisor.dashboard_link,
        "role": supervisor.role,
        "process": supervisor.name,
        "supervisor": {"process": holder, "isThisProcess": supervisor.leading},
    }
    return json_response(body, 200 if ok else 503)


def features(request: Request) -> Response:
    return json_response(features_json(request.app.state.tasks.features()))


def admin_tasks(request: Request) -> Response:
    page = request.app.state.tasks.list_all(
        caller(request), query(request, "toolId"), query(request, "state"),
        query(request, "userId"), query(request, "skip"), query(request, "take"),
    )
    return json_response(page_json(page, task_json))


def openapi(request: Request) -> Response:
    return json_response(openapi_document(request.app.state.tasks.registry))


HEALTH = Route("/sys/health", health, methods=["GET"])
ROUTES = [
    HEALTH,
    Route("/sys/features", features, methods=["GET"]),
    Route("/sys/tasks", admin_tasks, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]
