"""What runs on a Dask worker for one task attempt.

:func:`run_job` imports the tool, gives it a :class:`DaskReporter` whose progress and log
lines travel to the service as worker events (``Worker.log_event`` → the scheduler → the
service's ``subscribe_topic`` handler; each log line numbered within its run, and how the
run ended as a last ``end`` event), runs it inside a private work folder and moves
the artifact, with its size and sha256, into the artifact store. Whatever happens, the work
folder is removed, so a failed or cancelled attempt leaves no partial output.

Every way an attempt ends is returned, not raised: ``{"ending": ...}`` is ``succeeded``,
``cancelled`` (the user asked it to stop), ``failed`` (the tool raised :class:`ToolError`,
a message for a person, or the disk was full: :class:`~tools.contract.DiskFull`) or ``error`` (any other exception: a bug, returned with its
traceback for the service to log once). An exception raised out of a Dask task is logged by
the worker as "Compute Failed" with a traceback, which is for faults, and a cancel or a clean
tool error is an outcome. Only the death of the worker process ends an attempt without a
return value; Dask then runs it again on another worker.
"""

from __future__ import annotations

import importlib
import os
import shutil
import threading
import time
import traceback
import uuid
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Event, get_worker

from procplat.engine.job import EVENT_TOPIC, Job, cancel_event_name
from tools.contract import (
    Cancelled,
    DiskFull,
    ToolContext,
    ToolError,
    ToolLimits,
    ToolResult,
    is_disk_full,
)
from tools.runtime.hashing import sha256_file

CANCEL_CHECK_INTERVAL = 0.2
PROGRESS_INTERVAL = 0.25


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
        self._run = uuid.uuid4().hex[:12]  # this run of the attempt (Dask may run it again)
        self.lines_sent = 0

    def _send(self, kind: str, **fields: Any) -> None:
        """One event; a log line carries its number in the attempt (``n``, from 1)."""
        msg = {"t": self._job.task_id, "a": self._job.attempt, "r": self._run, "k": kind,
               **fields}
        self._worker.log_event(EVENT_TOPIC, msg)

    def started(self) -> None:
        self._send("start", w=self._worker.address)

    def ended(self, value: dict[str, Any]) -> dict[str, Any]:
        """Report how the run ended as an event too: the scheduler keeps it in its event log,
        where a supervisor that takes over finds an attempt that ended while none listened.
        The value returned is the same plain one the event carries."""
        plain: dict[str, Any] = _plain(value)
        self._send("end", v=plain)
        return plain

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
            number = self.lines_sent
        self._send("log", m=line, n=number)

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


def _plain(value: Any) -> Any:
    """``value`` in the plain types an event may carry (``distributed`` checks exact types):
    dataclasses as dicts, tuples as lists, numpy scalars as Python numbers, paths as text."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


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
    """Run one attempt of a task; returns how it ended, msgpack-friendly, for the service."""
    reporter = DaskReporter(job)
    reporter.started()
    work_dir = Path(job.work_root) / f"{job.task_id}-{job.attempt}"
    try:
        shutil.rmtree(work_dir, ignore_errors=True)
        work_dir.mkdir(parents=True)
        reporter.check_cancelled()
        return reporter.ended(_succeeded(job, _run_tool(job, work_dir, reporter), reporter))
    except Cancelled:
        reporter.log("Cancelled")
        return reporter.ended(_ended("cancelled", reporter, error="cancelled"))
    except ToolError as exc:
        return reporter.ended(_failed(exc, reporter))
    except Exception as exc:
        if is_disk_full(exc):  # in any tool, or while storing the artifact: the user's to act on
            return reporter.ended(_failed(DiskFull(), reporter))
        reporter.log(f"Error: {type(exc).__name__}: {exc}")
        return reporter.ended(_ended("error", reporter, error=f"{type(exc).__name__}: {exc}",
                                     traceback="".join(traceback.format_exception(exc))))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _run_tool(job: Job, work_dir: Path, reporter: DaskReporter) -> ToolResult:
    module = importlib.import_module(job.tool_module)
    ctx = ToolContext(
        task_id=job.task_id,
        dataset_root=Path(job.dataset_root),
        work_dir=work_dir,
        reporter=reporter,
        cancel_event=cancel_event_name(job.task_id),
        limits=ToolLimits(**job.limits),
        entries=tuple(job.entries),
    )
    result: ToolResult = module.run(dict(job.params), ctx)
    if not (result.entries_added or result.entries_removed or result.entries_updated):
        reporter.check_cancelled()  # a run that changed the dataset has committed
    return result


def _succeeded(job: Job, result: ToolResult, reporter: DaskReporter) -> dict[str, Any]:
    artifact = _store_artifact(job, result.artifact, reporter) if result.artifact else None
    reporter.progress(1.0)
    return {
        "ending": "succeeded",
        "artifact": artifact,
        "summary": result.summary,
        "entriesAdded": list(result.entries_added),
        "entriesRemoved": list(result.entries_removed),
        "entriesUpdated": list(result.entries_updated),
        "logLinesSent": reporter.lines_sent,
    }


def _failed(exc: ToolError, reporter: DaskReporter) -> dict[str, Any]:
    reporter.log(f"Error: {exc}")
    return _ended("failed", reporter, error=str(exc))


def _ended(ending: str, reporter: DaskReporter, **fields: Any) -> dict[str, Any]:
    return {"ending": ending, "logLinesSent": reporter.lines_sent, **fields}
