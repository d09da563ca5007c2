"""What core answers, as values: tasks, their artifacts and log pages, entries with their
build state, orgs, members, pages of a listing, the service's features. Built here from the
index's rows; :mod:`procplat.api.views` alone renders them as the JSON of SPEC §3.

A dataset is :class:`procplat.core.datasets.DatasetRef`; a tool is its
:class:`tools.contract.ToolSpec`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from procplat.index.models import Artifact, Entry, EntryBuild, Task
from procplat.states import TaskState
from tools.build import BUILDABLE_TYPES

__all__ = [
    "LOG_TAIL_LINES",
    "ArtifactView",
    "BuildView",
    "EntryView",
    "FeaturesView",
    "LogView",
    "MemberView",
    "OrgView",
    "Page",
    "SubmittedView",
    "TaskView",
    "build_view",
    "entry_view",
    "task_urls",
    "task_view",
]

LOG_TAIL_LINES = 20  # the log lines a task's status carries
T = TypeVar("T")
JSONObject = Mapping[str, Any]  # a JSON object as stored (tool parameters, summaries, properties)


@dataclass(frozen=True, kw_only=True)
class Page(Generic[T]):
    """One page of a listing: ``take`` items from ``skip`` on, of ``total``."""

    items: tuple[T, ...]
    total: int
    skip: int
    take: int


# tasks ---------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ArtifactView:
    size_bytes: int
    sha256: str
    file_name: str
    result_url: str
    expires_at: datetime
    expired: bool  # past ``expires_at`` (the sweep has not marked it yet)


@dataclass(frozen=True, kw_only=True)
class TaskView:
    """A task's status (``GET .../tasks/{taskId}``, and each item of a task listing)."""

    task_id: str
    tool_id: str
    version: str
    state: TaskState
    path: str | None
    params: JSONObject
    progress_percent: int
    progress_phase: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    log_cursor: int
    log_tail: tuple[str, ...]
    artifact: ArtifactView | None  # only a Succeeded task's, while its row is not expired
    error: str | None
    result: JSONObject | None
    status_url: str
    org_slug: str
    ds_slug: str
    user_id: int | None
    dashboard_link: str | None


@dataclass(frozen=True, kw_only=True)
class LogView:
    """A page of a task's log: the kept lines numbered from ``since`` on."""

    cursor: int  # lines ever appended
    lines: tuple[str, ...]
    truncated_from_tail: int  # lines evicted


@dataclass(frozen=True, kw_only=True)
class SubmittedView:
    """A submission's answer: a new task (``created``) or the equal one dedup found."""

    task_id: str
    tool_id: str
    version: str
    created: bool
    status_url: str
    result_url: str
    estimated_output_bytes: int


@dataclass(frozen=True, kw_only=True)
class FeaturesView:
    """``GET /sys/features`` (the task states come from :class:`TaskState`)."""

    task_tools: tuple[str, ...]
    version: str
    dedup_enabled: bool
    artifact_ttl_hours: float
    dashboard_link: str | None


def task_urls(org_slug: str, ds_slug: str, task_id: str) -> tuple[str, str]:
    """A task's status URL and its artifact's URL."""
    status = f"/orgs/{org_slug}/ds/{ds_slug}/tasks/{task_id}"
    return status, f"{status}/result"


def _artifact_view(artifact: Artifact | None, result_url: str, now: datetime) -> ArtifactView | None:
    if artifact is None or artifact.expired:
        return None
    return ArtifactView(
        size_bytes=artifact.size_bytes, sha256=artifact.sha256, file_name=artifact.file_name,
        result_url=result_url, expires_at=artifact.expires_at,
        expired=artifact.expires_at <= now,
    )


def task_view(
    task: Task,
    *,
    org_slug: str,
    ds_slug: str,
    artifact: Artifact | None,
    log_tail: list[str],
    now: datetime,
    dashboard_link: str | None = None,
) -> TaskView:
    status_url, result_url = task_urls(org_slug, ds_slug, task.id)
    state = TaskState(task.state)
    return TaskView(
        task_id=task.id, tool_id=task.tool_id, version=task.version, state=state,
        path=task.path, params=task.params, progress_percent=task.progress_percent,
        progress_phase=task.progress_phase, created_at=task.created_at,
        started_at=task.started_at, finished_at=task.finished_at, attempts=task.attempts,
        log_cursor=task.log_cursor, log_tail=tuple(log_tail),
        artifact=_artifact_view(artifact, result_url, now) if state == TaskState.SUCCEEDED else None,
        error=task.error, result=task.result, status_url=status_url, org_slug=org_slug,
        ds_slug=ds_slug, user_id=task.user_id, dashboard_link=dashboard_link,
    )


# entries -------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class BuildView:
    """An entry's build state: ``missing`` (never built; nothing else is known), ``stale``
    (built from another version), ``built``, ``pending`` (``missing`` names the program) or
    ``failed`` (``error`` says why)."""

    state: str
    hash: str | None = None  # the entry hash the build was made from (None: never built)
    outputs: tuple[str, ...] = ()
    missing: str | None = None
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class EntryView:
    path: str
    type: str
    size: int
    hash: str | None
    mtime: datetime
    properties: JSONObject
    build: BuildView | None  # None for types that have no build


def build_view(entry: Entry, build: EntryBuild | None) -> BuildView | None:
    if entry.type not in BUILDABLE_TYPES:
        return None
    if build is None:
        return BuildView(state="missing")
    return BuildView(
        state=build.state if build.hash == entry.hash else "stale", hash=build.hash,
        outputs=tuple(build.outputs or ()), missing=build.missing, error=build.error,
    )


def entry_view(entry: Entry, build: EntryBuild | None = None) -> EntryView:
    return EntryView(
        path=entry.path, type=entry.type, size=entry.size, hash=entry.hash, mtime=entry.mtime,
        properties=entry.properties or {}, build=build_view(entry, build),
    )


# orgs ----------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class OrgView:
    slug: str
    name: str
    owner: str | None  # the owner's username
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class MemberView:
    org: str
    username: str
