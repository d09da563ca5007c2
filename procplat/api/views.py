"""Core's values rendered as the JSON of SPEC §3: camelCase keys, ISO-8601 UTC timestamps
(``2026-12-01T09:30:00Z``), ``null`` for what is not known. The one place that knows the
shape of a response body; the routes call these on what core returns.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from procplat.core.datasets import DatasetRef
from procplat.core.links import Link
from procplat.core.views import (
    ArtifactView,
    BuildView,
    EntryView,
    FeaturesView,
    LogView,
    MemberView,
    OrgView,
    Page,
    SubmittedView,
    TaskView,
)
from procplat.states import TaskState
from tools.contract import ToolSpec

__all__ = [
    "artifact_json",
    "build_json",
    "created_org_json",
    "dataset_json",
    "entry_json",
    "features_json",
    "iso",
    "link_json",
    "log_json",
    "member_json",
    "org_json",
    "page_json",
    "submitted_json",
    "task_json",
    "tool_json",
]

JSON = dict[str, Any]  # a response body (JSON values are of any type)
T = TypeVar("T")


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def page_json(page: Page[T], item_json: Callable[[T], JSON]) -> JSON:
    """A page of a listing: ``{items, total, skip, take}``."""
    return {"items": [item_json(item) for item in page.items], "total": page.total,
            "skip": page.skip, "take": page.take}


# tasks ---------------------------------------------------------------------------------------
def artifact_json(artifact: ArtifactView) -> JSON:
    return {
        "sizeBytes": artifact.size_bytes,
        "sha256": artifact.sha256,
        "fileName": artifact.file_name,
        "resultUrl": artifact.result_url,
        "expiresAt": iso(artifact.expires_at),
        "expired": artifact.expired,
    }


def task_json(task: TaskView) -> JSON:
    return {
        "taskId": task.task_id,
        "toolId": task.tool_id,
        "version": task.version,
        "state": task.state.value,
        "path": task.path,
        "params": task.params,
        "progress": {"percent": task.progress_percent, "phase": task.progress_phase},
        "createdAt": iso(task.created_at),
        "startedAt": iso(task.started_at),
        "finishedAt": iso(task.finished_at),
        "attempts": task.attempts,
        "logCursor": task.log_cursor,
        "logTail": list(task.log_tail),
        "artifact": None if task.artifact is None else artifact_json(task.artifact),
        "error": task.error,
        "result": task.result,
        "statusUrl": task.status_url,
        "orgSlug": task.org_slug,
        "dsSlug": task.ds_slug,
        "userId": task.user_id,
        "dashboardLink": task.dashboard_link,
    }


def log_json(log: LogView) -> JSON:
    return {"cursor": log.cursor, "lines": list(log.lines),
            "truncatedFromTail": log.truncated_from_tail}


def submitted_json(submitted: SubmittedView) -> JSON:
    return {
        "taskId": submitted.task_id,
        "toolId": submitted.tool_id,
        "version": submitted.version,
        "deduplicated": not submitted.created,
        "statusUrl": submitted.status_url,
        "resultUrl": submitted.result_url,
        "estimatedOutputBytes": submitted.estimated_output_bytes,
    }


def tool_json(spec: ToolSpec) -> JSON:
    return {
        "id": spec.id,
        "version": spec.version,
        "title": spec.title,
        "requiredAccess": spec.required_access,
        "producesArtifact": spec.produces_artifact,
        "resultExtension": spec.result_extension,
        "inputSchema": spec.input_schema,
    }


def features_json(features: FeaturesView) -> JSON:
    return {
        "taskStates": [{"value": state.value, "terminal": state.terminal} for state in TaskState],
        "taskTools": list(features.task_tools),
        "version": features.version,
        "dedupEnabled": features.dedup_enabled,
        "artifactTtlHours": features.artifact_ttl_hours,
        "dashboardLink": features.dashboard_link,
    }


# datasets and entries ------------------------------------------------------------------------
def dataset_json(ref: DatasetRef) -> JSON:
    return {
        "org": ref.org_slug,
        "slug": ref.slug,
        "visibility": ref.visibility,
        "createdAt": iso(ref.created_at),
        "canWrite": ref.can_write,
    }


def build_json(build: BuildView) -> JSON:
    if build.hash is None:
        return {"state": build.state}
    found: JSON = {"state": build.state, "hash": build.hash, "outputs": list(build.outputs)}
    if build.missing:
        found["missing"] = build.missing
    if build.error:
        found["error"] = build.error
    return found


def entry_json(entry: EntryView) -> JSON:
    return {
        "path": entry.path,
        "type": entry.type,
        "size": entry.size,
        "hash": entry.hash,
        "mtime": iso(entry.mtime),
        "properties": entry.properties,
        "build": None if entry.build is None else build_json(entry.build),
    }


# orgs ----------------------------------------------------------------------------------------
def org_json(org: OrgView) -> JSON:
    return {"slug": org.slug, "name": org.name, "owner": org.owner,
            "createdAt": iso(org.created_at)}


def created_org_json(org: OrgView) -> JSON:
    """The answer to ``POST /orgs`` (without ``createdAt``, as it always was)."""
    return {"slug": org.slug, "name": org.name, "owner": org.owner}


def member_json(member: MemberView) -> JSON:
    return {"org": member.org, "username": member.username}


# links ---------------------------------------------------------------------------------------
def link_json(link: Link, base_url: str) -> JSON:
    """A signed link: its absolute URL (on the address the caller used) and expiry."""
    return {"url": base_url.rstrip("/") + link.path, "expiresAt": iso(link.expires_at)}
