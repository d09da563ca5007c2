"""The one safe-path function: every route and tool turns user paths into files with it.

A user path is dataset-relative, POSIX style. It may not be absolute, carry a drive letter
or a backslash, contain NUL or other control characters, contain a ``..`` segment, point
into the service's own ``.ddb`` folder, or be longer than the file system and the index
allow; once resolved (symlinks followed) it must still lie inside the dataset.

Lengths are counted in UTF-8 bytes of the normalised path, as it is written to disk: a name
(one segment) has at most ``NAME_MAX`` bytes (255), and the dataset root joined with the path
must fit in ``PATH_MAX`` (4096 with its terminating NUL), both as the dataset's file system
reports them (:func:`path_limits`). :func:`normalize_relpath` knows no root and checks the
name length against 255; :func:`resolve_in_dataset` checks both against the dataset's file
system, so a path the OS would refuse with ``ENAMETOOLONG`` is refused first, naming the limit.

Tools that write into the dataset go one step further with :func:`open_folder_nofollow`: the
target's folders are opened component by component without following any symlink, so a link
already present in the dataset can never carry a write outside it.
"""

from __future__ import annotations

import os
import re
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from tools.contract import InvalidParams

SERVICE_FOLDER = ".ddb"
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME_BYTES = 255  # NAME_MAX of the usual file systems (longer names fail with ENAMETOOLONG)
MAX_PATH_BYTES = 4096  # PATH_MAX of Linux, the terminating NUL included
MAX_PATH_CHARS = 1024  # the index's entry path column


class UnsafePath(InvalidParams):
    """A user path that could reach outside the dataset or into ``.ddb``."""


