"""The ``bulk-download`` tool: a ZIP64 archive of a selection of entries or a whole dataset.

Members come from :func:`tools.archive.zip_policy.archive_members` (folders recursively; no paths =
the whole dataset with ``.ddb`` but without ``.ddb/build`` and ``.ddb/tmp``) and are
compressed per :func:`tools.archive.zip_policy.compress_type`, decided once per file by what the file
is (compressed formats and data stored, the rest deflated at zlib's default level, 6). Files are streamed in 1 MiB chunks into a
temporary ``.<name>.partial`` in the work folder, renamed to the final name at the end and
removed on cancellation or error.

Deflating is the slow part (~30 MB/s a core), so files of at least :data:`PARALLEL_MIN` that
are deflated are cut into :data:`PIECE` byte pieces compressed in parallel on the cluster
(:mod:`tools.runtime.fanout`), the way pigz does it: each piece is primed with the 32 KiB before it
and ends on a byte boundary (a sync flush; the last piece finishes the stream), so the pieces
concatenate into one valid deflate stream. The archive is written in order while the pieces
run, and progress advances as pieces finish. The same input gives the same bytes every time.
"""

from __future__ import annotations

import io
import os
import time
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.archive.zip_policy import Member, archive_members, compress_type
from tools.contract import (
    InvalidParams,
    Plan,
    Reporter,
    ToolContext,
    ToolError,
    ToolResult,
    text_param,
    tool_spec,
)
from tools.runtime.fanout import StopSignal, fan_out
from tools.runtime.safepath import output_file_name

CHUNK = 1024 * 1024
FORCE_ZIP64_FROM = 1024**3
PROGRESS_INTERVAL = 0.2
LOG_STEP = 0.05
LARGE_FILE_MIN = 16 * 1024**2
PARALLEL_MIN = 8 * 1024**2
PIECE = 8 * 1024**2
MEMBER_OVERHEAD = 160
ARCHIVE_OVERHEAD = 100
PHASE = "archiving"

SPEC = tool_spec(
    id="bulk-download",
    title="Download files as a ZIP archive",
    access="Read",
    artifact_extension=".zip",
    properties={
        "paths": {
            "type": ["array", "null"],
            "items": {"type": "string", "minLength": 1},
            "minItems": 1,
            "maxItems": 10000,
            "description": "Files or folders (recursively) to archive; null = whole dataset.",
        },
        "archiveName": text_param("Base name of the archive; '.zip' is appended when missing."),
    },
)


@dataclass(frozen=True)
class Selection:
    """What an archive will contain and what it will be called."""

    members: list[Member]
    archive_name: str

    @property
    def total_bytes(self) -> int:
        return sum(m.size for m in self.members)

    @property
    def estimated_output_bytes(self) -> int:
        overhead = sum(MEMBER_OVERHEAD + 2 * len(m.arcname.encode()) for m in self.members)
        return self.total_bytes + overhead + ARCHIVE_OVERHEAD


def validate(params: dict[str, Any], dataset_root: Path) -> Plan:
    """Check names and paths, expand the selection, estimate the archive size."""
    selection = select(params, dataset_root)
    return Plan(estimated_output_bytes=selection.estimated_output_bytes)


def run(params: dict[str, Any], ctx: ToolContext) -> ToolResult:
    """Write the archive into ``ctx.work_dir`` and return it as the artifact."""
    selection = select(params, ctx.dataset_root)
    final = ctx.work_dir / selection.archive_name
    partial = ctx.work_dir / f".{selection.archive_name}.partial"
    total = selection.total_bytes
    kinds = [compress_type(m) for m in selection.members]
    deflated = kinds.count(zipfile.ZIP_DEFLATED)
    ctx.reporter.log(f"Archiving {len(selection.members)} files ({_mb(total)}): "
                     f"{deflated} to deflate, {len(kinds) - deflated} stored as they are")
    try:
        _write_archive(partial, selection.members, kinds, _Meter(ctx.reporter, total), ctx)
        os.replace(partial, final)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    size = final.stat().st_size
    ctx.reporter.progress(1.0, PHASE)
    ctx.reporter.log(f"Archive complete: {len(selection.members)} files, {_mb(size)}")
    return ToolResult(
        artifact=final,
        summary={"files": len(selection.members), "bytes": total, "archiveBytes": size},
    )


