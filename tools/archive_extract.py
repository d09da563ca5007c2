"""The ``archive-extract`` tool: unpack an archive entry into the dataset, all or nothing.

Formats (by suffix, case-insensitive): zip (ZIP64 too), tar, tar.gz/tgz, tar.bz2, tar.xz, 7z
(py7zr), and single-file .gz/.bz2/.xz, which become one file named after the archive minus its
suffix. ``destPath`` defaults to the dataset root.

How a run goes:

1. **Check and stage** (phase ``extracting``). Every member is checked before its data is
   read (zip and 7z: all members, from the central directory, before any data): an unsafe
   name (absolute, drive letter, backslash, ``..``, NUL or other control characters, into
   ``.ddb``, a name or target path too long for the dataset's file system; see
   :mod:`tools.runtime.safepath`), a symlink, hardlink, device, FIFO or socket, an encrypted member, a duplicate name (after Unicode NFC normalisation and
   ignoring case, since the dataset may be copied to a case-insensitive file system), a name
   that is both a file and a folder, or overlapping zip entries fails the whole task with an
   error naming the member. Data is streamed in 64 KiB reads into numbered files in a fresh
   ``.ddb/tmp/archive-extract-<taskId>/`` (no archive name ever becomes a path there),
   counting the bytes actually written, so a header that lies about sizes gains nothing.
2. **Move in** (phase ``moving``). Every target is planned first: its folders are walked
   without following symlinks (:func:`tools.runtime.safepath.open_folder_nofollow`), a symlink or
   file among them, or a target that is a symlink, fails the task before anything moves.
   Existing files are skipped unless ``overwrite``. Files are then renamed into place
   through folder descriptors; if a rename fails, the moves already made are undone. After
   the move, a cancel request is no longer honoured: the run has committed.
3. ``deleteArchive`` removes the archive after success. The log ends with
   ``Extraction complete: N extracted, M skipped``.

Caps (module constants, chosen for drone/GIS archives):

- :data:`MAX_ENTRIES` = 20,000 members (folders included): every file is indexed like an
  upload (type detection, sha256), and typical flight archives hold a few thousand images.
- total bytes written <= ``ToolLimits.max_archive_extract_bytes`` (the operator's
  ``MaxArchiveExtractSizeBytes``, 5 GiB by default), counted while streaming.
- :data:`MAX_COMPRESSION_RATIO` = 200: once a member has produced more than
  :data:`RATIO_GRACE_BYTES` (16 MiB), its output may not exceed 200 times the compressed bytes
  read from the archive while producing it (reads are 64 KiB, so a library's read-ahead
  cannot hide much). Real rasters and point clouds stay far below; a deflate bomb of zeros
  runs at ~1000:1 and is stopped after 16 MiB, long before the byte cap.

Killed runs: before the first rename the planned moves are saved as ``moves.json`` in the
staging folder, which is named after the task. The task's next attempt (the service re-queues
lost work) finds it and finishes the moves instead of starting over, so the dataset ends in the
new state with every file reported for indexing; an attempt killed before that point leaves
only its staging folder, which the next attempt clears.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tools.archive.read import (
    EXTRACTORS,
    SINGLE_FILE,
    CountingReader,
    Request,
    Stage,
    archive_format,
    megabytes,
    shown_name,
)
from tools.contract import (
    MAX_PATH_LENGTH,
    InvalidParams,
    Plan,
    Reporter,
    ToolContext,
    ToolError,
    ToolResult,
    flag_param,
    path_param,
    text_param,
    tool_spec,
)
from tools.runtime.safepath import (
    UnsafePath,
    lstat_in_dataset,
    normalize_relpath,
    open_folder_nofollow,
    path_limits,
    resolve_in_dataset,
)
from tools.runtime.staging import staging_folder

JOURNAL = "moves.json"
MOVING = "moving"

SPEC = tool_spec(
    id="archive-extract",
    title="Extract an archive into the dataset",
    access="Write",
    required=("sourcePath",),
    properties={
        "sourcePath": path_param("The archive entry (zip, tar[.gz|.bz2|.xz], tgz, 7z, .gz, "
                                 ".bz2, .xz)."),
        "destPath": text_param("Folder to extract into; default: the dataset root.",
                               max_length=MAX_PATH_LENGTH),
        "deleteArchive": flag_param("Remove the archive after a successful extraction.",
                                    nullable=True),
        "overwrite": flag_param("Replace existing files (default: skip them).", nullable=True),
    },
)


def parse(params: dict[str, Any], dataset_root: Path, *, must_exist: bool = True) -> Request:
    """Check the parameters against the dataset; raises :class:`InvalidParams`.

    ``must_exist=False`` is for finishing an interrupted attempt, which may have deleted the
    archive already."""
    requested = params.get("sourcePath")
    if not isinstance(requested, str):
        raise InvalidParams("sourcePath must be a string")
    source_rel = normalize_relpath(requested, what="sourcePath")
    source = resolve_in_dataset(dataset_root, source_rel, what="sourcePath")
    if must_exist and not source.exists():
        raise InvalidParams(f"sourcePath '{source_rel}' does not exist")
    if must_exist and not source.is_file():
        raise InvalidParams(f"sourcePath '{source_rel}' is not a file")
    fmt, suffix = archive_format(PurePosixPath(source_rel).name)
    dest = params.get("destPath")
    dest_rel = normalize_relpath("" if dest is None else dest, allow_root=True, what="destPath")
    dest_path = resolve_in_dataset(dataset_root, dest_rel, allow_root=True, what="destPath")
    if dest_path.exists() and not dest_path.is_dir():
        raise InvalidParams(f"destPath '{dest_rel}' is a file, not a folder")
    request = Request(
        source_rel=source_rel, source=source, fmt=fmt, suffix=suffix, dest_rel=dest_rel,
        delete_archive=bool(params.get("deleteArchive")), overwrite=bool(params.get("overwrite")),
        limits=path_limits(dataset_root),
    )
    if fmt in SINGLE_FILE and request.single_name in ("", ".", ".."):
        raise InvalidParams(f"'{source_rel}' has no name left once '{suffix}' is removed")
    return request


def validate(params: dict[str, Any], dataset_root: Path) -> Plan:
    """The archive exists and is supported, the paths are safe; estimate = the archive size."""
    request = parse(params, dataset_root)
    return Plan(estimated_output_bytes=request.source.stat().st_size)


def run(params: dict[str, Any], ctx: ToolContext) -> ToolResult:
    """Stage every member, then move the files into the dataset (see the module docstring)."""
    staging = staging_folder(ctx.dataset_root, SPEC.id, ctx.task_id)
    journal = Journal.load(staging)
    try:
        request = parse(params, ctx.dataset_root, must_exist=journal is None)
    except InvalidParams as exc:
        raise ToolError(str(exc)) from None
    try:
        if journal is None:
            journal = _extract(request, staging, ctx)
            ctx.reporter.check_cancelled()  # the last chance: after this the dataset changes
            journal.save(staging)
        else:
            ctx.reporter.log("Finishing the move of an attempt that was interrupted")
        added = commit(ctx.dataset_root, journal, staging, ctx.reporter)
        removed = _delete_archive(ctx.dataset_root, request, added, ctx.reporter)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the journal goes last
    ctx.reporter.progress(1.0, MOVING)
    skipped = len(journal.skipped)
    ctx.reporter.log(f"Extraction complete: {len(added)} extracted, {skipped} skipped")
    return ToolResult(
        entries_added=added, entries_removed=removed,
        summary={"extracted": len(added), "skipped": skipped, "bytes": journal.written},
    )


def _extract(request: Request, staging: Path, ctx: ToolContext) -> Journal:
    """Check and stage every member into an empty ``staging``; plan the moves."""
    size = request.source.stat().st_size
    ctx.reporter.log(f"Extracting {request.source_rel} ({megabytes(size)}) into "
                     f"'{request.dest_rel or '.'}'")
    shutil.rmtree(staging, ignore_errors=True)  # a killed attempt's partial staging
    staging.mkdir()
    stage = Stage(request=request, folder=staging, reporter=ctx.reporter,
                  max_bytes=ctx.limits.max_archive_extract_bytes, archive_size=size)
    with open(request.source, "rb") as raw_file:
        EXTRACTORS[request.fmt](stage, CountingReader(raw_file))
    stage.finished()
    return plan(ctx.dataset_root, request, stage)


# --- moving into the dataset -----------------------------------------------------------------


@dataclass(frozen=True)
class Move:
    """One staged file (by its name in the staging folder) and where it goes."""

    target: str
    staged: str
    replace: bool


@dataclass(frozen=True)
class Journal:
    """The planned moves, saved in the staging folder before the first one: an attempt killed
    while moving leaves it behind, and the task's next attempt finishes the moves."""

    moves: list[Move]
    skipped: list[str]
    written: int

    def save(self, staging: Path) -> None:
        body = {"moves": [[m.target, m.staged, m.replace] for m in self.moves],
                "skipped": self.skipped, "written": self.written}
        partial = staging / f"{JOURNAL}.partial"
        partial.write_text(json.dumps(body))
        os.replace(partial, staging / JOURNAL)

    @classmethod
    def load(cls, staging: Path) -> Journal | None:
        try:
            body = json.loads((staging / JOURNAL).read_text())
            moves = [Move(str(t), str(n), bool(r)) for t, n, r in body["moves"]]
            return cls(moves=moves, skipped=list(body["skipped"]), written=int(body["written"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def commit(root: Path, journal: Journal, staging: Path, reporter: Reporter) -> list[str]:
    """Move the staged files into the dataset: all of them, or (on error) none. Files no
    longer in ``staging`` were moved by an interrupted attempt of the same task."""
    reporter.progress(0.0, MOVING)
    moves = journal.moves
    done: list[Move] = []
    created: list[str] = []
    try:
        for i, move in enumerate(moves):
            if (staging / move.staged).exists():
                _move(root, move, staging, created)
                done.append(move)
            reporter.progress((i + 1) / len(moves), MOVING)
    except BaseException as exc:
        _undo(root, done, created, staging)
        if isinstance(exc, (OSError, UnsafePath)):
            failed = moves[len(done)].target if len(done) < len(moves) else "?"
            # an OSError's text holds the server's paths: say only what went wrong
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ToolError(f"moving '{shown_name(failed)}' into the dataset failed, "
                            f"nothing was changed: {reason}") from None
        raise
    return [m.target for m in moves]


def plan(root: Path, request: Request, stage: Stage) -> Journal:
    """Decide, per staged file, to move it in, replace an existing file or skip it; refuse
    targets behind a symlink or a file, and targets that are links, folders or special files."""
    moves: list[Move] = []
    skipped: list[str] = []
    for target in sorted(stage.files):
        try:
            st = lstat_in_dataset(root, target)
        except UnsafePath as exc:
            raise ToolError(f"cannot extract '{shown_name(target)}': {exc}") from None
        staged = stage.files[target].name
        if st is None:
            moves.append(Move(target, staged, replace=False))
        elif stat.S_ISLNK(st.st_mode) or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise ToolError(f"cannot extract '{shown_name(target)}': the dataset has a symbolic "
                            "link or special file there")
        elif not request.overwrite:
            skipped.append(target)
        elif stat.S_ISDIR(st.st_mode):
            raise ToolError(f"cannot extract '{shown_name(target)}': the dataset has a folder there")
        else:
            moves.append(Move(target, staged, replace=True))
    return Journal(moves=moves, skipped=skipped, written=stage.written)


def _backup_name(move: Move) -> str:
    return f"{move.staged}.previous"


def _move(root: Path, move: Move, staging: Path, created: list[str]) -> None:
    parent, _, name = move.target.rpartition("/")
    folder = open_folder_nofollow(root, parent, create=True, created=created)
    assert folder is not None
    staging_fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if move.replace:
            with contextlib.suppress(FileNotFoundError):  # left by an interrupted attempt
                os.unlink(_backup_name(move), dir_fd=staging_fd)
            os.link(name, _backup_name(move), src_dir_fd=folder, dst_dir_fd=staging_fd,
                    follow_symlinks=False)
        os.replace(move.staged, name, src_dir_fd=staging_fd, dst_dir_fd=folder)
    finally:
        os.close(staging_fd)
        os.close(folder)


def _undo(root: Path, done: list[Move], created: list[str], staging: Path) -> None:
    """Put back what a failed move phase changed (best effort, newest first)."""
    for move in reversed(done):
        parent, _, name = move.target.rpartition("/")
        try:
            folder = open_folder_nofollow(root, parent)
        except (OSError, UnsafePath):
            continue
        if folder is None:
            continue
        try:
            if move.replace:
                os.replace(staging / _backup_name(move), name, dst_dir_fd=folder)
            else:
                os.unlink(name, dir_fd=folder)
        except OSError:
            pass
        finally:
            os.close(folder)
    for rel in reversed(created):
        try:
            os.rmdir(root / rel)
        except OSError:
            pass


def _delete_archive(
    root: Path, request: Request, added: list[str], reporter: Reporter
) -> list[str]:
    if not request.delete_archive:
        return []
    if request.source_rel in added:
        reporter.log(f"Kept {request.source_rel}: an extracted file replaced it")
        return []
    st = lstat_in_dataset(root, request.source_rel)
    if st is not None and stat.S_ISREG(st.st_mode):
        request.source.unlink()
        reporter.log(f"Deleted {request.source_rel}")
    return [request.source_rel]
