"""Where tools that write into a dataset prepare their files, and how the files move in.

A run writes into ``.ddb/tmp/<tool id>-<task id>/`` (inside the dataset, so on the same file
system) and, once everything is complete, renames each finished file onto its place: the
dataset only ever sees whole files. The folder is the same for every attempt of a task (a
retry starts by clearing it) and is removed at the end; the service's sweeper removes the
folders of tasks that are no longer active (:data:`STAGING_NAME`), e.g. after a crash.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from tools.contract import ToolError
from tools.runtime.safepath import SERVICE_FOLDER, UnsafePath, open_folder_nofollow

STAGING_NAME = re.compile(r"^[a-z0-9-]+-(?P<task>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")


def staging_folder(dataset_root: Path, tool_id: str, task_id: str) -> Path:
    """This task's staging folder (not created), after checking that ``.ddb/tmp`` is a real
    folder, with no symlink on the way (made when missing)."""
    tmp_rel = f"{SERVICE_FOLDER}/tmp"
    try:
        fd = open_folder_nofollow(dataset_root, tmp_rel, create=True)
    except UnsafePath as exc:
        raise ToolError(f"the dataset's {tmp_rel} folder is unusable: {exc}") from None
    assert fd is not None
    os.close(fd)
    return dataset_root / tmp_rel / f"{tool_id}-{task_id}"


@contextlib.contextmanager
def staging(dataset_root: Path, tool_id: str, task_id: str) -> Iterator[Path]:
    """A fresh staging folder for this task, removed when the block ends (however it ends)."""
    folder = staging_folder(dataset_root, tool_id, task_id)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def move_into_dataset(src: Path, root: Path, rel: str) -> None:
    """Rename ``src`` onto the dataset path ``rel`` (replacing a file there); missing folders
    are made (and removed again if the rename fails); no folder is followed through a
    symlink."""
    parent, _, name = rel.rpartition("/")
    created: list[str] = []
    try:
        fd = open_folder_nofollow(root, parent, create=True, created=created)
        assert fd is not None
        try:
            os.rename(src, name, dst_dir_fd=fd)
        finally:
            os.close(fd)
    except BaseException:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                (root / folder).rmdir()
        raise
