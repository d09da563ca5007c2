"""What goes into a ZIP of dataset files, and how each file is compressed.

Shared by the ``bulk-download`` tool and the service's streaming download route, so both
archive the same files the same way:

- :func:`compress_type` stores files that are already compressed (deflating them again costs
  CPU and saves nothing) and deflates everything else. TIFF/GeoTIFF is stored: drone
  orthophotos, mosaics and COGs are almost always tiled and DEFLATE/LZW/JPEG/ZSTD-compressed
  internally, and re-deflating multi-GB rasters is the most expensive thing an archive could do.
  LAS is deflated (uncompressed point records shrink well); LAZ and COPC are stored.
- :func:`archive_members` expands a selection of user paths (or the whole dataset) into the
  regular files to archive, with every user path checked by :mod:`tools.safepath` and every
  symlink met on the way kept inside the dataset.
"""

from __future__ import annotations

import os
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tools.contract import InvalidParams
from tools.safepath import SERVICE_FOLDER, normalize_relpath, resolve_in_dataset

STORED_EXTENSIONS = frozenset({
    # rasters and images (TIFF: assumed internally compressed, see module docstring)
    "jpg", "jpeg", "jpe", "jp2", "j2k", "png", "webp", "gif", "heic", "heif", "avif",
    "tif", "tiff", "cog", "dng",
    # point clouds and 3D
    "laz", "copc", "glb", "drc", "3tz",
    # archives and compressed streams
    "zip", "7z", "rar", "gz", "tgz", "bz2", "tbz", "tbz2", "xz", "txz", "lz", "lz4", "lzma",
    "zst", "zstd", "br", "kmz", "npz", "parquet",
    # audio and video
    "mp4", "m4v", "mov", "mkv", "webm", "avi", "mpg", "mpeg", "ts", "mp3", "m4a", "aac",
    "ogg", "opus", "flac",
    # documents that are ZIP or compressed containers
    "pdf", "docx", "xlsx", "pptx", "odt", "ods", "odp", "epub",
})

EXCLUDED_SERVICE_FOLDERS = ("build", "tmp")


@dataclass(frozen=True)
class Member:
    """One file to archive: its name inside the archive, where it is, and its size."""

    arcname: str
    path: Path
    size: int


def compress_type(name: str) -> int:
    """``ZIP_STORED`` for already-compressed files (by extension), else ``ZIP_DEFLATED``."""
    suffix = PurePosixPath(name.replace("\\", "/")).suffix.lower().lstrip(".")
    return zipfile.ZIP_STORED if suffix in STORED_EXTENSIONS else zipfile.ZIP_DEFLATED


def archive_members(root: Path, rel_paths: list[str] | None) -> list[Member]:
    """The files a selection stands for, in a deterministic order, each once.

    ``rel_paths=None`` is the whole dataset, including ``.ddb`` but not ``.ddb/build`` or
    ``.ddb/tmp``. Otherwise each user path (file or folder, folders recursively) is checked
    with :func:`resolve_in_dataset` (raising :class:`~tools.safepath.UnsafePath`) and must
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
