"""Routes under ``/orgs/{org}/ds/{ds}/tasks``: tools, submit, list, status, log, result,
cancel, clear."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from procplat.api.file_response import file_response
from procplat.api.http import caller, caller_async, json_response, query, query_bool, read_json
from procplat.api.link_routes import ready_result_link
from procplat.api.views import log_json, submitted_json, task_json, tool_json
from procplat.core.tasks import Tasks

BASE = "/orgs/{org}/ds/{ds}/tasks"


def _tasks(request: Request) -> Tasks:
    return request.app.state.tasks


def _where(request: Request) -> tuple[str, str]:
    return request.path_params["org"], request.path_params["ds"]


def list_tools(request: Request) -> Response:
    tasks = _tasks(request)
    tasks.datasets.open(caller(request), *_where(request))
    return json_response([tool_json(t.spec) for t in tasks.registry.all()])


async def submit(request: Request) -> Response:
    body = await read_json(request)
    who = await caller_async(request)
    submitted = await _tasks(request).submit(who, *_where(request), body)
    if submitted.created:
        return json_response(submitted_json(submitted), 202,
                             headers={"Location": submitted.status_url})
    return json_response(submitted_json(submitted), 200)


def list_tasks(request: Request) -> Response:
    listed = _tasks(request).list(
        caller(request), *_where(request), query(request, "toolId"), query(request, "state"),
        query(request, "skip"), query(request, "take"), query(request, "taskId"),
    )
    return json_response([task_json(task) for task in listed])


def task_status(request: Request) -> Response:
    who = caller(request)
    task = _tasks(request).status(who, *_where(request), request.path_params["task"])
    status = task_json(task)
    if query_bool(request, "link") and task.artifact is not None:  # a ready signed link
        status["artifact"]["link"] = ready_result_link(request, who, task.task_id)
    return json_response(status)


def task_log(request: Request) -> Response:
    return json_response(log_json(_tasks(request).log(
        caller(request), *_where(request), request.path_params["task"], query(request, "since")
    )))


def task_result(request: Request) -> Response:
    artifact, path = _tasks(request).artifact_file(
        caller(request), *_where(request), request.path_params["task"]
    )
    return file_response(
        request, path, etag=artifact.sha256, filename=artifact.file_name, attachment=True
    )


async def cancel_task(request: Request) -> Response:
    who = await caller_async(request)
    return json_response(task_json(
        await _tasks(request).cancel(who, *_where(request), request.path_params["task"])
    ))


async def clear_tasks(request: Request) -> Response:
    who = await caller_async(request)
    cleared = await _tasks(request).clear(who, *_where(request), query(request, "toolId"))
    return json_response({"cleared": cleared})


ROUTES = [
    Route(f"{BASE}/tools", list_tools, methods=["GET"]),
    Route(f"{BASE}/clear", clear_tasks, methods=["POST"]),
    Route(BASE, submit, methods=["POST"]),
    Route(f"{BASE}/", submit, methods=["POST"]),
    Route(BASE, list_tasks, methods=["GET"]),
    Route(f"{BASE}/", list_tasks, methods=["GET"]),
    Route(BASE + "/{task}", task_status, methods=["GET"]),
    Route(BASE + "/{task}", cancel_task, methods=["DELETE"]),
    Route(BASE + "/{task}/log", task_log, methods=["GET"]),
    Route(BASE + "/{task}/result", task_result, methods=["GET", "HEAD"]),
]
