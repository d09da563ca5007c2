"""The contract between a tool and whoever runs it (the service, a notebook, a test).

A tool is one module in ``tools/`` exposing three names:

- ``SPEC``: a :class:`ToolSpec` (id, version, title, access, artifact, JSON Schema), written
  with :func:`tool_spec` and the parameter helpers (:func:`path_param`, :func:`text_param`,
  :func:`flag_param`, :func:`choice_param`) so every tool's schema reads the same;
- ``validate(params, dataset_root) -> Plan``: cheap checks run *before* queueing (entries
  exist, paths safe, values make sense); raises :class:`InvalidParams` with a message a
  person can act on; returns the estimated output size;
- ``run(params, ctx) -> ToolResult``: the work itself. It talks back only through
  ``ctx.reporter`` (progress, log, cancelled?) and its return value. Outputs are written
  into ``ctx.work_dir`` (artifacts) or a temporary name inside the dataset and renamed
  into place, so a run that is killed or cancelled leaves nothing half-written.

Nothing here imports the service: a notebook can use every tool with a
:class:`PrintReporter`.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

Access = Literal["Read", "Write"]


class ToolError(Exception):
    """A run failed for a reason a person can act on (the message says which)."""


# "No space left": the disk, or the user's quota on it, is full.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFull(ToolError):
    """The storage a run writes to is full; the message names no path of the server's."""

    def __init__(self) -> None:
        super().__init__("the disk is full: the task's output could not be written (no space "
                         "left on the service's storage); retry once space has been freed")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it was raised from, is "no space left"."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, OSError) and cause.errno in DISK_FULL_ERRNOS:
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


class InvalidParams(ToolError):
    """Parameters are wrong; raised by ``validate`` before anything is queued."""


class Cancelled(Exception):
    """The run was cancelled; raised by :meth:`Reporter.check_cancelled`."""


@dataclass(frozen=True, kw_only=True)
class ToolSpec:
    id: str
    version: str
    title: str
    required_access: Access
    produces_artifact: bool
    result_extension: str | None
    input_schema: dict[str, Any]
    reads_index: bool = False  # the run is given the index's entries (ToolContext.entries)

    @property
    def takes_path(self) -> bool:
        """Whether a top-level ``path`` of a submission becomes ``params.path``."""
        return "path" in self.input_schema.get("properties", {})


# --- writing a SPEC ---------------------------------------------------------------------

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
MAX_PATH_LENGTH = 1024
JsonSchema = dict[str, Any]


