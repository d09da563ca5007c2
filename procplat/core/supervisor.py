"""Tasks from the cluster's side: the state machine driven by engine callbacks, progress and
log lines written to the index in batches, re-queue / re-attach after a restart, and the
sweeper that expires artifacts and old tasks.

Of all the processes on one index exactly one supervises: the holder of the supervisor lease
(:mod:`procplat.index.lease`). Every process with the ``all`` or ``supervisor`` role keeps a
Dask client and tries to take the lease every :data:`LEASE_INTERVAL`; the holder hands new
tasks to the cluster (its own at once, other replicas' from the index), turns worker events
and outcomes into index writes, stops tasks cancelled in the index, recovers and sweeps. A
process that takes over re-attaches the attempts the cluster still runs and replays what the
scheduler's event log holds that its predecessor had not written (log lines carry their
number; the index counts the ones it has), and concludes an attempt that ended meanwhile from
its ``end`` event. Replicas with the ``api`` role only read and write the index.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy.exc import SQLAlchemyError

from procplat.core.datasets import Datasets
from procplat.core.placement import leftovers, remove_trash
from procplat.core.registry import Registry
from procplat.engine.engine import Engine, outcome_from
from procplat.engine.job import Job, Outcome
from procplat.index import queries as q
from procplat.index.db import INDEX_UNAVAILABLE, Database, utcnow
from procplat.index.lease import lease_for
from procplat.index.models import Artifact, Task
from procplat.settings import Settings
from tools.runtime.safepath import SERVICE_FOLDER
from tools.runtime.staging import STAGING_NAME

log = logging.getLogger("procplat.supervisor")

WORK_FOLDER_NAME = re.compile(r"^(?P<task>[0-9a-f-]{36})-\d+$")  # <task id>-<attempt>


def _task_of(folder: Path) -> str | None:
    """The task a work or staging folder belongs to (None: not one of ours)."""
    for pattern in (WORK_FOLDER_NAME, STAGING_NAME):
        if (match := pattern.match(folder.name)) is not None:
            return match.group("task")
    return None
START_FLUSH_DELAY = 0.05
INDEX_RETRY_FIRST_DELAY = 0.5  # back-off while the index is unavailable: doubling up to
INDEX_RETRY_MAX_DELAY = 10.0   # this, for as long as it takes
TRAILING_EVENTS_WAIT = 2.0
CANCEL_GRACE_SECONDS = 10.0
LEASE_INTERVAL = 1.0  # how often a replica tries to take the lease, and the holder checks it
POLL_INTERVAL = 0.25  # how often the supervisor looks for other replicas' submits and cancels
RUNNING_STATES = ("processing", "waiting", "queued", "no-worker", "memory")
ROLES = ("all", "api", "supervisor")


@dataclass
class Pending:
    """Updates for one task received from workers and not yet written to the index."""

    attempt: int
    enqueued: bool = False
    started: bool = False
    fraction: float | None = None
    phase: str | None = None
    has_progress: bool = False
    lines: list[str] = field(default_factory=list)
    lines_received: int = 0

    def empty(self) -> bool:
        return not (self.enqueued or self.started or self.has_progress or self.lines)


def log_line(message: str) -> str:
    return f"[{time.strftime('%H:%M:%S', time.gmtime())}] {message}"


def _log_outcome(outcome: Outcome, tool_id: str) -> None:
    """One line in the service's log for how an attempt ended: a tool's clean failure is a
    warning, a fault an error (with the traceback of a bug, once); a success is routine and
    a cancel was logged when it was asked for (:meth:`Supervisor.cancel`)."""
    if outcome.fault:
        detail = f"\n{outcome.traceback.rstrip()}" if outcome.traceback else ""
        log.error("task %s (%s) failed with an unexpected error: %s%s",
                  outcome.task_id, tool_id, outcome.error, detail)
    elif not (outcome.succeeded or outcome.cancelled):
        log.warning("task %s (%s) failed: %s", outcome.task_id, tool_id, outcome.error)


class Supervisor:
    def __init__(
        self, *, settings: Settings, db: Database, registry: Registry, datasets: Datasets,
        role: str = "all",
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r} (known: {', '.join(ROLES)})")
        self.settings = settings
        self.db = db
        self.registry = registry
        self.datasets = datasets
        self.role = role
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease = lease_for(settings.sqlalchemy_url, self.name, fallback_dir=settings.data)
        self.leading = False
        self.engine = Engine(
            self, address=settings.dask_address, dashboard_address=settings.dashboard_address
        )
        self._pending: dict[str, Pending] = {}
        self._attempts: dict[str, int] = {}  # the attempt followed per task (0: being claimed)
        self._received: dict[str, int] = {}
        self._last_line: dict[str, dict[str, int]] = {}  # per task, per run: last line number
        self._cancel_sent: set[str] = set()
        self._taking_over = False
        self._held: list[dict[str, Any]] = []  # live events while the past ones are replayed
        self._flush_handle: asyncio.TimerHandle | None = None
        self._flush_lock = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()
        self._duties: list[asyncio.Task[None]] = []
        self._elector: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def dashboard_link(self) -> str | None:
        return self.engine.dashboard_link

    @property
    def uses_dask(self) -> bool:
        return self.role != "api"

    # life cycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        if not self.uses_dask:
            return
        await self.engine.start()
        if await anyio.to_thread.run_sync(self.lease.try_acquire):
            await self._lead()  # the embedded default: supervising before the first request
        self._elector = asyncio.create_task(self._elect_forever())

    async def close(self) -> None:
        self._closing = True  # a write waiting for the index gives up: recover() redoes it
        for task in [self._elector, *self._duties]:
            if task is not None:
                task.cancel()
        if self.leading:
            try:
                await self.flush()
            except INDEX_UNAVAILABLE:
                log.warning("stopping while the index is unavailable: the last progress and "
                            "log lines are not written (the next start re-queues or re-attaches)")
        await self.engine.close()
        await anyio.to_thread.run_sync(self.lease.release)

    async def holder(self) -> str | None:
        """The name of the supervising process (None: none holds the lease right now)."""
        if self.leading:
            return self.name
        return await anyio.to_thread.run_sync(self.lease.holder)

    async def _elect_forever(self) -> None:
        while True:
            await asyncio.sleep(LEASE_INTERVAL)
            try:
                if not self.leading:
                    if await anyio.to_thread.run_sync(self.lease.try_acquire):
                        await self._lead()
                elif not await anyio.to_thread.run_sync(self.lease.still_held):
                    if not await anyio.to_thread.run_sync(self.lease.try_acquire):
                        self._step_down()
            except (SQLAlchemyError, OSError) as exc:  # the index is unreachable: next time
                log.warning("supervisor lease: %s", exc)

    async def _lead(self) -> None:
        self.leading = True
        log.info("this process (%s) is the supervisor", self.name)
        await self.recover()
        self._duties = [asyncio.create_task(self._sweep_forever()),
                        asyncio.create_task(self._poll_forever())]

    def _step_down(self) -> None:
        """Another process holds the lease now: stop following tasks (it does)."""
        log.warning("this process (%s) lost the supervisor lease", self.name)
        self.leading = False
        for task in self._duties:
            task.cancel()
        self._duties = []
        self.engine.forget_all()
        for state in (self._pending, self._attempts, self._received, self._last_line):
            state.clear()
        self._cancel_sent.clear()

    async def _write_when_available(self, write: Any, *args: Any) -> Any:
        """Run a blocking index write off the event loop, again and again with back-off for as
        long as the index is unavailable (a write is one transaction, rolled back when the
        connection breaks): what the cluster reported is written late, never lost. Once the
        service is closing it gives up, so a stop during an outage does not hang (the next
        start re-queues or re-attaches the task)."""
        delay = INDEX_RETRY_FIRST_DELAY
        while True:
            try:
                return await anyio.to_thread.run_sync(write, *args)
            except INDEX_UNAVAILABLE as exc:
                if self._closing:
                    raise
                log.warning("the index is unavailable (%s); retrying %s in %.1f s",
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                            getattr(write, "__name__", "a write"), delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, INDEX_RETRY_MAX_DELAY)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # starting attempts ------------------------------------------------------------------------
    def _job(self, s: Any, task: Task, attempt: int, ref: Any = None) -> Job:
        if ref is None or ref.dataset_id != task.dataset_id:
            ref = self.datasets.ref_of(s, task.dataset_id)
        tool = self.registry.get(task.tool_id, task.version)
        st = self.settings
        return Job(
            task_id=task.id, attempt=attempt, tool_module=tool.module_name, tool_id=task.tool_id,
            params=dict(task.params),
            dataset_root=str(ref.root.resolve()),
            work_root=str(st.work_dir.resolve()), artifacts_root=str(st.artifacts_dir.resolve()),
            annotations={"procplat_task": task.id, "procplat_tool": task.tool_id},
            limits={"max_archive_extract_bytes": st.max_archive_extract_size_bytes,
                    "raster_tile_size": st.default_raster_tile_size},
            entries=self.datasets.snapshot(ref) if tool.spec.reads_index else (),
        )

    def _job_in_session(self, task: Task, ref: Any) -> Job:
        with self.db.read() as s:
            return self._job(s, task, 1, ref)

    def _enqueue(self, job: Job) -> None:
        self._attempts[job.task_id] = job.attempt
        self._received[job.task_id] = 0
        self.engine.enqueue(job)

    async def start_task(self, task: Task, ref: Any = None) -> None:
        """Hand a freshly created task to the cluster (when this process supervises; else
        the supervisor finds it in the index)."""
        if not self.leading or task.id in self._attempts:
            return
        self._attempts[task.id] = 0  # claimed: the index poll leaves it alone
        if self.registry.get(task.tool_id, task.version).spec.reads_index:
            # the job carries the dataset's entries: read them off the event loop
            job = await anyio.to_thread.run_sync(self._job_in_session, task, ref)
        elif ref is not None and ref.dataset_id == task.dataset_id:
            job = self._job(None, task, 1, ref)  # no index read on the event loop
        else:
            with self.db.read() as s:
                job = self._job(s, task, 1)
        self._enqueue(job)
        # Created → Enqueued goes to the index with the next batch (a burst of submissions
        # shares one transaction); the task's "start" event is batched the same way.
        self._pending.setdefault(task.id, Pending(attempt=1)).enqueued = True
        self._schedule_flush(START_FLUSH_DELAY)

    async def _hand_over(self, task_id: str) -> None:
        """Hand a task another replica created to the cluster."""
        self._attempts[task_id] = 0  # claimed
        job = await anyio.to_thread.run_sync(self._job_of, task_id)
        if job is None:
            self._attempts.pop(task_id, None)
            return
        self._enqueue(job)
        self._pending.setdefault(task_id, Pending(attempt=job.attempt)).enqueued = True
        self._schedule_flush(START_FLUSH_DELAY)

    def _job_of(self, task_id: str) -> Job | None:
        with self.db.read() as s:
            task = q.get_task(s, task_id)
            if task is None or not task.active or task.state != "Created":
                return None
            return self._job(s, task, max(1, task.attempts))

    async def recover(self) -> None:
        """Re-attach active tasks the scheduler still runs, conclude those that ended while
        no supervisor listened, replay the events the index missed, re-queue the others
        (tasks still Created are handed over by the index poll)."""
        self._taking_over = True
        try:
            await self._recover()
        finally:
            self._taking_over = False
            held, self._held = self._held, []
            for msg in held:
                self.on_event(msg)

    async def _recover(self) -> None:
        with self.db.read() as s:
            active = list(q.active_tasks(s))
            jobs = {t.id: self._job(s, t, max(1, t.attempts)) for t in active}
        known = await self.engine.scheduler_states(jobs.values())
        past = await self.engine.past_events()
        ended = {(m["t"], m["a"]): m.get("v") for m in past if m.get("k") == "end"}
        followed: dict[str, int] = {}
        for task in active:
            job = jobs[task.id]
            if known.get(task.id) in RUNNING_STATES:
                log.info("re-attaching task %s (%s)", task.id, known[task.id])
                self.engine.attach(job)
            elif isinstance(ended.get((task.id, job.attempt)), dict):
                log.info("task %s ended while no supervisor listened", task.id)
            elif task.state == "Created":
                continue
            else:
                await anyio.to_thread.run_sync(self._retry_or_fail, task.id,
                                               "the service restarted")
                continue
            self._attempts[task.id] = job.attempt
            self._received[task.id] = task.worker_lines
            followed[task.id] = task.worker_lines
        self._replay(past, followed)
        for task_id in followed:
            value = ended.get((task_id, self._attempts[task_id]))
            if isinstance(value, dict) and known.get(task_id) not in RUNNING_STATES:
                self.on_outcome(outcome_from(value, task_id=task_id,
                                             attempt=self._attempts[task_id]))

    def _replay(self, past: list[dict[str, Any]], in_index: dict[str, int]) -> None:
        """Apply the past events of the followed attempts, but the first ``in_index[task]``
        log lines (the predecessor wrote those)."""
        skip = dict(in_index)
        for msg in past:
            task_id = msg.get("t")
            if task_id not in skip or msg.get("a") != self._attempts.get(task_id):
                continue
            if msg.get("k") == "log" and skip[task_id] > 0:
                skip[task_id] -= 1
                self._new_line(task_id, msg)
                continue
            self._on_event(msg)

    def _retry_or_fail(self, task_id: str, reason: str) -> None:
        """Start the next attempt of an interrupted task, or fail it when out of attempts.

        An attempt that had started (the task is Processing) is used up; one that never
        started (still queued when the service or the scheduler went away) is handed over
        again under the same number."""
        max_attempts = self.settings.max_task_attempts
        with self.db.write() as s:
            task = q.get_task(s, task_id, for_update=True)
            if task is None or not task.active:
                return
            ran = task.state == "Processing"
            attempt = task.attempts + 1 if ran else max(1, task.attempts)
            if attempt > max_attempts:
                self._finish_row(s, task, "Failed",
                                 error=f"gave up after {task.attempts} attempts: {reason}")
                self._append_lines(s, task, [log_line(f"Failed: {reason}; no attempts left")])
                return
            self._append_lines(s, task, [log_line(
                f"{reason}; starting attempt {attempt} of {max_attempts}" if ran
                else f"{reason}; attempt {attempt} queued again")])
            task.attempts = attempt
            task.state = "Enqueued"
            task.worker_lines = 0
            job = self._job(s, task, attempt)
        self._enqueue(job)

    # events from workers ----------------------------------------------------------------------
    def on_event(self, msg: dict[str, Any]) -> None:
        if self._taking_over:
            self._held.append(msg)
            return
        self._on_event(msg)

    def _new_line(self, task_id: str, msg: dict[str, Any]) -> bool:
        """Whether a log event is one not seen before (the number of a line in its run)."""
        number = msg.get("n")
        if not isinstance(number, int):
            return True
        runs = self._last_line.setdefault(task_id, {})
        run = str(msg.get("r"))
        if number <= runs.get(run, 0):
            return False
        runs[run] = number
        return True

    def _on_event(self, msg: dict[str, Any]) -> None:
        task_id = msg.get("t")
        if not isinstance(task_id, str) or self._attempts.get(task_id) != msg.get("a"):
            return
        if msg.get("k") == "end" or (msg.get("k") == "log" and not self._new_line(task_id, msg)):
            return  # the outcome comes from the future; a line seen in the replay already
        pending = self._pending.setdefault(task_id, Pending(attempt=msg["a"]))
        kind = msg.get("k")
        if kind == "start":
            pending.started = True
            self._schedule_flush(START_FLUSH_DELAY)
            return
        if kind == "progress":
            if msg.get("p") is not None and msg.get("p") != pending.phase:
                pending.phase = msg.get("p")
                pending.fraction = None
            if msg.get("f") is not None:
                pending.fraction = float(msg["f"])
            pending.has_progress = True
        elif kind == "log":
            pending.lines.append(str(msg.get("m", "")))
            self._received[task_id] = self._received.get(task_id, 0) + 1
        self._schedule_flush(self.settings.progress_update_throttle_seconds)

    def _schedule_flush(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        if self._flush_handle is not None:
            if self._flush_handle.when() <= loop.time() + delay:
                return
            self._flush_handle.cancel()
        self._flush_handle = loop.call_later(delay, lambda: self._spawn(self.flush()))

    async def flush(self, only: str | None = None) -> None:
        """Write pending progress and log lines to the index, in one transaction."""
        async with self._flush_lock:
            if only is None:
                self._flush_handle = None
                batch, self._pending = self._pending, {}
            else:
                batch = {only: self._pending.pop(only)} if only in self._pending else {}
            batch = {k: v for k, v in batch.items() if not v.empty()}
            if batch:
                await self._write_when_available(self._write_batch, batch)

    def _write_batch(self, batch: dict[str, Pending]) -> None:
        with self.db.write() as s:
            for task_id, pending in batch.items():
                task = q.get_task(s, task_id, for_update=True)
                if task is None:
                    continue
                self._apply(s, task, pending)

    def _apply(self, s: Any, task: Task, pending: Pending) -> None:
        if pending.enqueued and task.active:
            task.attempts = max(task.attempts, pending.attempt)
            if task.state == "Created":
                task.state = "Enqueued"
        if pending.started and task.active and task.state in ("Created", "Enqueued", "Scheduled"):
            task.state = "Processing"
            task.started_at = task.started_at or utcnow()
        if pending.has_progress and task.active:
            phase_changed = pending.phase is not None and pending.phase != task.progress_phase
            if pending.phase is not None:
                task.progress_phase = pending.phase
            if pending.fraction is not None:
                percent = round(max(0.0, min(1.0, pending.fraction)) * 100)
                task.progress_percent = percent if phase_changed else max(task.progress_percent, percent)
            elif phase_changed:
                task.progress_percent = task.progress_percent
        if pending.lines:
            self._append_lines(s, task, pending.lines)
            task.worker_lines = (task.worker_lines or 0) + len(pending.lines)

    def _append_lines(self, s: Any, task: Task, lines: list[str]) -> None:
        """Append to the task's log ring buffer, evicting the oldest lines past the limits."""
        max_lines = self.settings.log_tail_max_lines
        max_bytes = self.settings.log_tail_max_bytes
        lines = [line.encode()[:max_bytes].decode(errors="ignore") for line in lines]
        first = task.log_cursor
        q.add_log_lines(s, task.id, first, lines)
        task.log_cursor = first + len(lines)
        task.log_bytes = (task.log_bytes or 0) + sum(len(line.encode()) for line in lines)
        kept = task.log_cursor - task.log_evicted
        if kept <= max_lines and task.log_bytes <= max_bytes:
            return
        s.flush()
        rows = q.kept_log_lines(s, task.id, task.log_evicted)
        drop = 0
        nbytes = task.log_bytes
        while rows and (len(rows) - drop > max_lines or nbytes > max_bytes):
            nbytes -= rows[drop].nbytes
            drop += 1
        if drop:
            cut = rows[drop - 1].seq + 1
            q.drop_log_lines_before(s, task.id, cut)
            task.log_evicted = cut
            task.log_bytes = nbytes

    # outcomes ---------------------------------------------------------------------------------
    def on_outcome(self, outcome: Outcome) -> None:
        self._spawn(self._conclude(outcome))

    async def _conclude(self, outcome: Outcome) -> None:
        task_id = outcome.task_id
        if self._attempts.get(task_id) != outcome.attempt:
            return
        deadline = time.monotonic() + TRAILING_EVENTS_WAIT
        while self._received.get(task_id, 0) < outcome.log_lines_sent and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if outcome.lost or outcome.entries_added or outcome.entries_removed \
                or outcome.entries_updated:
            cancel_asked = True
            await self.flush(only=task_id)
            self._stop_following(task_id)
            if outcome.lost:
                await self._write_when_available(self._retry_or_fail, task_id,
                                                 outcome.error or "lost")
            else:
                await self._write_when_available(self._record_outcome, outcome)
        else:
            # Nothing to index: the last progress and log lines and the outcome go into the
            # index in one transaction (under the flush lock, so they stay in order).
            async with self._flush_lock:
                pending = self._pending.pop(task_id, None)
                self._stop_following(task_id)
                cancel_asked = await self._write_when_available(
                    self._record_outcome, outcome, pending)
        if self._attempts.get(task_id) == 0:  # concluded (not queued again): release it
            del self._attempts[task_id]
        if cancel_asked:
            # The scheduler holds a task's cancel event only once a cancel has set it, and a
            # cancel marks the task inactive first: a task never cancelled has nothing to
            # forget (saves a scheduler round trip per task).
            await self.engine.forget_cancel_event(task_id)

    def _stop_following(self, task_id: str) -> None:
        """Take no more events of the attempt, but keep the task claimed until its outcome
        is in the index (else the index poll could see it still Created and start it again)."""
        self._attempts[task_id] = 0
        for state in (self._received, self._last_line):
            state.pop(task_id, None)
        self._cancel_sent.discard(task_id)

    def _record_outcome(self, outcome: Outcome, pending: Pending | None = None) -> bool:
        """Write the outcome; whether a cancel may have been asked (the task was no longer
        active, or the run ended cancelled)."""
        if outcome.entries_added or outcome.entries_removed or outcome.entries_updated:
            with self.db.read() as s:
                task = q.get_task(s, outcome.task_id)
                ref = self.datasets.ref_of(s, task.dataset_id) if task is not None else None
            if task is None or ref is None:
                self._discard_artifact(outcome)
                return True
            if outcome.succeeded:
                # The run changed the dataset: index it even if the task was cancelled after
                # the tool committed, so the dataset and the index agree.
                self.datasets.unindex_paths(ref, outcome.entries_removed)
                unindexed = self._index_added(ref, outcome.entries_added)
                self.datasets.apply_updates(ref, outcome.entries_updated)
                if unindexed:
                    outcome = replace(outcome, succeeded=False, error=(
                        f"{len(unindexed)} new entries could not be indexed: "
                        + ", ".join(unindexed[:5])))
        with self.db.write() as s:
            task = q.get_task(s, outcome.task_id, for_update=True)
            if task is not None and pending is not None and not pending.empty():
                self._apply(s, task, pending)
            if task is None or not task.active:
                self._discard_artifact(outcome)
                if outcome.fault:
                    _log_outcome(outcome, task.tool_id if task is not None else "?")
                return True
            tool_id = task.tool_id
            if outcome.succeeded:
                if outcome.artifact is not None:
                    a = outcome.artifact
                    s.merge(Artifact(
                        task_id=task.id, file_name=a.file_name, storage_path=a.storage_path,
                        size_bytes=a.size_bytes, sha256=a.sha256,
                        expires_at=utcnow() + timedelta(hours=self.settings.artifact_ttl_hours),
                        expired=False,
                    ))
                task.progress_percent = 100
                task.result = outcome.summary
                self._finish_row(s, task, "Succeeded")
            elif outcome.cancelled:
                self._finish_row(s, task, "Deleted", error="cancelled")
            else:
                self._finish_row(s, task, "Failed", error=outcome.error or "failed")
        _log_outcome(outcome, tool_id)
        return outcome.cancelled

    def _index_added(self, ref: Any, rel_paths: list[str]) -> list[str]:
        """Index the files a run added, check each one is in the index (a second try for
        any that is not) and return those that still are not."""
        try:
            self.datasets.index_paths(ref, rel_paths)
        except Exception:
            log.exception("indexing %d added entries failed; retrying one by one", len(rel_paths))
        indexed = {e["path"] for e in self.datasets.entries(ref, None, None, True)}
        missing = [rel for rel in self._files_of(ref, rel_paths) if rel not in indexed]
        unindexed: list[str] = []
        for rel in missing:
            try:
                self.datasets.index_paths(ref, [rel])
            except Exception:
                log.exception("indexing added entry %s failed", rel)
            if self.datasets.entry(ref, rel) is None:
                unindexed.append(rel)
        return unindexed

    @staticmethod
    def _files_of(ref: Any, rel_paths: list[str]) -> list[str]:
        found: list[str] = []
        for rel in rel_paths:
            path = ref.root / rel
            if path.is_dir():
                found += [p.relative_to(ref.root).as_posix() for p in sorted(path.rglob("*"))
                          if p.is_file()]
            elif path.is_file():
                found.append(rel)
        return found

    @staticmethod
    def _finish_row(s: Any, task: Task, state: str, *, error: str | None = None) -> None:
        task.state = state
        task.active = False
        task.finished_at = utcnow()
        if error is not None:
            task.error = error

    @staticmethod
    def _discard_artifact(outcome: Outcome) -> None:
        if outcome.artifact is not None:
            shutil.rmtree(Path(outcome.artifact.storage_path).parent, ignore_errors=True)

    # cancelling -------------------------------------------------------------------------------
    async def cancel(self, task_id: str, *, by: str) -> None:
        """Stop an active task (it becomes Deleted) or mark a terminal one Deleted."""
        was_active, started, tool_id = await anyio.to_thread.run_sync(
            self._mark_deleted, task_id, by)
        if was_active:
            log.info("task %s (%s) cancelled by %s", task_id, tool_id, by)
            if self.leading:  # else the supervisor sees it in the index (_poll_forever)
                self._cancel_sent.add(task_id)
                await self.engine.request_cancel(task_id, started=started)
                self._spawn(self._force_cancel_later(task_id))

    async def _poll_forever(self) -> None:
        """Hand over the tasks other replicas created, stop those they cancelled."""
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            followed = [t for t, attempt in self._attempts.items()
                        if attempt and t not in self._cancel_sent]
            try:
                created, gone = await anyio.to_thread.run_sync(self._poll_index, followed)
            except SQLAlchemyError as exc:  # the index is unreachable: next time
                log.warning("supervisor poll: %s", exc)
                continue
            for task_id in created:
                if task_id not in self._attempts:
                    await self._hand_over(task_id)
            for task_id in gone:
                if task_id in self._attempts and task_id not in self._cancel_sent:
                    self._cancel_sent.add(task_id)
                    await self.engine.request_cancel(task_id, started=True)
                    self._spawn(self._force_cancel_later(task_id))

    def _poll_index(self, followed: list[str]) -> tuple[list[str], list[str]]:
        with self.db.read() as s:
            return q.created_task_ids(s), q.inactive_among(s, followed)

    async def _force_cancel_later(self, task_id: str) -> None:
        await asyncio.sleep(CANCEL_GRACE_SECONDS)
        if self.engine.is_tracking(task_id):
            log.warning("task %s did not stop within %ss; cancelling its future", task_id,
                        CANCEL_GRACE_SECONDS)
            await self.engine.force_cancel(task_id)

    def _mark_deleted(self, task_id: str, by: str) -> tuple[bool, bool, str]:
        """Mark a task Deleted; (whether it was active, whether it had started, its tool)."""
        with self.db.write() as s:
            task = q.get_task(s, task_id, for_update=True)
            if task is None:
                return False, False, ""
            was_active = task.active
            started = task.state == "Processing" or task_id in self._pending and self._pending[task_id].started
            if task.state == "Deleted":
                return False, False, task.tool_id
            self._append_lines(s, task, [log_line(f"Cancelled by {by}")])
            self._finish_row(s, task, "Deleted", error=f"cancelled by {by}" if was_active else task.error)
            artifact = q.get_artifact(s, task_id)
            if artifact is not None:
                artifact.expired = True
                shutil.rmtree(Path(artifact.storage_path).parent, ignore_errors=True)
            return was_active, bool(started), task.tool_id

    # sweeping ---------------------------------------------------------------------------------
    async def _sweep_forever(self) -> None:
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
            old_paths = [a.storage_path for a in q.artifacts_of(s, old)]
            q.delete_tasks(s, old)
            active = {t.id for t in q.active_tasks(s)}
        for path in [a.storage_path for a in expired] + old_paths:
            shutil.rmtree(Path(path).parent, ignore_errors=True)
        orphans = 0
        for folder in work_folders + staging_folders:  # listed before reading the active set
            task_id = _task_of(folder)
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
