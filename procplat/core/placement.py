"""The disk side of putting files into a dataset and taking them out, without the index.

- :class:`FileVersion` tells one version of a file from another without reading it (a file
  renamed over another has a new inode; one written in place a new size or mtime), so an
  entry can be checked against the file it is to describe.
- :func:`stage_upload` streams a request body into ``.ddb/tmp/upload-<id>/<final name>``,
  hashing it on the way, and detects its type there (by its final name): everything slow
  happens before the upload is moved into place under its path lock.
- :func:`measure` does the same for a file already in place (a tool's output).
- :func:`disk_full_is_507` turns "no space left" (ENOSPC, EDQUOT) into
  :class:`~procplat.errors.InsufficientStorage`; :func:`move_to_trash` and
  :func:`remove_trash` take a deleted file or folder out of the dataset and then away.
- :func:`leftovers` finds the upload and trash folders a killed process left in ``.ddb/tmp``
  (the artifact sweep, :meth:`procplat.core.artifacts.Artifacts.sweep`, removes them): an
  upload untouched for :data:`UPLOAD_QUIET_SECONDS` (a live upload writes its file all the
  time), trash moved aside over :data:`TRASH_QUIET_SECONDS` ago (a delete removes it right
  after its commit).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import stat
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import anyio.to_thread

from procplat.errors import InsufficientStorage, PayloadTooLarge
from tools.contract import DISK_FULL_ERRNOS
from tools.detect import Detected, detect
from tools.runtime.hashing import sha256_file

log = logging.getLogger(__name__)

UPLOAD_QUIET_SECONDS = 6 * 3600
TRASH_QUIET_SECONDS = 600
_LEFTOVER = re.compile(r"^(?P<kind>upload|trash)-[0-9a-f]{32}$")


@dataclass(frozen=True, kw_only=True)
class FileVersion:
    """One version of a file on disk: its inode, size and modification time."""

    inode: int
    size: int
    mtime_ns: int
    mtime: datetime  # naive UTC, as the index stores it

    @classmethod
    def of(cls, st: os.stat_result) -> FileVersion:
        return cls(
            inode=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns,
            mtime=datetime.fromtimestamp(st.st_mtime, UTC).replace(tzinfo=None),
        )

    def etag(self) -> str:
        """An ETag for this version when no indexed hash describes it."""
        return f"{self.inode:x}-{self.mtime_ns:x}-{self.size:x}"


@dataclass(frozen=True, kw_only=True)
class FileFacts:
    """What the index records about one version of a file."""

    version: FileVersion
    sha256: str
    detected: Detected


@dataclass(frozen=True, kw_only=True)
class StagedUpload:
    """An upload received in full in ``.ddb/tmp``, not yet in the dataset."""

    path: Path
    facts: FileFacts

    def discard(self) -> None:
        """Remove the staging folder (and the file, unless it was moved into place)."""
        shutil.rmtree(self.path.parent, ignore_errors=True)


def version_of(path: Path) -> FileVersion | None:
    """The version of the regular file at ``path``; None when there is none."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return FileVersion.of(st) if stat.S_ISREG(st.st_mode) else None


def open_version(path: Path) -> tuple[BinaryIO, FileVersion] | None:
    """``path`` opened for reading with the version that is open; None unless it is a
    regular file."""
    try:
        file = open(path, "rb")  # noqa: SIM115 - handed to the caller
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    st = os.fstat(file.fileno())
    if not stat.S_ISREG(st.st_mode):
        file.close()
        return None
    return file, FileVersion.of(st)