def select(params: dict[str, Any], dataset_root: Path) -> Selection:
    """The members and the archive name of a run, or :class:`InvalidParams`."""
    paths = params.get("paths")
    if paths is not None and not (
        isinstance(paths, list) and paths and all(isinstance(p, str) for p in paths)
    ):
        raise InvalidParams("paths must be a non-empty list of strings or null")
    name = archive_name(params.get("archiveName"), dataset_root)
    return Selection(members=archive_members(dataset_root, paths), archive_name=name)


def archive_name(requested: str | None, dataset_root: Path) -> str:
    """A safe base name ending in ``.zip``: the requested one or ``<dataset>.zip``."""
    if requested is None:
        return f"{Path(os.path.abspath(dataset_root)).name or 'dataset'}.zip"
    return output_file_name(requested, what="archiveName", suffixes=(".zip",))


class _Meter:
    """Byte progress: throttled progress calls, a log line every 5% and per large file."""

    def __init__(self, reporter: Reporter, total: int) -> None:
        self.reporter = reporter
        self.total = total
        self.done = 0
        self.last_report = time.monotonic()
        self.next_log = LOG_STEP
        reporter.progress(0.0, PHASE)

    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 1.0

    def starting(self, member: Member) -> None:
        if member.size >= max(LARGE_FILE_MIN, self.total * LOG_STEP):
            self.reporter.log(f"Adding {member.arcname} ({_mb(member.size)})")

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        now = time.monotonic()
        if now - self.last_report >= PROGRESS_INTERVAL:
            self.last_report = now
            self.reporter.progress(self.fraction(), PHASE)
        if self.fraction() >= self.next_log and self.fraction() < 1.0:
            self.reporter.log(f"Archived {_mb(self.done)} of {_mb(self.total)}")
            self.next_log = (int(self.fraction() / LOG_STEP) + 1) * LOG_STEP
        self.reporter.check_cancelled()


@dataclass(frozen=True)
class Piece:
    """One piece of a large file to deflate on the cluster."""

    source: str
    offset: int
    length: int
    final: bool
    stream: str
    arcname: str


def _pieces(members: list[Member], kinds: list[int], work_dir: Path) -> dict[int, list[Piece]]:
    """The pieces of every member deflated in parallel, by member index."""
    plan: dict[int, list[Piece]] = {}
    for i, (m, kind) in enumerate(zip(members, kinds)):
        if m.size < PARALLEL_MIN or kind != zipfile.ZIP_DEFLATED:
            continue
        offsets = list(range(0, m.size, PIECE))
        plan[i] = [
            Piece(source=str(m.path), offset=o, length=min(PIECE, m.size - o),
                  final=(j == len(offsets) - 1), stream=str(work_dir / f".deflate-{i}-{j}"),
                  arcname=m.arcname)
            for j, o in enumerate(offsets)
        ]
    return plan


def _write_archive(target: Path, members: list[Member], kinds: list[int], meter: _Meter,
                   ctx: ToolContext) -> None:
    plan = _pieces(members, kinds, ctx.work_dir)
    stop = StopSignal(ctx.cancel_event)
    jobs = [(piece, stop) for i in sorted(plan) for piece in plan[i]]
    results = fan_out(deflate_piece, jobs, reporter=meter.reporter,
                      key_prefix=f"bulk_download_deflate-{ctx.task_id}")
    try:
        with zipfile.ZipFile(target, "w", allowZip64=True) as zf:
            for i, member in enumerate(members):
                meter.reporter.check_cancelled()
                meter.starting(member)
                if i in plan:
                    sizes = []
                    for piece in plan[i]:
                        sizes.append(next(results))
                        meter.advance(piece.length)
                    _write_deflated(zf, member, plan[i], sizes)
                else:
                    _write_member(zf, member, kinds[i], meter)
    finally:
        results.close()
        for pieces in plan.values():
            for piece in pieces:
                Path(piece.stream).unlink(missing_ok=True)


