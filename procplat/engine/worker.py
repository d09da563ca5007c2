"""What runs on a Dask worker for one task attempt.

:func:`run_job` imports the tool, gives it a :class:`DaskReporter` whose progress and log
lines travel to the service as worker events (``Worker.log_event`` → the scheduler → the
service's ``subscribe_topic`` handler), runs it inside a private work folder and moves
the artifact, with its size and sha256, into the artifact store. Whatever happens, the work
folder is removed, so a failed or cancelled attempt leaves no partial output.
"""

from __future__ import annotations

import importlib
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from distributed import Event, get_worker

from procplat.engine.job import EVENT_TOPIC, Job, cancel_event_name
from tools.contract import Cancelled, ToolContext, ToolError, ToolLimits, ToolResult
from tools.hashing import sha256_file

CANCEL_CHECK_INTERVAL = 0.2
PROGRESS_INTERVAL = 0.25


class TaskFailed(Exception):
    """An attempt failed with a message for a person; re-running will not help.

    ``args`` are ``(message, log_lines_sent)``.
    """


class TaskCancelled(Exception):
    """An attempt stopped because the task was cancelled; ``args`` as for TaskFailed."""


class DaskReporter:
    """Reporter used on a worker: events to the service, cancellation from a Dask Event."""

    def __init__(self, job: Job) -> None:
        self._job = job
        self._worker = get_worker()
        self._cancel = Event(cancel_event_name(job.task_id))
        self._lock = threading.Lock()
        self._last_check = 0.0
        self._is_cancelled = False
        self._last_progress = 0.0
        self._phase: str | None = None
        self.lines_sent = 0

    def _send(self, kind: str, **fields: Any) -> None:
        msg = {"t": self._job.task_id, "a": self._job.attempt, "k": kind, **fields}
        self._worker.log_event(EVENT_TOPIC, msg)

    def started(self) -> None:
        self._send("start", w=self._worker.address)

    def progress(self, fraction: float | None, phase: str | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            phase_changed = phase is not None and phase != self._phase
            if phase is not None:
                self._phase = phase
            final = fraction is not None and fraction >= 1.0
            if not (phase_changed or final or now - self._last_progress >= PROGRESS_INTERVAL):
                return
            self._last_progress = now
        self._send("progress", f=fraction, p=self._phase)

    def log(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S', time.gmtime())}] {message}"
        with self._lock:
            self.lines_sent += 1
        self._send("log", m=line)

    def cancelled(self) -> bool:
        if self._is_cancelled:
            return True
        now = time.monotonic()
        if now - self._last_check < CANCEL_CHECK_INTERVAL:
            return False
        self._last_check = now
        try:
            self._is_cancelled = bool(self._cancel.is_set())
        except Exception:  # the scheduler is briefly unreachable: keep going
            return False
        return self._is_cancelled

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise Cancelled()


def _store_artifact(job: Job, artifact: Path, reporter: DaskReporter) -> dict[str, Any]:
    reporter.progress(None, "storing artifact")
    size = artifact.stat().st_size
    digest = sha256_file(artifact)
    target_dir = Path(job.artifacts_root) / job.task_id
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / artifact.name
    os.replace(artifact, target)
    return {"storagePath": str(target), "fileName": artifact.name, "sizeBytes": size, "sha256": digest}


def run_job(job: Job) -> dict[str, Any]:
    """Run one attempt of a task; returns a msgpack-friendly summary for the service."""
    reporter = DaskReporter(job)
    reporter.started()
    module = importlib.import_module(job.tool_module)
    work_dir = Path(job.work_root) / f"{job.task_id}-{job.attempt}"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    ctx = ToolContext(
        task_id=job.task_id,
        dataset_root=Path(job.dataset_root),
        work_dir=work_dir,
        reporter=reporter,
        cancel_event=cancel_event_name(job.task_id),
        limits=ToolLimits(**job.limits),
        entries=tuple(job.entries),
    )
    try:
        reporter.check_cancelled()
        result: ToolResult = module.run(dict(job.params), ctx)
        if not (result.entries_added or result.entries_removed or result.entries_updated):
            reporter.check_cancelled()  # a run that changed the dataset has committed
        artifact = _store_artifact(job, result.artifact, reporter) if result.artifact else None
        reporter.progress(1.0)
        return {
            "artifact": artifact,
            "summary": result.summary,
            "entriesAdded": list(result.entries_added),
            "entriesRemoved": list(result.entries_removed),
            "entriesUpdated": list(result.entries_updated),
            "logLinesSent": reporter.lines_sent,
        }
    except Cancelled:
        reporter.log("Cancelled")
        raise TaskCancelled("cancelled", reporter.lines_sent) from None
    except ToolError as exc:
        reporter.log(f"Error: {exc}")
        raise TaskFailed(str(exc), reporter.lines_sent) from None
    except Exception as exc:
        reporter.log(f"Error: {type(exc).__name__}: {exc}")
        raise TaskFailed(f"{type(exc).__name__}: {exc}", reporter.lines_sent) from None
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
