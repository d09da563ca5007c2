"""What goes into a ZIP of dataset files, and how each file is compressed.

Shared by the ``bulk-download`` tool and the service's streaming download route, so both
archive the same files the same way:

- :func:`compress_type` decides per file, by what the file is, whether deflating it is worth
  the CPU (deflate runs at ~30 MB/s a core, storing at disk speed):

  1. a format that is compressed by definition is stored, by its extension alone and
     without reading it (:data:`COMPRESSED_FORMATS`: JPEG, PNG, WebP, JPEG 2000, LAZ/COPC,
     ZIP and the other archives and compressed streams, lossy audio and video, office
     documents, which are ZIP containers);
  2. a TIFF (recognised by its header, whatever its name: GeoTIFF, COG, ...) is decided by
     the Compression tag of its first image, read from the header (a few hundred bytes):
     uncompressed (1) is deflated, a real codec (LZW, JPEG, DEFLATE, ZSTD, LERC, WebP, ...)
     is stored; anything else (PackBits, fax codes, a TIFF with sub-images such as a DNG, a
     header that cannot be read) goes to rule 3;
  3. everything else is tried: up to three 64 KiB samples (start, middle, end) are deflated
     at level 1, and the file is deflated when they shrink below :data:`WORTH_DEFLATING`
     (90 %) of their size, else stored. Text, CSV, LAS, uncompressed rasters and unknown
     formats that compress are deflated; random or encrypted bytes, compressed data under
     any name, and files of a few bytes (which deflate cannot shrink) are stored.

  Deciding costs one open and a few small reads per file that is not in rule 1, against
  reading and compressing the whole file.
- :func:`archive_members` expands a selection of user paths (or the whole dataset) into the
  regular files to archive, with every user path checked by :mod:`tools.runtime.safepath` and every
  symlink met on the way kept inside the dataset.
"""

from __future__ import annotations

import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tools.contract import InvalidParams
from tools.runtime.safepath import SERVICE_FOLDER, normalize_relpath, resolve_in_dataset

COMPRESSED_FORMATS = frozenset({
    # images whose pixels are compressed by the format itself
    "jpg", "jpeg", "jpe", "jp2", "j2k", "jpx", "png", "webp", "gif", "heic", "heif", "avif",
    "jxl",
    # point clouds and meshes
    "laz", "copc", "drc",
    # archives and compressed streams
    "zip", "7z", "rar", "gz", "tgz", "bz2", "tbz", "tbz2", "xz", "txz", "lz", "lz4", "lzma",
    "zst", "zstd", "br", "kmz", "3tz",
    # audio and video
    "mp4", "m4v", "mov", "mkv", "webm", "mpg", "mpeg", "mp3", "m4a", "aac", "ogg", "opus",
    "flac",
    # documents that are ZIP containers
    "docx", "xlsx", "pptx", "odt", "ods", "odp", "epub",
})

TIFF_UNCOMPRESSED = 1
TIFF_CODECS = frozenset({
    5,  # LZW
    6, 7, 34892,  # JPEG (old style, new style, lossy DNG)
    8, 32946,  # DEFLATE (Adobe, old code)
    34712, 33003, 33005,  # JPEG 2000
    34887,  # LERC
    34925,  # LZMA
    50000,  # ZSTD
    50001,  # WebP
    50002, 52546,  # JPEG XL
})
SAMPLE_BYTES = 64 * 1024
WORTH_DEFLATING = 0.9
_TIFF_MAX_TAGS = 4096
_TIFF_COMPRESSION = 259
_TIFF_SUB_IFDS = 330

EXCLUDED_SERVICE_FOLDERS = ("build", "tmp")


@dataclass(frozen=True)
class Member:
    """One file to archive: its name inside the archive, where it is, and its size."""

    arcname: str
    path: Path
    size: int


def compress_type(member: Member) -> int:
    """``ZIP_STORED`` or ``ZIP_DEFLATED`` for one file, by the rules in the module docstring.

    A file that cannot be read is deflated (the archive's own read then says why)."""
    suffix = PurePosixPath(member.arcname.replace("\\", "/")).suffix.lower().lstrip(".")
    if suffix in COMPRESSED_FORMATS:
        return zipfile.ZIP_STORED
    try:
        with open(member.path, "rb") as src:
            compression = tiff_compression(src)
            if compression == TIFF_UNCOMPRESSED:
                return zipfile.ZIP_DEFLATED
            if compression in TIFF_CODECS:
                return zipfile.ZIP_STORED
            deflates = _samples_deflate(src, member.size)
    except OSError:
        return zipfile.ZIP_DEFLATED
    return zipfile.ZIP_DEFLATED if deflates else zipfile.ZIP_STORED


