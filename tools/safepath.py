"""The one safe-path function: every route and tool turns user paths into files with it.

A user path is dataset-relative, POSIX style. It may not be absolute, carry a drive letter
or a backslash, contain NUL or other control characters, contain a ``..`` segment, point
into the service's own ``.ddb`` folder, or be longer than the file system and the index
allow; once resolved (symlinks followed) it must still lie inside the dataset.
"""

from __future__ import annotations

import re
from pathlib import Path

from tools.contract import InvalidParams

SERVICE_FOLDER = ".ddb"
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME_BYTES = 255  # NAME_MAX of the usual file systems (longer names fail with ENAMETOOLONG)
MAX_PATH_CHARS = 1024  # the index's entry path column


class UnsafePath(InvalidParams):
    """A user path that could reach outside the dataset or into ``.ddb``."""


def normalize_relpath(user_path: str, *, allow_root: bool = False) -> str:
    """Return ``user_path`` as a clean dataset-relative path, or raise :class:`UnsafePath`.

    ``""`` (or ``"."``, ``"/"``-free equivalents) means the dataset root and is only
    accepted with ``allow_root``.
    """
    if not isinstance(user_path, str):
        raise UnsafePath("path must be a string")
    shown = user_path.encode("unicode_escape").decode("ascii")
    if _CONTROL.search(user_path):
        raise UnsafePath(f"path '{shown}' contains a control character")
    if "\\" in user_path:
        raise UnsafePath(f"path '{shown}' contains a backslash")
    if user_path.startswith("/") or _DRIVE.match(user_path):
        raise UnsafePath(f"path '{shown}' is absolute; paths are relative to the dataset")
    parts = [p for p in user_path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafePath(f"path '{shown}' contains '..'")
    if parts and parts[0].lower() == SERVICE_FOLDER:
        raise UnsafePath(f"path '{shown}' points into the service folder {SERVICE_FOLDER}")
    if len(user_path) > MAX_PATH_CHARS:
        raise UnsafePath(f"path is too long ({len(user_path)} characters; at most {MAX_PATH_CHARS})")
    if any(len(p.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for p in parts):
        raise UnsafePath(f"path '{shown[:80]}...' has a name too long (at most {MAX_NAME_BYTES} bytes)")
    if not parts and not allow_root:
        raise UnsafePath("path is empty")
    return "/".join(parts)


def resolve_in_dataset(root: Path, user_path: str, *, allow_root: bool = False) -> Path:
    """Map a user path to a file system path inside ``root``, following symlinks safely.

    Raises :class:`UnsafePath` when the path is unsafe or resolves (through a symlink)
    outside the dataset or into ``.ddb``.
    """
    rel = normalize_relpath(user_path, allow_root=allow_root)
    candidate = root / rel if rel else root
    real_root = root.resolve()
    real = candidate.resolve()
    if real != real_root and not real.is_relative_to(real_root):
        raise UnsafePath(f"path '{rel}' resolves outside the dataset")
    if real.is_relative_to(real_root / SERVICE_FOLDER):
        raise UnsafePath(f"path '{rel}' resolves into the service folder {SERVICE_FOLDER}")
    return candidate


_BAD_NAME = re.compile(r"[/\\*?\[\]\x00-\x1f\x7f]")


def output_file_name(requested: object, *, what: str, suffixes: tuple[str, ...]) -> str:
    """A user-chosen output file name: a plain base name (no folders, wildcards or control
    characters, at most 200 bytes), with ``suffixes[0]`` appended unless it ends in one of
    ``suffixes``. Raises :class:`UnsafePath` naming ``what``."""
    if not isinstance(requested, str) or not requested.strip():
        raise UnsafePath(f"{what} must be a non-empty file name")
    shown = requested.encode("unicode_escape").decode("ascii")
    if _BAD_NAME.search(requested) or requested in (".", ".."):
        raise UnsafePath(
            f"{what} '{shown}' must be a plain file name "
            "(no '/', '\\', wildcards or control characters)"
        )
    if len(requested.encode("utf-8", "surrogatepass")) > 200:  # a file name: 255 bytes at most
        raise UnsafePath(f"{what} is longer than 200 bytes (UTF-8)")
    if requested.lower().endswith(tuple(s.lower() for s in suffixes)):
        return requested
    return requested + suffixes[0]


def relpath_of(root: Path, path: Path) -> str:
    """The dataset-relative POSIX path of ``path`` (a path under ``root``)."""
    return path.relative_to(root).as_posix()
