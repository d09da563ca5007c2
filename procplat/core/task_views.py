"""How tasks look from outside: the JSON of a task status and of a list item."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from procplat.core.datasets import iso
from procplat.index.models import Artifact, Task
from procplat.states import TaskState

LOG_TAIL_LINES = 20


def task_urls(org_slug: str, ds_slug: str, task_id: str) -> tuple[str, str]:
    status = f"/orgs/{org_slug}/ds/{ds_slug}/tasks/{task_id}"
    return status, f"{status}/result"


def artifact_json(
    artifact: Artifact | None, result_url: str, now: datetime
) -> dict[str, Any] | None:
    if artifact is None or artifact.expired:
        return None
    return {
        "sizeBytes": artifact.size_bytes,
        "sha256": artifact.sha256,
        "fileName": artifact.file_name,
        "resultUrl": result_url,
        "expiresAt": iso(artifact.expires_at),
        "expired": artifact.expires_at <= now,
    }


def task_json(
    task: Task,
    *,
    org_slug: str,
    ds_slug: str,
    artifact: Artifact | None,
    log_tail: list[str],
    now: datetime,
    dashboard_link: str | None = None,
) -> dict[str, Any]:
    status_url, result_url = task_urls(org_slug, ds_slug, task.id)
    return {
        "taskId": task.id,
        "toolId": task.tool_id,
        "version": task.version,
        "state": task.state,
        "path": task.path,
        "params": task.params,
        "progress": {"percent": task.progress_percent, "phase": task.progress_phase},
        "createdAt": iso(task.created_at),
        "startedAt": iso(task.started_at),
        "finishedAt": iso(task.finished_at),
        "attempts": task.attempts,
        "logCursor": task.log_cursor,
        "logTail": log_tail,
        "artifact": artifact_json(artifact, result_url, now) if task.state == TaskState.SUCCEEDED else None,
        "error": task.error,
        "result": task.result,
        "statusUrl": status_url,
        "orgSlug": org_slug,
        "dsSlug": ds_slug,
        "userId": task.user_id,
        "dashboardLink": dashboard_link,
    }