def normalize_relpath(user_path: str, *, allow_root: bool = False, what: str = "path") -> str:
    """Return ``user_path`` as a clean dataset-relative path, or raise :class:`UnsafePath`.

    ``""`` (or ``"."``, ``"/"``-free equivalents) means the dataset root and is only
    accepted with ``allow_root``. ``what`` names the path in messages (e.g.
    ``"archive member"``).
    """
    if not isinstance(user_path, str):
        raise UnsafePath(f"{what} must be a string")
    shown = _shown(user_path)
    if _CONTROL.search(user_path):
        raise UnsafePath(f"{what} '{shown}' contains a control character")
    if "\\" in user_path:
        raise UnsafePath(f"{what} '{shown}' contains a backslash")
    if user_path.startswith("/") or _DRIVE.match(user_path):
        raise UnsafePath(f"{what} '{shown}' is absolute; paths are relative to the dataset")
    parts = [p for p in user_path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafePath(f"{what} '{shown}' contains '..'")
    if parts and parts[0].lower() == SERVICE_FOLDER:
        raise UnsafePath(f"{what} '{shown}' points into the service folder {SERVICE_FOLDER}")
    if not parts and not allow_root:
        raise UnsafePath(f"{what} is empty")
    rel = "/".join(parts)
    if len(rel) > MAX_PATH_CHARS:
        raise UnsafePath(f"{what} is too long ({len(rel)} characters; at most {MAX_PATH_CHARS})")
    _check_names(rel, MAX_NAME_BYTES, what)
    return rel


@dataclass(frozen=True, kw_only=True)
class PathLimits:
    """How long names and paths may be in one dataset, in UTF-8 bytes."""

    name_bytes: int
    """The longest name (one path segment)."""
    path_bytes: int
    """The longest dataset-relative path: what ``PATH_MAX`` leaves once the root is joined."""

    def check(self, rel: str, *, what: str = "path") -> None:
        """Raise :class:`UnsafePath` when the normalised path ``rel`` does not fit."""
        _check_names(rel, self.name_bytes, what)
        size = _utf8_length(rel)
        if size > self.path_bytes:
            raise UnsafePath(f"{what} is {size} bytes long (UTF-8); paths in this dataset may have "
                             f"at most {self.path_bytes} bytes")


def path_limits(root: Path) -> PathLimits:
    """The limits of the file system holding ``root`` (``pathconf``; 255 and 4096 where it
    does not say), the root's own length (as given and with symlinks resolved, whichever is
    longer) taken off ``PATH_MAX``."""
    name_max = min(_pathconf(root, "PC_NAME_MAX", MAX_NAME_BYTES), MAX_NAME_BYTES)
    path_max = _pathconf(root, "PC_PATH_MAX", MAX_PATH_BYTES)
    root_bytes = max(len(os.fsencode(os.path.abspath(root))), len(os.fsencode(os.path.realpath(root))))
    return PathLimits(name_bytes=name_max, path_bytes=path_max - 1 - root_bytes - 1)  # NUL, "/"


def _pathconf(root: Path, name: str, default: int) -> int:
    try:
        value = os.pathconf(root, name)
    except (OSError, ValueError, AttributeError):  # no such file or system variable
        return default
    return value if value > 0 else default


def _check_names(rel: str, name_bytes: int, what: str) -> None:
    for name in rel.split("/"):
        size = _utf8_length(name)
        if size > name_bytes:
            raise UnsafePath(f"{what} segment '{_shown(name)[:40]}…' is {size} bytes long; "
                             f"a name may have at most {name_bytes} bytes (UTF-8)")


def _utf8_length(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _shown(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii")


def resolve_in_dataset(root: Path, user_path: str, *, allow_root: bool = False,
                       what: str = "path") -> Path:
    """Map a user path to a file system path inside ``root``, following symlinks safely.

    Raises :class:`UnsafePath` when the path is unsafe, too long for the dataset's file
    system (:func:`path_limits`) or resolves (through a symlink) outside the dataset or into
    ``.ddb``.
    """
    rel = normalize_relpath(user_path, allow_root=allow_root, what=what)
    path_limits(root).check(rel, what=what)
    candidate = root / rel if rel else root
    real_root = root.resolve()
    real = candidate.resolve()
    if real != real_root and not real.is_relative_to(real_root):
        raise UnsafePath(f"{what} '{rel}' resolves outside the dataset")
    if real.is_relative_to(real_root / SERVICE_FOLDER):
        raise UnsafePath(f"{what} '{rel}' resolves into the service folder {SERVICE_FOLDER}")
    return candidate


_BAD_NAME = re.compile(r"[/\\*?\[\]\x00-\x1f\x7f]")
MAX_OUTPUT_NAME_BYTES = 200
"""An output file name's longest UTF-8 form: a name has 255 bytes at most, and the service
adds a prefix and a suffix of its own to partial files."""


def output_file_name(requested: object, *, what: str, suffixes: tuple[str, ...]) -> str:
    """A user-chosen output file name: a plain base name (no folders, wildcards or control
    characters, and none once Unicode compatibility forms are folded: ``／`` is a ``/`` and
    ``‥`` a ``..`` to many programs; at most :data:`MAX_OUTPUT_NAME_BYTES`), with
    ``suffixes[0]`` appended unless it ends in one of ``suffixes``. Raises
    :class:`UnsafePath` naming ``what``."""
    if not isinstance(requested, str) or not requested.strip():
        raise UnsafePath(f"{what} must be a non-empty file name")
    shown = _shown(requested)
    folded = unicodedata.normalize("NFKC", requested)
    if any(_BAD_NAME.search(form) or form in (".", "..") for form in (requested, folded)):
        raise UnsafePath(
            f"{what} '{shown}' must be a plain file name (no '/', '\\', wildcards or control "
            "characters, nor characters that stand for them, such as fullwidth forms)"
        )
    if _utf8_length(requested) > MAX_OUTPUT_NAME_BYTES:
        raise UnsafePath(f"{what} is longer than {MAX_OUTPUT_NAME_BYTES} bytes (UTF-8)")
    if requested.lower().endswith(tuple(s.lower() for s in suffixes)):
        return requested
    return requested + suffixes[0]


def derived_file_name(stem: str, suffix: str) -> str:
    """``stem + suffix``, the stem cut (at a character) so the name stays within
    :data:`MAX_OUTPUT_NAME_BYTES`: an output named after an input whose name is already
    near the file system's limit."""
    room = MAX_OUTPUT_NAME_BYTES - _utf8_length(suffix)
    cut = stem.encode("utf-8", "surrogatepass")[:room].decode("utf-8", "ignore")
    return cut + suffix


def relpath_of(root: Path, path: Path) -> str:
    """The dataset-relative POSIX path of ``path`` (a path under ``root``)."""
    return path.relative_to(root).as_posix()


def open_folder_nofollow(root: Path, rel_dir: str, *, create: bool = False,
                         created: list[str] | None = None) -> int | None:
    """A file descriptor of the folder ``rel_dir`` (a normalised dataset-relative path, ``""``
    = the root), reached one component at a time without following any symlink below ``root``.

    Missing folders are made when ``create`` (their paths appended to ``created``), else the
    result is None. Raises :class:`UnsafePath` when a component is a symlink or not a folder,
    so a write through the descriptor cannot leave the dataset, whatever links exist in it.
    The caller closes the descriptor.
    """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    done: list[str] = []
    try:
        for part in [p for p in rel_dir.split("/") if p]:
            done.append(part)
            try:
                child = os.open(part, _NOFOLLOW_DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    os.close(fd)
                    return None
                os.mkdir(part, 0o777, dir_fd=fd)
                if created is not None:
                    created.append("/".join(done))
                child = os.open(part, _NOFOLLOW_DIR, dir_fd=fd)
            except OSError as exc:
                raise _not_a_folder(fd, part, "/".join(done), exc) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def lstat_in_dataset(root: Path, rel: str) -> os.stat_result | None:
    """``lstat`` of a normalised dataset-relative path whose parents are checked like
    :func:`open_folder_nofollow` (a symlink or file among them raises :class:`UnsafePath`);
    None when it does not exist."""
    parent, _, name = rel.rpartition("/")
    fd = open_folder_nofollow(root, parent)
    if fd is None:
        return None
    try:
        return os.lstat(name, dir_fd=fd)
    except FileNotFoundError:
        return None
    finally:
        os.close(fd)


_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def _not_a_folder(dir_fd: int, name: str, rel: str, exc: OSError) -> Exception:
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except OSError:
        return exc
    if stat.S_ISLNK(st.st_mode):
        return UnsafePath(f"'{rel}' is a symbolic link; nothing is written through it")
    if not stat.S_ISDIR(st.st_mode):
        return UnsafePath(f"'{rel}' is a file, not a folder")
    return exc
