"""Artifacts: the store of tasks' downloadable files and the sweep that keeps the service's
folders tidy.

- The store: a worker moves an artifact to ``<artifacts>/<task id>/<file name>``
  (:mod:`procplat.engine.worker`); :meth:`Artifacts.record` writes its row, which expires
  ``ArtifactTtlHours`` later; :meth:`Artifacts.file_of` is the file to serve (410 once expired
  or gone); :meth:`Artifacts.purge`, :meth:`Artifacts.discard` and :meth:`Artifacts.remove`
  delete it (a task Deleted, an outcome nobody records, tasks cleared).
- The sweep (:meth:`Artifacts.sweep`, every ``SWEEP_INTERVAL_SECONDS`` while this process
  supervises): artifacts past their TTL, tasks past ``JobIndexRetentionDays``, the work folders
  (``<work>/<task id>-<attempt>``) and staging folders (``.ddb/tmp/<tool>-<task id>``,
  :data:`tools.staging.STAGING_NAME`) of tasks no longer active, and the uploads and trash a
  killed process left in ``.ddb/tmp`` (:func:`procplat.core.placement.leftovers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path

import anyio
from sqlalchemy.orm import Session

from procplat.core.placement import leftovers, remove_trash
from procplat.engine.job import ArtifactInfo
from procplat.errors import Gone
from procplat.index import queries as q
from procplat.index.db import INDEX_UNAVAILABLE, Database, utcnow
from procplat.index.models import Artifact
from procplat.settings import Settings
from tools.runtime.safepath import SERVICE_FOLDER
from tools.runtime.staging import STAGING_NAME

__all__ = ["WORK_FOLDER_NAME", "Artifacts", "task_of_folder"]

log = logging.getLogger("procplat.artifacts")

WORK_FOLDER_NAME = re.compile(r"^(?P<task>[0-9a-f-]{36})-\d+$")  # <task id>-<attempt>


def task_of_folder(folder: Path) -> str | None:
    """The task a work or staging folder belongs to (None: not one of ours)."""
    for pattern in (WORK_FOLDER_NAME, STAGING_NAME):
        if (match := pattern.match(folder.name)) is not None:
            return match.group("task")
    return None


class Artifacts:
    def __init__(self, *, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db

    # the store ----------------------------------------------------------------------------
    def record(self, s: Session, task_id: str, stored: ArtifactInfo) -> None:
        """Write the row of an artifact a run stored; it expires after the TTL."""
        s.merge(Artifact(
            task_id=task_id, file_name=stored.file_name, storage_path=stored.storage_path,
            size_bytes=stored.size_bytes, sha256=stored.sha256,
            expires_at=utcnow() + timedelta(hours=self.settings.artifact_ttl_hours),
            expired=False,
        ))

    def file_of(self, artifact: Artifact, task_id: str) -> Path:
        """The artifact's file, to serve (410 once it expired or is no longer there)."""
        if artifact.expired or artifact.expires_at <= utcnow():
            raise Gone(f"the artifact of task '{task_id}' has expired")
        path = Path(artifact.storage_path)
        if not path.is_file():
            raise Gone(f"the artifact of task '{task_id}' is no longer available")
        return path

    def purge(self, s: Session, task_id: str) -> None:
        """Expire the task's artifact and delete its file (a task marked Deleted)."""
        artifact = q.get_artifact(s, task_id)
        if artifact is not None:
            artifact.expired = True
            self.remove([artifact.storage_path])

    def discard(self, stored: ArtifactInfo | None) -> None:
        """Delete an artifact a run stored that no task will serve."""
        if stored is not None:
            self.remove([stored.storage_path])

    @staticmethod
    def stored_paths(s: Session, task_ids: Sequence[str]) -> list[str]:
        """Where the artifacts of these tasks are (to :meth:`remove` once their rows are gone)."""
        return [a.storage_path for a in q.artifacts_of(s, task_ids)]

    @staticmethod
    def remove(storage_paths: Iterable[str]) -> None:
        """Delete artifacts' files with their folders (``<artifacts>/<task id>``)."""
        for path in storage_paths:
            shutil.rmtree(Path(path).parent, ignore_errors=True)

    # the sweep ----------------------------------------------------------------------------
    async def sweep_forever(self) -> None:
        while True:
            try:
                await anyio.to_thread.run_sync(self.sweep)
            except INDEX_UNAVAILABLE as exc:  # the next sweep does it
                log.warning("sweep skipped: the index is unavailable (%s)",
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            except Exception:
                log.exception("sweep failed")
            await asyncio.sleep(self.settings.sweep_interval_seconds)

    def sweep(self) -> dict[str, int]:
        """Delete expired artifacts, tasks past retention, work and staging folders of tasks
        that are no longer active, and uploads and trash a killed process left behind."""
        now = utcnow()
        work_dir = self.settings.work_dir
        work_folders = list(work_dir.iterdir()) if work_dir.is_dir() else []
        staging_folders = self._staging_folders()
        with self.db.write() as s:
            expired = list(q.expired_artifacts(s, now))
            for artifact in expired:
                artifact.expired = True
            old = q.terminal_task_ids(
                s, finished_before=now - timedelta(days=self.settings.job_index_retention_days)
            )
            old_paths = self.stored_paths(s, old)
            q.delete_tasks(s, old)
            active = {t.id for t in q.active_tasks(s)}
        self.remove([a.storage_path for a in expired] + old_paths)
        orphans = 0
        for folder in work_folders + staging_folders:  # listed before reading the active set
            task_id = task_of_folder(folder)
            if task_id is not None and task_id not in active:
                shutil.rmtree(folder, ignore_errors=True)
                orphans += 1
        left = [item for tmp in self._tmp_dirs() for item in leftovers(tmp, time.time())]
        for item in left:
            remove_trash(item)
        return {"expired": len(expired), "deleted": len(old), "orphans": orphans,
                "leftovers": len(left)}

    def _tmp_dirs(self) -> list[Path]:
        """Every dataset's ``.ddb/tmp``."""
        return list(self.settings.datasets_dir.glob(f"*/*/{SERVICE_FOLDER}/tmp"))

    def _staging_folders(self) -> list[Path]:
        """Tools' staging folders in every dataset (``.ddb/tmp/<tool>-<task id>``)."""
        found: list[Path] = []
        for tmp in self._tmp_dirs():
            with contextlib.suppress(OSError):
                found += [p for p in tmp.iterdir() if STAGING_NAME.match(p.name)]
        return found
