"""Values that cross between the service and the Dask workers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tools.contract import EntryUpdate, IndexedEntry

EVENT_TOPIC = "procplat-task"


def job_key(task_id: str, attempt: int) -> str:
    """The Dask key of one attempt: a new attempt is new work, never a re-used key."""
    return f"{task_id}-{attempt}"


def cancel_event_name(task_id: str) -> str:
    return f"procplat-cancel-{task_id}"


def task_span(job: Job) -> tuple[str, str, str]:
    """The Dask span a task's work is grouped under on the dashboard."""
    return ("procplat", job.tool_id, job.task_id)


@dataclass(frozen=True, kw_only=True)
class Job:
    """One attempt at running a task on the cluster; pickled to the worker."""

    task_id: str
    attempt: int
    tool_module: str
    tool_id: str
    params: dict[str, Any]
    dataset_root: str
    work_root: str
    artifacts_root: str
    annotations: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)  # tools.contract.ToolLimits fields
    entries: tuple[IndexedEntry, ...] = ()  # the index's entries, for tools that read it


@dataclass(frozen=True, kw_only=True)
class ArtifactInfo:
    storage_path: str
    file_name: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """How an attempt ended, as seen by the service: succeeded; cancelled; failed with a
    message for a person (a ToolError); or failed by a fault (an unexpected exception in the
    tool, with its traceback, or the cluster giving up on the work)."""

    task_id: str
    attempt: int
    succeeded: bool
    cancelled: bool = False
    error: str | None = None
    artifact: ArtifactInfo | None = None
    summary: dict[str, Any] | None = None
    entries_added: list[str] = field(default_factory=list)
    entries_removed: list[str] = field(default_factory=list)
    entries_updated: list[EntryUpdate] = field(default_factory=list)
    log_lines_sent: int = 0
    lost: bool = False  # the scheduler lost the work (e.g. it restarted)
    fault: bool = False  # a bug or a broken cluster, not an outcome a person caused or expects
    traceback: str | None = None  # of the unexpected exception, when there was one