def measure(path: Path) -> FileFacts | None:
    """Hash and detect the file at ``path`` where it is. The version is taken first, so a
    file replaced meanwhile shows as a version other than the one on disk."""
    version = version_of(path)
    if version is None:
        return None
    try:
        sha256 = sha256_file(path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return FileFacts(version=version, sha256=sha256, detected=detect(path))


@contextmanager
def disk_full_is_507(rel: str) -> Iterator[None]:
    """Raise :class:`InsufficientStorage` for a write that found the disk (or quota) full."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        raise InsufficientStorage(
            f"the disk is full: '{rel}' could not be stored (no space left on the service's storage)"
        ) from None


async def stage_upload(
    tmp_dir: Path, rel: str, body: AsyncIterator[bytes], max_bytes: int
) -> StagedUpload:
    """Stream ``body`` into a new staging folder under ``tmp_dir`` as the file's final name,
    hash it and detect it. Nothing is left behind when this raises. When the disk is full
    the rest of the body is still read (up to ``max_bytes``), so the client gets the 507."""
    folder = tmp_dir / f"upload-{uuid.uuid4().hex}"
    path = folder / PurePosixPath(rel).name
    digest = hashlib.sha256()
    received = 0
    try:
        try:
            with disk_full_is_507(rel):
                folder.mkdir()
                with open(path, "wb") as handle:
                    async for chunk in body:
                        received += len(chunk)
                        if received > max_bytes:
                            raise PayloadTooLarge(f"upload exceeds the limit of {max_bytes} bytes")
                        digest.update(chunk)
                        handle.write(chunk)
                    handle.flush()
                    st = os.fstat(handle.fileno())
        except InsufficientStorage:
            await _skip_rest(body, max_bytes - received)
            raise
        detected = await anyio.to_thread.run_sync(detect, path)
        facts = FileFacts(version=FileVersion.of(st), sha256=digest.hexdigest(), detected=detected)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return StagedUpload(path=path, facts=facts)


async def _skip_rest(body: AsyncIterator[bytes], budget: int) -> None:
    async for chunk in body:
        budget -= len(chunk)
        if budget < 0:
            return


def move_to_trash(target: Path, tmp_dir: Path) -> Path | None:
    """Move ``target`` (a file or folder) aside into ``tmp_dir``; None when it is not there.
    The trash's mtime says when it was moved (for :func:`leftovers`)."""
    trash = tmp_dir / f"trash-{uuid.uuid4().hex}"
    try:
        os.rename(target, trash)
    except (FileNotFoundError, NotADirectoryError):
        return None
    with contextlib.suppress(OSError):
        os.utime(trash, follow_symlinks=False)
    return trash


def remove_trash(trash: Path) -> None:
    """Remove a file or folder a delete moved aside (after its transaction committed); what
    is already gone (the sweeper got there first) is no error."""
    def gone_is_fine(_function: object, _path: str, exc_info: Any) -> None:
        if not isinstance(exc_info[1], FileNotFoundError):
            raise exc_info[1]

    try:
        if trash.is_dir() and not trash.is_symlink():
            shutil.rmtree(trash, onerror=gone_is_fine)
        else:
            trash.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove %s after a delete (it stays in .ddb/tmp): %s", trash, exc)


def leftovers(tmp_dir: Path, now: float) -> list[Path]:
    """The upload and trash folders in ``tmp_dir`` that no live request will finish (see the
    module docstring); ``now`` is a POSIX time."""
    found: list[Path] = []
    with contextlib.suppress(OSError):
        for item in tmp_dir.iterdir():
            match = _LEFTOVER.match(item.name)
            if match is None:
                continue
            quiet = UPLOAD_QUIET_SECONDS if match["kind"] == "upload" else TRASH_QUIET_SECONDS
            if now - _last_touched(item, upload=match["kind"] == "upload") > quiet:
                found.append(item)
    return found


def _last_touched(item: Path, *, upload: bool) -> float:
    """When the item was last written: for an upload its folder or the file in it."""
    try:
        times = [item.lstat().st_mtime]
        if upload and item.is_dir():
            times += [child.lstat().st_mtime for child in item.iterdir()]
    except OSError:
        return float("inf")  # vanished meanwhile: nothing to remove
    return max(times)