def deflate_piece(piece: Piece, stop: StopSignal) -> int:
    """Deflate one piece into its stream file; returns the compressed size.

    Runs as a task on the cluster."""
    try:
        with open(piece.source, "rb") as src, open(piece.stream, "wb") as dst:
            window = b""
            if piece.offset:
                src.seek(max(0, piece.offset - 32768))
                window = src.read(piece.offset - src.tell())
            compressor = (
                zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15, zdict=window)
                if window else zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
            )
            left = piece.length
            while left:
                stop.check()
                chunk = src.read(min(CHUNK, left))
                if not chunk:
                    raise ToolError(f"'{piece.arcname}' shrank during the run")
                left -= len(chunk)
                dst.write(compressor.compress(chunk))
            dst.write(compressor.flush(zlib.Z_FINISH if piece.final else zlib.Z_SYNC_FLUSH))
    except OSError as exc:
        Path(piece.stream).unlink(missing_ok=True)
        reason = exc.strerror or str(exc)
        raise ToolError(
            f"'{piece.arcname}' vanished or became unreadable during the run: {reason}"
        ) from None
    except BaseException:
        Path(piece.stream).unlink(missing_ok=True)
        raise
    return os.path.getsize(piece.stream)


def _crc_of(member: Member) -> int:
    crc = 0
    with _open_source(member) as src:
        for chunk in _chunks(src, member):
            crc = zlib.crc32(chunk, crc)
    return crc


def _write_deflated(
    zf: zipfile.ZipFile, member: Member, pieces: list[Piece], sizes: list[int]
) -> None:
    """Copy a member's deflated pieces in, with the local header ``ZipFile.open`` writes."""
    info = _zipinfo(member, zipfile.ZIP_DEFLATED)
    length = sum(p.length for p in pieces)
    if info.file_size != length:
        raise ToolError(f"'{member.arcname}' changed size during the run")
    zip64 = info.file_size >= FORCE_ZIP64_FROM or info.file_size * 1.05 > zipfile.ZIP64_LIMIT
    info.flag_bits = 0
    info.compress_size = sum(sizes)
    info.CRC = _crc_of(member)
    if not info.external_attr:
        info.external_attr = 0o600 << 16
    if not zip64 and info.compress_size > zipfile.ZIP64_LIMIT:
        raise ToolError(f"'{member.arcname}' compressed past 4 GiB")
    fp = zf.fp
    assert fp is not None
    fp.seek(zf.start_dir)  # type: ignore[attr-defined]
    info.header_offset = fp.tell()
    zf._writecheck(info)  # type: ignore[attr-defined]  # duplicate names, sizes
    zf._didModify = True  # type: ignore[attr-defined]
    fp.write(info.FileHeader(zip64))
    for piece in pieces:
        with open(piece.stream, "rb") as src:
            while chunk := src.read(CHUNK):
                fp.write(chunk)
        os.unlink(piece.stream)
    zf.filelist.append(info)
    zf.NameToInfo[info.filename] = info
    zf.start_dir = fp.tell()  # type: ignore[attr-defined]


def _write_member(zf: zipfile.ZipFile, member: Member, kind: int, meter: _Meter) -> None:
    with _open_source(member) as src:
        info = _zipinfo(member, kind)
        with zf.open(info, "w", force_zip64=info.file_size >= FORCE_ZIP64_FROM) as dst:
            for chunk in _chunks(src, member):
                dst.write(chunk)
                meter.advance(len(chunk))


def _open_source(member: Member) -> io.BufferedReader:
    try:
        return open(member.path, "rb")
    except OSError as exc:
        raise _unreadable(member, exc) from None


def _zipinfo(member: Member, kind: int) -> zipfile.ZipInfo:
    try:
        info = zipfile.ZipInfo.from_file(member.path, member.arcname, strict_timestamps=False)
    except OSError as exc:
        raise _unreadable(member, exc) from None
    info.compress_type = kind
    return info


def _chunks(src: io.BufferedReader, member: Member) -> Iterator[memoryview]:
    """1 MiB views of one reused buffer: never more than a chunk of the file in memory."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    while True:
        try:
            n = src.readinto(buffer)
        except OSError as exc:
            raise _unreadable(member, exc) from None
        if not n:
            return
        yield view[:n]


def _unreadable(member: Member, exc: OSError) -> ToolError:
    reason = exc.strerror or str(exc)
    return ToolError(f"'{member.arcname}' vanished or became unreadable during the run: {reason}")


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:,.1f} MB"