def tiff_compression(src: BinaryIO) -> int | None:
    """The Compression tag of a TIFF's first image (1 when absent, as TIFF says), or None
    for a file that is not a TIFF, a TIFF with sub-images, or a header that cannot be read."""
    src.seek(0)
    header = src.read(16)
    order = {b"II": "<", b"MM": ">"}.get(header[:2])
    if order is None or len(header) < 8:
        return None
    (version,) = struct.unpack(order + "H", header[2:4])
    if version == 42:
        (first,) = struct.unpack(order + "I", header[4:8])
        count_fmt, entry_size, value_at = "H", 12, 8
    elif version == 43 and len(header) == 16:
        (first,) = struct.unpack(order + "Q", header[8:16])
        count_fmt, entry_size, value_at = "Q", 20, 12
    else:
        return None
    src.seek(first)
    count_bytes = src.read(struct.calcsize(count_fmt))
    if len(count_bytes) != struct.calcsize(count_fmt):
        return None
    (count,) = struct.unpack(order + count_fmt, count_bytes)
    if not 0 < count <= _TIFF_MAX_TAGS:
        return None
    table = src.read(count * entry_size)
    if len(table) != count * entry_size:
        return None
    compression = TIFF_UNCOMPRESSED
    for i in range(0, len(table), entry_size):
        tag, kind = struct.unpack(order + "HH", table[i:i + 4])
        if tag == _TIFF_SUB_IFDS:
            return None
        if tag == _TIFF_COMPRESSION:
            value = table[i + value_at:i + value_at + 4]
            compression = (struct.unpack(order + "H", value[:2])[0] if kind == 3  # SHORT
                           else struct.unpack(order + "I", value)[0])
    return compression


def _samples_deflate(src: BinaryIO, size: int) -> bool:
    """Whether up to three samples of the file shrink enough at zlib level 1."""
    if size <= 3 * SAMPLE_BYTES:
        offsets = [0]
        length = size
    else:
        offsets = [0, (size - SAMPLE_BYTES) // 2, size - SAMPLE_BYTES]
        length = SAMPLE_BYTES
    raw = compressed = 0
    for offset in offsets:
        src.seek(offset)
        data = src.read(length)
        raw += len(data)
        deflate = zlib.compressobj(1, zlib.DEFLATED, -15)  # raw deflate, as in a ZIP
        compressed += len(deflate.compress(data)) + len(deflate.flush())
    return raw == 0 or compressed < WORTH_DEFLATING * raw


def archive_members(root: Path, rel_paths: list[str] | None) -> list[Member]:
    """The files a selection stands for, in a deterministic order, each once.

    ``rel_paths=None`` is the whole dataset, including ``.ddb`` but not ``.ddb/build`` or
    ``.ddb/tmp``. Otherwise each user path (file or folder, folders recursively) is checked
    with :func:`resolve_in_dataset` (raising :class:`~tools.runtime.safepath.UnsafePath`) and must
    exist (:class:`InvalidParams` otherwise). Symlinks found while walking are followed only
    when they resolve inside the dataset and outside the service folders the selection
    excludes; non-regular files (FIFOs, sockets, devices) are skipped.
    """
    walker = _Walker.for_selection(root, whole_dataset=rel_paths is None)
    if rel_paths is None:
        found = walker.walk_dir(root, "")
    else:
        found = (m for p in rel_paths for m in walker.expand(p))
    return list(_unique(found))


def _unique(members: Iterator[Member]) -> Iterator[Member]:
    seen: set[str] = set()
    for member in members:
        if member.arcname not in seen:
            seen.add(member.arcname)
            yield member


@dataclass
class _Walker:
    root: Path
    real_root: Path
    excluded: tuple[Path, ...]
    stack: list[Path] = field(default_factory=list)

    @classmethod
    def for_selection(cls, root: Path, *, whole_dataset: bool) -> _Walker:
        real_root = root.resolve()
        service = real_root / SERVICE_FOLDER
        excluded = (
            tuple(service / name for name in EXCLUDED_SERVICE_FOLDERS)
            if whole_dataset
            else (service,)
        )
        return cls(root=root, real_root=real_root, excluded=excluded)

    def allowed(self, real: Path) -> bool:
        inside = real == self.real_root or real.is_relative_to(self.real_root)
        return inside and not any(real.is_relative_to(ex) for ex in self.excluded)

    def expand(self, user_path: str) -> Iterator[Member]:
        path = resolve_in_dataset(self.root, user_path)
        rel = normalize_relpath(user_path)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise InvalidParams(f"entry '{rel}' does not exist") from None
        except OSError as exc:
            raise InvalidParams(f"entry '{rel}' cannot be read: {exc.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            return self.walk_dir(path, rel)
        if stat.S_ISREG(st.st_mode):
            return iter([Member(rel, path, st.st_size)])
        raise InvalidParams(f"entry '{rel}' is not a regular file or folder")

    def walk_dir(self, path: Path, rel: str) -> Iterator[Member]:
        real = path.resolve()
        if real in self.stack:
            return
        self.stack.append(real)
        try:
            for entry in self.listing(path, rel):
                yield from self.visit(entry, real, f"{rel}/{entry.name}" if rel else entry.name)
        finally:
            self.stack.pop()

    def listing(self, path: Path, rel: str) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(path) as entries:
                return sorted(entries, key=lambda e: e.name)
        except OSError as exc:
            raise InvalidParams(f"folder '{rel or '.'}' cannot be read: {exc.strerror}") from None

    def visit(self, entry: os.DirEntry[str], real_dir: Path, rel: str) -> Iterator[Member]:
        path = Path(entry.path)
        real = path.resolve() if entry.is_symlink() else real_dir / entry.name
        if not self.allowed(real):
            return
        try:
            st = path.stat()
        except OSError:
            return
        if stat.S_ISDIR(st.st_mode):
            yield from self.walk_dir(path, rel)
        elif stat.S_ISREG(st.st_mode):
            yield Member(rel, path, st.st_size)