def tool_spec(
    *,
    id: str,
    title: str,
    access: Access,
    properties: dict[str, JsonSchema],
    required: Sequence[str] = (),
    artifact_extension: str | None = None,
    reads_index: bool = False,
    version: str = "1",
) -> ToolSpec:
    """A tool's SPEC. Its parameters are a JSON object (draft 2020-12) of exactly
    ``properties``, ``required`` among them; a tool with an ``artifact_extension`` (``.zip``)
    produces an artifact to download, the others write into the dataset."""
    schema: JsonSchema = {"$schema": SCHEMA_DIALECT, "type": "object",
                          "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    schema["properties"] = properties
    return ToolSpec(
        id=id, version=version, title=title, required_access=access,
        produces_artifact=artifact_extension is not None, result_extension=artifact_extension,
        input_schema=schema, reads_index=reads_index,
    )


def _described(schema: JsonSchema, description: str | None) -> JsonSchema:
    return schema if description is None else {**schema, "description": description}


def path_param(description: str | None = None) -> JsonSchema:
    """A dataset-relative path (not empty)."""
    return _described({"type": "string", "minLength": 1, "maxLength": MAX_PATH_LENGTH},
                      description)


def text_param(description: str, *, max_length: int = 200, nullable: bool = True,
               pattern: str | None = None) -> JsonSchema:
    """A string of at most ``max_length`` characters (null allowed unless ``nullable`` is
    False), matching ``pattern`` when given."""
    schema: JsonSchema = {"type": ["string", "null"] if nullable else "string",
                          "maxLength": max_length}
    if pattern is not None:
        schema["pattern"] = pattern
    return _described(schema, description)


def flag_param(description: str, *, nullable: bool = False) -> JsonSchema:
    """A boolean (null allowed when ``nullable``)."""
    return _described({"type": ["boolean", "null"] if nullable else "boolean"}, description)


def choice_param(values: Iterable[str], description: str) -> JsonSchema:
    """A nullable string restricted to ``values`` (listed for clients in ``enum``)."""
    return _described({"type": ["string", "null"], "enum": [*values, None]}, description)


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What validation learnt about a run before it is queued."""

    estimated_output_bytes: int = 0


@dataclass(frozen=True, kw_only=True)
class BuildState:
    """The derivatives built for one entry (``.ddb/build/<hash>/``), as stored in the index.

    ``state`` is ``built``, ``pending`` (a program is missing: ``missing`` names it) or
    ``failed`` (``error`` says why); ``hash`` is the entry hash the build was made from (a
    build whose hash differs from the entry's is stale); ``outputs`` are dataset-relative.
    """

    state: str
    hash: str
    missing: str | None = None
    error: str | None = None
    outputs: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class IndexedEntry:
    """An entry as the index knows it when a run starts (for tools with ``reads_index``)."""

    path: str
    type: str
    size: int
    hash: str | None
    mtime: float  # POSIX seconds
    properties: dict[str, Any] = field(default_factory=dict)
    build: BuildState | None = None


@dataclass(frozen=True, kw_only=True)
class EntryUpdate:
    """What a run found out about an existing entry; the service writes it to the index,
    unless the entry's hash is no longer ``expected_hash`` (it changed during the run).
    Fields left None are kept."""

    path: str
    expected_hash: str | None
    type: str | None = None
    properties: dict[str, Any] | None = None
    size: int | None = None
    hash: str | None = None
    mtime: float | None = None
    build: BuildState | None = None


@dataclass(frozen=True, kw_only=True)
class ToolResult:
    """What a run produced. Paths of entries are dataset-relative, POSIX style."""

    artifact: Path | None = None
    entries_added: list[str] = field(default_factory=list)
    entries_removed: list[str] = field(default_factory=list)
    entries_updated: list[EntryUpdate] = field(default_factory=list)
    summary: dict[str, Any] | None = None


class Reporter(Protocol):
    """How a running tool talks back to whoever runs it."""

    def progress(self, fraction: float | None, phase: str | None = None) -> None:
        """Report the fraction done (0..1, or None when unknown) of the current phase."""

    def log(self, message: str) -> None:
        """Append one human-readable line to the task log."""

    def cancelled(self) -> bool:
        """True once the run has been asked to stop."""

    def check_cancelled(self) -> None:
        """Raise :class:`Cancelled` if the run has been asked to stop."""


@dataclass(frozen=True, kw_only=True)
class ToolLimits:
    """Operator settings a tool must honour (the service fills them from its settings)."""

    max_archive_extract_bytes: int = 5 * 1024**3
    raster_tile_size: int = 512


@dataclass(frozen=True, kw_only=True)
class ToolContext:
    """Everything a run may touch besides its parameters."""

    task_id: str
    dataset_root: Path
    work_dir: Path
    reporter: Reporter
    cancel_event: str | None = None  # a distributed.Event set on cancel (see tools.runtime.fanout)
    limits: ToolLimits = field(default_factory=ToolLimits)
    entries: tuple[IndexedEntry, ...] = ()  # filled only for tools with ``reads_index``


class PrintReporter:
    """A reporter for notebooks and scripts: prints log lines, never cancels."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet
        self.percent = 0
        self.phase: str | None = None

    def progress(self, fraction: float | None, phase: str | None = None) -> None:
        if phase is not None:
            self.phase = phase
        if fraction is not None:
            self.percent = round(max(0.0, min(1.0, fraction)) * 100)

    def log(self, message: str) -> None:
        if not self.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {message}")

    def cancelled(self) -> bool:
        return False

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise Cancelled()
