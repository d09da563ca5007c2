"""What the console shows, read from the core services: the one module that knows the shape
of what :mod:`procplat.core` returns. Every function calls the same core method the API
route calls (so the same permission checks and validation apply) and turns its result into
a frozen value the pages render; nothing else in :mod:`procplat.web` reads core results."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from procplat.core.auth import Principal, require_admin
from procplat.core.datasets import DatasetRef, Datasets, user_path
from procplat.core.registry import RegisteredTool
from procplat.core.tasks import Tasks
from procplat.core.views import EntryView, Page, TaskView
from procplat.errors import NotFound
from procplat.index import queries as q
from procplat.states import TERMINAL, TaskState

__all__ = [
    "ArtifactInfo", "DatasetInfo", "EntryInfo", "TaskInfo", "ToolInfo", "UserInfo",
    "admin_tasks", "artifact_path", "dataset", "dataset_entries", "entry", "entry_raster",
    "raster_paths", "state_names", "task", "task_log", "tasks_of", "terminal_states", "tool",
    "tools", "users", "visible_datasets",
]

CONSOLE_TAKE = 200  # orgs, and datasets of an org, read per page for the home page
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class DatasetInfo:
    org: str
    slug: str
    visibility: str
    can_write: bool


@dataclass(frozen=True, kw_only=True)
class EntryInfo:
    path: str
    name: str
    type: str
    size: int | None
    is_folder: bool
    crs: str | None
    bands: int | None
    width: int | None
    height: int | None
    dtype: str | None
    build_state: str | None
    hash: str | None
    mtime: str | None


@dataclass(frozen=True, kw_only=True)
class ArtifactInfo:
    file_name: str
    size_bytes: int
    sha256: str
    expires_at: str | None
    expired: bool


@dataclass(frozen=True, kw_only=True)
class TaskInfo:
    task_id: str
    tool_id: str
    version: str
    state: str
    terminal: bool
    percent: int
    phase: str | None
    path: str | None
    params: dict[str, Any]
    created_at: str | None
    finished_at: str | None
    log_cursor: int
    error: str | None
    result: Any
    artifact: ArtifactInfo | None
    org: str
    ds: str
    user_id: int | None


@dataclass(frozen=True, kw_only=True)
class LogChunk:
    cursor: int
    lines: tuple[str, ...]
    truncated: int


@dataclass(frozen=True, kw_only=True)
class ToolInfo:
    id: str
    version: str
    title: str
    required_access: str
    produces_artifact: bool
    schema: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class UserInfo:
    username: str
    is_admin: bool
    created_at: str | None


_TERMINAL = {state.value for state in TERMINAL}


def _when(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def state_names() -> list[str]:
    return [state.value for state in TaskState]


def terminal_states() -> set[str]:
    return set(_TERMINAL)


# datasets and entries ---------------------------------------------------------------------
def _dataset_info(ref: DatasetRef) -> DatasetInfo:
    return DatasetInfo(org=ref.org_slug, slug=ref.slug, visibility=ref.visibility,
                       can_write=ref.can_write)


def visible_datasets(datasets: Datasets, who: Principal | None) -> list[DatasetInfo]:
    """Every dataset the caller may see, org by org (as ``GET /orgs`` and ``/orgs/{org}/ds``)."""
    found: list[DatasetInfo] = []
    for org in _every(lambda skip: datasets.list_orgs(who, str(skip), str(CONSOLE_TAKE))):
        found += [_dataset_info(ref) for ref in _every(
            lambda skip, slug=org.slug: datasets.list_datasets(who, slug, str(skip),
                                                               str(CONSOLE_TAKE)))]
    return found


def _every(page_at: Callable[[int], Page[T]]) -> Iterator[T]:
    """Every item of a paged listing, page after page."""
    skip = 0
    while True:
        page = page_at(skip)
        yield from page.items
        skip += len(page.items)
        if not page.items or skip >= page.total:
            return


def dataset(datasets: Datasets, who: Principal | None, org: str, ds: str) -> DatasetRef:
    return datasets.open(who, org, ds, "Read")


def describe(ref: DatasetRef) -> DatasetInfo:
    return _dataset_info(ref)


def _entry_info(raw: EntryView) -> EntryInfo:
    props = raw.properties or {}
    return EntryInfo(
        path=raw.path, name=raw.path.rsplit("/", 1)[-1], type=raw.type,
        size=raw.size, is_folder=raw.type == "directory",
        crs=props.get("crs"), bands=props.get("bandCount", props.get("count")),
        width=props.get("width"), height=props.get("height"), dtype=props.get("dtype"),
        build_state=None if raw.build is None else raw.build.state, hash=raw.hash,
        mtime=_when(raw.mtime),
    )


def dataset_entries(datasets: Datasets, ref: DatasetRef, folder: str | None) -> list[EntryInfo]:
    """One folder level, folders first."""
    items = [_entry_info(e) for e in datasets.entries(ref, folder, None, False)]
    return sorted(items, key=lambda e: (not e.is_folder, e.path))


def raster_paths(datasets: Datasets, ref: DatasetRef) -> list[str]:
    """The dataset's georasters, offered for a tool's path fields."""
    return [e.path for e in datasets.entries(ref, None, "georaster", True)]


def entry(datasets: Datasets, ref: DatasetRef, path: str) -> EntryInfo:
    rel = user_path(path)
    found = datasets.entry(ref, rel)
    if found is None:
        raise NotFound(f"entry '{rel}' not found")
    return _entry_info(found)


def entry_raster(datasets: Datasets, ref: DatasetRef, path: str) -> tuple[EntryInfo, list[Path]]:
    """A georaster entry and the files to preview it from: its built COG first (it has
    overviews), then the file itself."""
    rel = user_path(path)
    found = datasets.entry(ref, rel)
    if found is None or found.type != "georaster":
        raise NotFound(f"no raster '{rel}'")
    build = found.build
    candidates = [] if build is None or build.state != "built" else [
        ref.root / output for output in build.outputs]
    return _entry_info(found), [*candidates, datasets.file_path(ref, rel)]


# tools and tasks --------------------------------------------------------------------------
def _tool_info(tool: RegisteredTool) -> ToolInfo:
    spec = tool.spec
    return ToolInfo(id=spec.id, version=spec.version, title=spec.title,
                    required_access=spec.required_access,
                    produces_artifact=spec.produces_artifact, schema=spec.input_schema)


def tools(tasks: Tasks) -> list[ToolInfo]:
    return [_tool_info(t) for t in tasks.registry.all()]


def tool(tasks: Tasks, tool_id: str) -> ToolInfo:
    return _tool_info(tasks.registry.get(tool_id))


def _task_info(raw: TaskView) -> TaskInfo:
    art = raw.artifact
    return TaskInfo(
        task_id=raw.task_id, tool_id=raw.tool_id, version=raw.version,
        state=raw.state.value, terminal=raw.state.terminal,
        percent=raw.progress_percent, phase=raw.progress_phase, path=raw.path,
        params=raw.params or {}, created_at=_when(raw.created_at),
        finished_at=_when(raw.finished_at), log_cursor=raw.log_cursor,
        error=raw.error, result=raw.result,
        artifact=None if art is None else ArtifactInfo(
            file_name=art.file_name, size_bytes=art.size_bytes, sha256=art.sha256,
            expires_at=_when(art.expires_at), expired=art.expired),
        org=raw.org_slug, ds=raw.ds_slug, user_id=raw.user_id,
    )


def tasks_of(
    tasks: Tasks, who: Principal | None, org: str, ds: str, tool_id: str | None,
    state: str | None, skip: int, take: int,
) -> list[TaskInfo]:
    return [_task_info(t) for t in tasks.list(who, org, ds, tool_id, state, skip, take)]


def task(tasks: Tasks, who: Principal | None, org: str, ds: str, task_id: str) -> TaskInfo:
    return _task_info(tasks.status(who, org, ds, task_id))


def task_log(tasks: Tasks, who: Principal | None, org: str, ds: str, task_id: str,
             since: int) -> LogChunk:
    raw = tasks.log(who, org, ds, task_id, since)
    return LogChunk(cursor=raw.cursor, lines=raw.lines, truncated=raw.truncated_from_tail)


def artifact_path(tasks: Tasks, who: Principal | None, org: str, ds: str,
                  task_id: str) -> tuple[ArtifactInfo, Path]:
    artifact, path = tasks.artifact_file(who, org, ds, task_id)
    return ArtifactInfo(file_name=artifact.file_name, size_bytes=artifact.size_bytes,
                        sha256=artifact.sha256, expires_at=None, expired=False), path


def admin_tasks(tasks: Tasks, who: Principal | None, state: str | None, skip: int,
                take: int) -> tuple[list[TaskInfo], int]:
    found = tasks.list_all(who, None, state, None, skip, take)
    return [_task_info(t) for t in found.items], found.total


def users(tasks: Tasks, who: Principal | None) -> list[UserInfo]:
    """Every user (admins only)."""
    require_admin(who)
    with tasks.db.read() as s:
        return [UserInfo(username=u.username, is_admin=u.is_admin,
                         created_at=u.created_at.strftime("%Y-%m-%d %H:%M"))
                for u in q.all_users(s)]
