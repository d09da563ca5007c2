"""What the service answers, as values: orgs, datasets, entries, tools, artifacts, task
status, log pages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from procplat.states import TERMINAL


@dataclass(frozen=True, kw_only=True)
class Org:
    """An org the caller may see (``GET /orgs``)."""

    slug: str
    name: str
    owner: str | None
    created_at: str | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Org:
        return cls(
            slug=body["slug"], name=body.get("name") or body["slug"], owner=body.get("owner"),
            created_at=body.get("createdAt"), raw=dict(body),
        )


@dataclass(frozen=True, kw_only=True)
class DatasetInfo:
    """A dataset the caller may see (``GET /orgs/{org}/ds``, ``GET /orgs/{org}/ds/{ds}``);
    ``name`` (``"org/ds"``) is what :meth:`Client.dataset` takes."""

    org: str
    slug: str
    visibility: str
    can_write: bool
    created_at: str | None
    raw: dict[str, Any] = field(repr=False)

    @property
    def name(self) -> str:
        return f"{self.org}/{self.slug}"

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> DatasetInfo:
        return cls(
            org=body["org"], slug=body["slug"], visibility=body.get("visibility", ""),
            can_write=bool(body.get("canWrite")), created_at=body.get("createdAt"),
            raw=dict(body),
        )


@dataclass(frozen=True, kw_only=True)
class Entry:
    """A file or folder of a dataset, as the service indexed it."""

    path: str
    type: str
    size: int | None
    hash: str | None
    mtime: str | None
    properties: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Entry:
        return cls(
            path=body["path"], type=body.get("type", ""), size=body.get("size"),
            hash=body.get("hash"), mtime=body.get("mtime"),
            properties=body.get("properties") or {}, raw=dict(body),
        )


@dataclass(frozen=True, kw_only=True)
class Tool:
    """A tool a dataset's tasks can run."""

    id: str
    version: str
    title: str
    required_access: str
    produces_artifact: bool
    result_extension: str | None
    input_schema: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Tool:
        return cls(
            id=body["id"], version=str(body["version"]), title=body.get("title", ""),
            required_access=body.get("requiredAccess", ""),
            produces_artifact=bool(body.get("producesArtifact")),
            result_extension=body.get("resultExtension"),
            input_schema=body.get("inputSchema") or {},
        )


@dataclass(frozen=True, kw_only=True)
class Artifact:
    """A task's downloadable file."""

    size_bytes: int
    sha256: str
    file_name: str
    result_url: str
    expires_at: str | None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Artifact:
        return cls(
            size_bytes=int(body["sizeBytes"]), sha256=body["sha256"], file_name=body["fileName"],
            result_url=body["resultUrl"], expires_at=body.get("expiresAt"),
        )


@dataclass(frozen=True, kw_only=True)
class TaskStatus:
    """One answer of ``GET .../tasks/{taskId}`` (``raw`` holds every key). ``params`` are the
    effective parameters the task runs with (a top-level ``path`` included); ``path`` is the
    entry it works on, for tools that take one."""

    task_id: str
    tool_id: str
    version: str
    state: str
    path: str | None
    params: dict[str, Any]
    percent: int
    phase: str | None
    error: str | None
    result: Any
    artifact: Artifact | None
    log_cursor: int
    log_tail: list[str]
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    raw: dict[str, Any] = field(repr=False)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> TaskStatus:
        progress = body.get("progress") or {}
        artifact = body.get("artifact")
        return cls(
            task_id=body["taskId"], tool_id=body.get("toolId", ""),
            version=str(body.get("version", "")), state=body["state"],
            path=body.get("path"), params=dict(body.get("params") or {}),
            percent=int(progress.get("percent") or 0), phase=progress.get("phase"),
            error=body.get("error"), result=body.get("result"),
            artifact=Artifact.from_json(artifact) if artifact else None,
            log_cursor=int(body.get("logCursor") or 0), log_tail=list(body.get("logTail") or []),
            created_at=body.get("createdAt"), started_at=body.get("startedAt"),
            finished_at=body.get("finishedAt"), raw=dict(body),
        )


@dataclass(frozen=True, kw_only=True)
class Submission:
    """What ``POST .../tasks`` answered: new (202) or an equal task found (200)."""

    task_id: str
    tool_id: str
    version: str
    deduplicated: bool
    estimated_output_bytes: int | None
    status_url: str
    result_url: str


@dataclass(frozen=True, kw_only=True)
class LogPage:
    """One page of a task's log: the lines numbered ``>= since`` still kept."""

    cursor: int
    lines: list[str]
    truncated_from_tail: int

    def upto(self, cursor: int) -> list[str]:
        """The lines numbered below ``cursor``: those a status with this ``logCursor`` counts
        (the page may hold lines appended after that status was read)."""
        newer = max(0, self.cursor - cursor)
        return self.lines[: max(0, len(self.lines) - newer)]
