"""Reading an archive member by member for ``archive-extract``: every member checked before
its data is read, data streamed into numbered files of a staging folder with the bytes
actually written counted (see :mod:`tools.archive_extract` for the rules and caps).

:class:`Stage` keeps the checks (names, kinds, duplicates, entry count, byte cap) and the
staged files; one ``extract_<format>`` function per format feeds it through a
:class:`CountingReader` (compressed bytes read, for the ratio cap).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
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

from tools.contract import InvalidParams, Reporter, ToolError
from tools.runtime.safepath import PathLimits, UnsafePath, normalize_relpath

READ_CHUNK = 64 * 1024  # small reads bound the libraries' read-ahead (see the ratio cap)
MAX_ENTRIES = 20_000
MAX_COMPRESSION_RATIO = 200
RATIO_GRACE_BYTES = 16 * 1024**2
MAX_LOGGED_MEMBERS = 50
EXTRACTING = "extracting"

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
    limits: PathLimits
    """The dataset's name and path lengths, which every target must fit."""

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


def shown_name(name: str) -> str:
    """A member name fit for a message: control characters and backslashes escaped."""
    return "".join(
        c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode("ascii")
        for c in name
    )


def _member_error(name: str, exc: BaseException) -> ToolError:
    return ToolError(f"archive member '{shown_name(name)}' cannot be extracted "
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
        shown = shown_name(name)
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
            self.request.limits.check(target, what=f"archive member '{shown}': its target")
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
                raise ToolError(f"archive member '{shown_name(name)}' needs a folder where member "
                                f"'{shown_name(self.file_keys[key])}' is a file")
            self.dir_keys.setdefault(key, name)

    def _claim_file(self, target: str, name: str) -> None:
        key = _key(target)
        if key in self.file_keys:
            raise ToolError(f"archive member '{shown_name(name)}' is a duplicate of "
                            f"'{shown_name(self.file_keys[key])}' (names are compared after Unicode "
                            "normalisation, ignoring case)")
        if key in self.dir_keys:
            raise ToolError(f"archive member '{shown_name(name)}' is a file where member "
                            f"'{shown_name(self.dir_keys[key])}' needs a folder")
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
        return ToolError(f"archive member '{shown_name(name)}' takes the extraction past the limit "
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
            self.reporter.log(f"Extracted {name} ({megabytes(size)})")
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
            raise ToolError(f"archive member '{shown_name(self.name)}' expands more than "
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
            raise ToolError(f"archive member '{shown_name(info.orig_filename)}' has no valid local "
                            "header (corrupt or truncated archive)")
        _, name_len, extra_len = ZIP_LOCAL_HEADER.unpack(header)
        data_end = info.header_offset + len(header) + name_len + extra_len + info.compress_size
        spans.append((info.header_offset, data_end, info.orig_filename))
    spans.sort()
    for (_start, stop, name), (next_start, _, next_name) in zip(spans, spans[1:] + [(end, 0, "")]):
        if stop > next_start:
            other = f"member '{shown_name(next_name)}'" if next_name else "the central directory"
            raise ToolError(f"archive member '{shown_name(name)}' overlaps {other} "
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
                                f"'{shown_name(last)}': {exc}") from None
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
            raise ToolError(f"archive member '{shown_name(filename)}' was not announced in the "
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


def megabytes(nbytes: int) -> str:
    return f"{nbytes / 1e6:,.1f} MB"
