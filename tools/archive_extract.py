"""The ``archive-extract`` tool: unpack an archive entry into the dataset, all or nothing.

Formats (by suffix, case-insensitive): zip (ZIP64 too), tar, tar.gz/tgz, tar.bz2, tar.xz, 7z
(py7zr), and single-file .gz/.bz2/.xz, which become one file named after the archive minus its
suffix. ``destPath`` defaults to the archive's folder.

How a run goes:

1. **Check and stage** (phase ``extracting``). Every member is checked before its data is
   read (zip and 7z: all members, from the central directory, before any data): an unsafe
   name (absolute, drive letter, backslash, ``..``, NUL or other control characters, into
   ``.ddb``; see :func:`tools.safepath.normalize_relpath`), a symlink, hardlink, device, FIFO
   or socket, an encrypted member, a duplicate name (after Unicode NFC normalisation and
   ignoring case, since the dataset may be copied to a case-insensitive file system), a name
   that is both a file and a folder, or overlapping zip entries fails the whole task with an
   error naming the member. Data is streamed in 64 KiB reads into numbered files in a fresh
   ``.ddb/tmp/archive-extract-<taskId>/`` (no archive name ever becomes a path there),
   counting the bytes actually written, so a header that lies about sizes gains nothing.
2. **Move in** (phase ``moving``). Every target is planned first: its folders are walked
   without following symlinks (:func:`tools.safepath.open_folder_nofollow`), a symlink or
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

import bz2
import contextlib
import gzip
import io
import json
import lzma
import os
import shutil
import stat
import struct
import tarfile
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

import py7zr
from py7zr.exceptions import ArchiveError, Bad7zFile, PasswordRequired
from py7zr.helpers import get_sanitized_output_path
from py7zr.io import Py7zIO, WriterFactory

from tools.contract import (
    InvalidParams,
    Plan,
    Reporter,
    ToolContext,
    ToolError,
    ToolResult,
    ToolSpec,
)
from tools.safepath import (
    SERVICE_FOLDER,
    UnsafePath,
    lstat_in_dataset,
    normalize_relpath,
    open_folder_nofollow,
    resolve_in_dataset,
)

READ_CHUNK = 64 * 1024  # small reads bound the libraries' read-ahead (see the ratio cap)
MAX_ENTRIES = 20_000
MAX_COMPRESSION_RATIO = 200
RATIO_GRACE_BYTES = 16 * 1024**2
MAX_LOGGED_MEMBERS = 50
STAGING_PREFIX = "archive-extract-"
JOURNAL = "moves.json"
EXTRACTING = "extracting"
MOVING = "moving"

# (suffix, format): longest suffixes first, so ``a.tar.gz`` is a tar, ``a.gz`` a single file.
SUFFIXES: tuple[tuple[str, str], ...] = (
    (".tar.gz", "tar"), (".tgz", "tar"), (".tar.bz2", "tar"), (".tar.xz", "tar"),
    (".tar", "tar"), (".zip", "zip"), (".7z", "7z"),
    (".gz", "gz"), (".bz2", "bz2"), (".xz", "xz"),
)
ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length
ZIP_LOCAL_SIGNATURE = b"PK\x03\x04"


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


SINGLE_FILE: dict[str, Callable[[Any], io.BufferedIOBase]] = {
    "gz": lambda f: gzip.GzipFile(fileobj=f, mode="rb"),
    "bz2": lambda f: bz2.BZ2File(f, mode="rb"),
    "xz": lambda f: lzma.LZMAFile(f, mode="rb"),
}

SPEC = ToolSpec(
    id="archive-extract",
    version="1",
    title="Extract an archive into the dataset",
    required_access="Write",
    produces_artifact=False,
    result_extension=None,
    input_schema={
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "required": ["sourcePath"],
        "properties": {
            "sourcePath": {"type": "string", "minLength": 1, "maxLength": 1024,
                           "description": "The archive entry (zip, tar[.gz|.bz2|.xz], tgz, 7z, "
                                          ".gz, .bz2, .xz)."},
            "destPath": {"type": ["string", "null"], "maxLength": 1024,
                         "description": "Folder to extract into; default: the archive's folder."},
            "deleteArchive": {"type": ["boolean", "null"],
                              "description": "Remove the archive after a successful extraction."},
            "overwrite": {"type": ["boolean", "null"],
                          "description": "Replace existing files (default: skip them)."},
        },
    },
)


@dataclass(frozen=True, kw_only=True)
class Request:
    """A checked extraction request."""

    source_rel: str
    source: Path
    fmt: str
    suffix: str
    dest_rel: str
    delete_archive: bool
    overwrite: bool

    @property
    def single_name(self) -> str:
        """The output name of a single-file archive: its name minus the suffix."""
        name = PurePosixPath(self.source_rel).name
        return name[: len(name) - len(self.suffix)]


def archive_format(name: str) -> tuple[str, str]:
    """``(format, suffix)`` of an archive file name, or :class:`InvalidParams`."""
    lower = name.lower()
    for suffix, fmt in SUFFIXES:
        if lower.endswith(suffix):
            return fmt, name[len(name) - len(suffix):]
    known = ", ".join(s for s, _ in SUFFIXES)
    raise InvalidParams(f"'{name}' is not a supported archive (known suffixes: {known})")


def parse(params: dict[str, Any], dataset_root: Path, *, must_exist: bool = True) -> Request:
    """Check the parameters against the dataset; raises :class:`InvalidParams`.

    ``must_exist=False`` is for finishing an interrupted attempt, which may have deleted the
    archive already."""
    requested = params.get("sourcePath")
    if not isinstance(requested, str):
        raise InvalidParams("sourcePath must be a string")
    source_rel = normalize_relpath(requested, what="sourcePath")
    source = resolve_in_dataset(dataset_root, source_rel)
    if must_exist and not source.exists():
        raise InvalidParams(f"sourcePath '{source_rel}' does not exist")
    if must_exist and not source.is_file():
        raise InvalidParams(f"sourcePath '{source_rel}' is not a file")
    fmt, suffix = archive_format(PurePosixPath(source_rel).name)
    dest = params.get("destPath")
    if dest is None:
        dest = PurePosixPath(source_rel).parent.as_posix()
    dest_rel = normalize_relpath(dest, allow_root=True, what="destPath")
    dest_path = resolve_in_dataset(dataset_root, dest_rel, allow_root=True)
    if dest_path.exists() and not dest_path.is_dir():
        raise InvalidParams(f"destPath '{dest_rel}' is a file, not a folder")
    request = Request(
        source_rel=source_rel, source=source, fmt=fmt, suffix=suffix, dest_rel=dest_rel,
        delete_archive=bool(params.get("deleteArchive")), overwrite=bool(params.get("overwrite")),
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
    staging = _staging_folder(ctx)
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
    ctx.reporter.log(f"Extracting {request.source_rel} ({_mb(size)}) into "
                     f"'{request.dest_rel or '.'}'")
    shutil.rmtree(staging, ignore_errors=True)  # a killed attempt's partial staging
    staging.mkdir()
    stage = Stage(request=request, folder=staging, reporter=ctx.reporter,
                  max_bytes=ctx.limits.max_archive_extract_bytes, archive_size=size)
    with open(request.source, "rb") as raw_file:
        EXTRACTORS[request.fmt](stage, CountingReader(raw_file))
    stage.finished()
    return plan(ctx.dataset_root, request, stage)


def _staging_folder(ctx: ToolContext) -> Path:
    """``.ddb/tmp/archive-extract-<taskId>`` (the same for every attempt of a task), with
    ``.ddb/tmp`` checked to be a real folder."""
    tmp_rel = f"{SERVICE_FOLDER}/tmp"
    try:
        fd = open_folder_nofollow(ctx.dataset_root, tmp_rel, create=True)
    except UnsafePath as exc:
        raise ToolError(f"the dataset's {tmp_rel} folder is unusable: {exc}") from None
    assert fd is not None
    os.close(fd)
    return ctx.dataset_root / tmp_rel / f"{STAGING_PREFIX}{ctx.task_id}"


# --- reading archives ------------------------------------------------------------------------


class CountingReader(io.RawIOBase):
    """A read-only view of the archive file counting the bytes read (for the ratio cap)."""

    def __init__(self, fileobj: IO[bytes]) -> None:
        super().__init__()
        self._f = fileobj
        self.count = 0

    def read(self, n: int | None = -1) -> bytes:
        data = self._f.read(-1 if n is None else n)
        self.count += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        n = self._f.readinto(buffer)  # type: ignore[attr-defined]
        self.count += n or 0
        return n or 0

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """The archive file is closed by its owner, not by the library reading it."""


LIBRARY_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError,
    NotImplementedError, RuntimeError, ValueError, struct.error,
)


def _shown(name: str) -> str:
    """A member name fit for a message: control characters and backslashes escaped."""
    return "".join(
        c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode("ascii")
        for c in name
    )


def _member_error(name: str, exc: BaseException) -> ToolError:
    return ToolError(f"archive member '{_shown(name)}' cannot be extracted "
                     f"(corrupt, truncated or unsupported): {exc}")


@dataclass
class Stage:
    """Members checked and written to the staging folder, with the caps enforced."""

    request: Request
    folder: Path
    reporter: Reporter
    max_bytes: int
    archive_size: int
    entries: int = 0
    written: int = 0
    files: dict[str, Path] = field(default_factory=dict)  # target rel → staged file
    file_keys: dict[str, str] = field(default_factory=dict)  # duplicate key → member name
    dir_keys: dict[str, str] = field(default_factory=dict)

    def admit(self, name: str, kind: str, *, encrypted: bool = False) -> str | None:
        """Check one member; its target path for a file, None for a folder."""
        self.entries += 1
        shown = _shown(name)
        if self.entries > MAX_ENTRIES:
            raise ToolError(f"archive member '{shown}' is past the limit of {MAX_ENTRIES} entries")
        if kind not in ("file", "dir"):
            raise ToolError(f"archive member '{shown}' is a {kind}; links and special files "
                            "are not extracted")
        if encrypted:
            raise ToolError(f"archive member '{shown}' is encrypted; encrypted archives are "
                            "not supported")
        try:
            rel = normalize_relpath(name, allow_root=kind == "dir", what="archive member")
            dest = self.request.dest_rel
            target = normalize_relpath(f"{dest}/{rel}" if dest else rel, allow_root=True,
                                       what="archive member")
        except UnsafePath as exc:
            raise ToolError(f"unsafe {exc}") from None
        if kind == "dir":
            self._claim_folders(target, name, include_self=True)
            return None
        self._claim_file(target, name)
        return target

    def _claim_folders(self, target: str, name: str, *, include_self: bool) -> None:
        parts = target.split("/") if target else []
        upto = len(parts) if include_self else len(parts) - 1
        for i in range(1, upto + 1):
            key = _key("/".join(parts[:i]))
            if key in self.file_keys:
                raise ToolError(f"archive member '{_shown(name)}' needs a folder where member "
                                f"'{_shown(self.file_keys[key])}' is a file")
            self.dir_keys.setdefault(key, name)

    def _claim_file(self, target: str, name: str) -> None:
        key = _key(target)
        if key in self.file_keys:
            raise ToolError(f"archive member '{_shown(name)}' is a duplicate of "
                            f"'{_shown(self.file_keys[key])}' (names are compared after Unicode "
                            "normalisation, ignoring case)")
        if key in self.dir_keys:
            raise ToolError(f"archive member '{_shown(name)}' is a file where member "
                            f"'{_shown(self.dir_keys[key])}' needs a folder")
        self._claim_folders(target, name, include_self=False)
        self.file_keys[key] = name

    def declared(self, sizes: Iterator[tuple[str, int]]) -> None:
        """Refuse early when the sizes the headers declare already exceed the byte cap."""
        total = 0
        for name, size in sizes:
            total += size
            if total > self.max_bytes:
                raise self.too_big(name)

    def too_big(self, name: str) -> ToolError:
        return ToolError(f"archive member '{_shown(name)}' takes the extraction past the limit "
                         f"of {self.max_bytes} bytes (MaxArchiveExtractSizeBytes)")

    def sink(self, target: str, name: str, raw: CountingReader) -> Sink:
        """Where the data of one member goes."""
        staged = self.folder / f"{len(self.files):06d}"
        self.files[target] = staged
        return Sink(stage=self, name=name, raw=raw, handle=open(staged, "xb"), raw_start=raw.count)

    def copy(self, target: str, name: str, source: Readable, raw: CountingReader) -> None:
        """Stream one member from ``source`` into the staging folder."""
        with self.sink(target, name, raw) as sink:
            while True:
                try:
                    chunk = source.read(READ_CHUNK)
                except LIBRARY_ERRORS as exc:
                    raise _member_error(name, exc) from None
                if not chunk:
                    break
                sink.write(chunk)

    def member_done(self, name: str, raw: CountingReader, size: int) -> None:
        done = len(self.files)
        if done <= MAX_LOGGED_MEMBERS:
            self.reporter.log(f"Extracted {name} ({_mb(size)})")
        self.reporter.progress(self.fraction(raw), EXTRACTING)

    def fraction(self, raw: CountingReader) -> float:
        return min(0.99, raw.count / self.archive_size) if self.archive_size else 0.0

    def finished(self) -> None:
        more = len(self.files) - MAX_LOGGED_MEMBERS
        if more > 0:
            self.reporter.log(f"... and {more} more files")
        self.reporter.progress(1.0, EXTRACTING)


@dataclass
class Sink:
    """The staged file of one member: counts real bytes, enforces the caps, checks cancel."""

    stage: Stage
    name: str
    raw: CountingReader
    handle: IO[bytes]
    raw_start: int
    size: int = 0

    def write(self, chunk: bytes | bytearray | memoryview) -> int:
        n = len(chunk)
        stage = self.stage
        self.size += n
        stage.written += n
        if stage.written > stage.max_bytes:
            raise stage.too_big(self.name)
        consumed = max(1, self.raw.count - self.raw_start)
        if self.size > RATIO_GRACE_BYTES and self.size > MAX_COMPRESSION_RATIO * consumed:
            raise ToolError(f"archive member '{_shown(self.name)}' expands more than "
                            f"{MAX_COMPRESSION_RATIO}:1 (a compression bomb?)")
        self.handle.write(chunk)
        stage.reporter.progress(stage.fraction(self.raw), EXTRACTING)
        stage.reporter.check_cancelled()
        return n

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()
        if exc[0] is None:
            self.stage.member_done(self.name, self.raw, self.size)


def extract_zip(stage: Stage, raw: CountingReader) -> None:
    try:
        zf = zipfile.ZipFile(raw)  # type: ignore[arg-type]
    except LIBRARY_ERRORS as exc:
        raise ToolError(f"'{stage.request.source_rel}' is not a readable zip archive "
                        f"(corrupt or truncated): {exc}") from None
    with zf:
        infos = zf.infolist()
        targets = [stage.admit(i.orig_filename, _zip_kind(i), encrypted=bool(i.flag_bits & 1))
                   for i in infos]
        _check_zip_layout(raw, infos, zf.start_dir)  # type: ignore[attr-defined]
        stage.declared((i.orig_filename, i.file_size) for i, t in zip(infos, targets) if t)
        for info, target in zip(infos, targets):
            if target is None:
                continue
            try:
                source = zf.open(info)
            except LIBRARY_ERRORS as exc:
                raise _member_error(info.orig_filename, exc) from None
            with source:
                stage.copy(target, info.orig_filename, source, raw)


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16 if info.create_system == 3 else 0
    if stat.S_IFMT(mode):
        return _mode_kind(mode)
    return "dir" if info.orig_filename.endswith("/") else "file"


def _mode_kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    return "special file"


def _check_zip_layout(raw: CountingReader, infos: list[zipfile.ZipInfo], end: int) -> None:
    """Refuse entries whose data overlap another entry or the central directory (the
    "overlapping files" bomb makes many names share one compressed stream)."""
    spans = []
    for info in infos:
        raw.seek(info.header_offset)
        header = raw.read(ZIP_LOCAL_HEADER.size)
        if len(header) != ZIP_LOCAL_HEADER.size or header[:4] != ZIP_LOCAL_SIGNATURE:
            raise ToolError(f"archive member '{_shown(info.orig_filename)}' has no valid local "
                            "header (corrupt or truncated archive)")
        _, name_len, extra_len = ZIP_LOCAL_HEADER.unpack(header)
        data_end = info.header_offset + len(header) + name_len + extra_len + info.compress_size
        spans.append((info.header_offset, data_end, info.orig_filename))
    spans.sort()
    for (_start, stop, name), (next_start, _, next_name) in zip(spans, spans[1:] + [(end, 0, "")]):
        if stop > next_start:
            other = f"member '{_shown(next_name)}'" if next_name else "the central directory"
            raise ToolError(f"archive member '{_shown(name)}' overlaps {other} "
                            "(overlapping entries)")


def extract_tar(stage: Stage, raw: CountingReader) -> None:
    last = "(start of archive)"
    try:
        tf = tarfile.open(fileobj=raw, mode="r|*")  # type: ignore[call-overload]
    except LIBRARY_ERRORS as exc:
        raise ToolError(f"'{stage.request.source_rel}' is not a readable tar archive: "
                        f"{exc}") from None
    with tf:
        while True:
            try:
                member = tf.next()
            except LIBRARY_ERRORS as exc:
                raise ToolError(f"the tar archive is corrupt or truncated after member "
                                f"'{_shown(last)}': {exc}") from None
            if member is None:
                return
            last = member.name
            target = stage.admit(member.name, _tar_kind(member))
            if target is None:
                continue
            try:
                source = tf.extractfile(member)
            except LIBRARY_ERRORS as exc:
                raise _member_error(member.name, exc) from None
            assert source is not None
            with source:
                stage.copy(target, member.name, source, raw)


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.isreg():
        return "file"
    if member.isdir():
        return "dir"
    if member.issym():
        return "symbolic link"
    if member.islnk():
        return "hard link"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "FIFO"
    return "special file"


def extract_single(stage: Stage, raw: CountingReader) -> None:
    name = stage.request.single_name
    target = stage.admit(name, "file")
    assert target is not None
    opener = SINGLE_FILE[stage.request.fmt]
    try:
        with opener(raw) as source:
            stage.copy(target, name, source, raw)
    except LIBRARY_ERRORS as exc:
        raise _member_error(name, exc) from None


def extract_7z(stage: Stage, raw: CountingReader) -> None:
    errors: tuple[type[BaseException], ...] = (
        *LIBRARY_ERRORS, ArchiveError, Bad7zFile, PasswordRequired, KeyError,
    )
    try:
        archive = py7zr.SevenZipFile(raw, mode="r", blocksize=READ_CHUNK)  # type: ignore[arg-type]
    except PasswordRequired:
        raise ToolError(f"'{stage.request.source_rel}' is encrypted (its member names too); "
                        "encrypted archives are not supported") from None
    except errors as exc:
        raise ToolError(f"'{stage.request.source_rel}' is not a readable 7z archive: "
                        f"{exc}") from None
    with archive:
        encrypted = archive.needs_password()
        members = list(archive.files)
        targets = [stage.admit(f.filename, _7z_kind(f), encrypted=encrypted) for f in members]
        stage.declared((f.filename, f.uncompressed or 0) for f, t in zip(members, targets) if t)
        factory = _SevenZipSinks(stage, raw, members, targets)
        try:
            archive.extractall(factory=factory)
        except (ToolError, Exception) as exc:
            factory.close_all()
            if isinstance(exc, ToolError) or not isinstance(exc, errors):
                raise
            raise _member_error(factory.current or "(unknown)", exc) from None
        factory.close_all()
        factory.create_missing_empty()


def _7z_kind(member: Any) -> str:
    if member.is_symlink or member.is_junction:
        return "symbolic link"
    if member.is_socket:
        return "special file"
    if member.is_directory:
        return "dir"
    mode = member.posix_mode
    if mode is not None and stat.S_IFMT(mode):
        return _mode_kind(mode)
    return "file"


class _SevenZipSinks(WriterFactory):
    """A py7zr writer factory streaming each member into a :class:`Sink`."""

    def __init__(self, stage: Stage, raw: CountingReader, members: list[Any],
                 targets: list[str | None]) -> None:
        self.stage = stage
        self.raw = raw
        self.by_key: dict[str, tuple[str, str]] = {}
        for member, target in zip(members, targets):
            if target is not None:
                key = get_sanitized_output_path(member.filename, None).as_posix()
                self.by_key[key] = (target, member.filename)
        self.open: list[Sink] = []
        self.received: set[str] = set()
        self.current: str | None = None

    def create(self, filename: str) -> _SevenZipWriter:
        if filename not in self.by_key:
            raise ToolError(f"archive member '{_shown(filename)}' was not announced in the "
                            "archive's header")
        target, name = self.by_key[filename]
        self.received.add(filename)
        self.current = name
        sink = self.stage.sink(target, name, self.raw)
        self.open.append(sink)
        return _SevenZipWriter(sink)

    def close_all(self) -> None:
        for sink in self.open:
            if not sink.handle.closed:
                sink.handle.close()

    def create_missing_empty(self) -> None:
        """py7zr never asks for empty members: stage them as empty files."""
        for key, (target, name) in self.by_key.items():
            if key not in self.received:
                with self.stage.sink(target, name, self.raw):
                    pass


class _SevenZipWriter(Py7zIO):
    """The ``py7zr.io.Py7zIO`` face of a :class:`Sink` (write only)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def write(self, s: bytes | bytearray) -> int:
        return self.sink.write(s)

    def read(self, size: int | None = None) -> bytes:
        return b""

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.sink.size

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        return None

    def size(self) -> int:
        return self.sink.size

    def close(self) -> None:
        self.sink.__exit__(None, None, None)


EXTRACTORS: dict[str, Callable[[Stage, CountingReader], None]] = {
    "zip": extract_zip, "tar": extract_tar, "7z": extract_7z,
    "gz": extract_single, "bz2": extract_single, "xz": extract_single,
}


def _key(path: str) -> str:
    return unicodedata.normalize("NFC", path).casefold()


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
            raise ToolError(f"moving '{_shown(failed)}' into the dataset failed, "
                            f"nothing was changed: {exc}") from None
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
            raise ToolError(f"cannot extract '{_shown(target)}': {exc}") from None
        staged = stage.files[target].name
        if st is None:
            moves.append(Move(target, staged, replace=False))
        elif stat.S_ISLNK(st.st_mode) or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise ToolError(f"cannot extract '{_shown(target)}': the dataset has a symbolic "
                            "link or special file there")
        elif not request.overwrite:
            skipped.append(target)
        elif stat.S_ISDIR(st.st_mode):
            raise ToolError(f"cannot extract '{_shown(target)}': the dataset has a folder there")
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


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:,.1f} MB"
