"""The only code that talks to Dask from the service side.

One asynchronous ``distributed.Client`` lives in the service's event loop. Each task
attempt is one future keyed ``<task id>-<attempt>`` (:func:`~procplat.engine.job.job_key`);
its done callback hops from Dask's callback thread to the loop and reports an
:class:`Outcome` to the listener. The job returns how it ended (succeeded, cancelled, failed
with a tool's message, or an unexpected error with its traceback; see
:mod:`procplat.engine.worker`), so an exception out of the future means the cluster gave up
on the work (e.g. ``KilledWorker`` after the worker died on every retry). Progress and log lines arrive as worker events on
:data:`EVENT_TOPIC`. Cancellation is cooperative: a ``distributed.Event`` named after the
task is set, the tool sees it within a fraction of a second and stops; work that has not
started yet is simply cancelled.

The connection to a shared scheduler is watched (:meth:`Engine._watch_connection`): when
the client reconnects by itself (a new scheduler within its connect timeout) the event
subscription is renewed; when it gives up and closes, a new client is made, with back-off, for
as long as it takes. Attempts handed over while no scheduler answers wait in the engine and go
to the scheduler as soon as one does, after the subscription. Work the old scheduler lost comes
back to the listener as a ``lost`` outcome, which re-queues it. The dashboard link is read once
per connection, never on a read route.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterable
from typing import Any, Protocol

import dask.config
from dask.utils import parse_timedelta
from distributed import Client, Event, Future, LocalCluster, fire_and_forget, span

from procplat.engine.job import (
    EVENT_TOPIC,
    ArtifactInfo,
    Job,
    Outcome,
    cancel_event_name,
    job_key,
    task_span,
)
from procplat.engine.worker import run_job
from tools.contract import BuildState, EntryUpdate

log = logging.getLogger("procplat.engine")

WATCH_INTERVAL = 0.2  # seconds between looks at the client's connection
RECONNECT_TIMEOUT = 5.0  # one attempt at making a new client
MAX_BACKOFF = 10.0  # the longest wait between two attempts
PING_TIMEOUT = 2.0
CANCEL_EVENT_TIMEOUT = 5.0


class EngineListener(Protocol):
    def on_event(self, msg: dict[str, Any]) -> None: ...

    def on_outcome(self, outcome: Outcome) -> None: ...


def _key_states(dask_scheduler: Any, keys: list[str]) -> dict[str, str]:
    return {k: dask_scheduler.tasks[k].state for k in keys if k in dask_scheduler.tasks}


class Engine:
    def __init__(
        self,
        listener: EngineListener,
        *,
        address: str | None = None,
        dashboard_address: str = ":8787",
        n_workers: int | None = None,
        worker_env: dict[str, str] | None = None,
    ) -> None:
        self._listener = listener
        self._address = address
        self._dashboard_address = dashboard_address
        self._n_workers = n_workers
        self._worker_env = worker_env or {}
        self._cluster: LocalCluster | None = None
        self._futures: dict[str, tuple[Future, Job]] = {}
        self._waiting: dict[str, Job] = {}  # handed over while no scheduler answers
        self.client: Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._comm: Any = None  # the scheduler stream the subscription was sent on
        self._dashboard_link: str | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._closing = False

    # life cycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        if self._address:
            # how long the client reconnects by itself before giving up (and a new one is
            # made): Dask's connect timeout, 30 s unless its configuration says otherwise
            self.client = await self._new_client(timeout=parse_timedelta(
                dask.config.get("distributed.comm.timeouts.connect"), "s"))
        else:
            self._cluster = await LocalCluster(
                n_workers=self._n_workers or os.cpu_count() or 1,
                threads_per_worker=1,
                processes=True,
                dashboard_address=self._dashboard_address,
                env={"GDAL_CACHEMAX": "256", **self._worker_env},
                asynchronous=True,
            )
            self.client = await Client(self._cluster, asynchronous=True, set_as_default=False)
        self._connected()
        if self._address:
            self._watcher = asyncio.create_task(self._watch_connection())

    async def _new_client(self, *, timeout: float) -> Client:
        assert self._address is not None
        return await Client(
            self._address, asynchronous=True, timeout=f"{timeout}s", set_as_default=False
        )

    def _connected(self) -> None:
        """A (new) scheduler answers: subscribe to the workers' events, read the dashboard
        link, then hand over the attempts that waited (the stream keeps that order)."""
        client = self.client
        assert client is not None
        self._comm = client.scheduler_comm
        client.subscribe_topic(EVENT_TOPIC, self._on_worker_event)
        self._dashboard_link = _dashboard_link_of(client)
        waiting, self._waiting = self._waiting, {}
        for job in waiting.values():
            self._submit(job)

    @property
    def connected(self) -> bool:
        """Whether the scheduler answers on the stream the subscription went on."""
        client = self.client
        return (client is not None and client.status == "running"
                and client.scheduler_comm is self._comm)

    async def _watch_connection(self) -> None:
        """Keep a shared scheduler connected, for as long as it takes."""
        backoff = 0.5
        lost = False
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            client = self.client
            assert client is not None
            if client.status == "running":
                if client.scheduler_comm is not self._comm:  # reconnected by itself
                    log.info("reconnected to the Dask scheduler at %s", self._address)
                    self._connected()
                lost, backoff = False, 0.5
                continue
            if not lost:
                log.warning("lost the Dask scheduler at %s; reconnecting", self._address)
                lost = True
            if client.status not in ("closed", "closing"):
                continue  # the client is still trying by itself
            try:
                self.client = await self._new_client(timeout=RECONNECT_TIMEOUT)
            except (OSError, asyncio.TimeoutError) as exc:
                log.debug("the Dask scheduler does not answer yet: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
                continue
            log.info("connected to a new Dask scheduler at %s", self._address)
            self._connected()
            lost, backoff = False, 0.5

    async def close(self) -> None:
        # A shutdown is not an outcome: forget the futures before closing the client cancels
        # them, so their callbacks report nothing (an interrupted attempt is counted once, by
        # the next start's recovery).
        self._closing = True
        if self._watcher is not None:
            self._watcher.cancel()
        self._futures.clear()
        self._waiting.clear()
        if self.client is not None:
            try:
                self.client.unsubscribe_topic(EVENT_TOPIC)
            except Exception:  # already disconnected
                pass
            await self.client.close()
        if self._cluster is not None:
            await self._cluster.close()
        self.client = None
        self._cluster = None

    @property
    def dashboard_link(self) -> str | None:
        """The scheduler's dashboard, as read when it was connected (never asks Dask)."""
        return self._dashboard_link

    async def ping(self, timeout: float = PING_TIMEOUT) -> bool:
        if self.client is None or not self.connected:
            return False
        try:
            await asyncio.wait_for(self.client.scheduler.identity(), timeout)
            return True
        except Exception:
            return False

    # submitting and re-attaching --------------------------------------------------------------
    def enqueue(self, job: Job) -> None:
        """Run an attempt on the cluster, now or as soon as a scheduler answers (from any
        thread: the hand-over itself happens on the event loop, where reconnects happen)."""
        loop = self._loop
        assert loop is not None, "engine not started"
        if threading.get_ident() != self._loop_thread:
            loop.call_soon_threadsafe(self._enqueue_on_loop, job)
        else:
            self._enqueue_on_loop(job)

    def _enqueue_on_loop(self, job: Job) -> None:
        if self.connected:
            self._submit(job)
        else:
            self._waiting[job.task_id] = job

    def is_waiting(self, task_id: str) -> bool:
        return task_id in self._waiting

    def _submit(self, job: Job) -> None:
        assert self.client is not None, "engine not started"
        # A span per task: the dashboard groups the task and every chunk its tool fans out
        # (sub-tasks inherit it) under ("procplat", tool, task id).
        with span(*task_span(job)):
            future = self.client.submit(run_job, job, key=job_key(job.task_id, job.attempt),
                                        pure=False)
        if self._address:
            # On a shared scheduler the work outlives a restart of the service, which then
            # re-attaches to it (see Supervisor.recover).
            fire_and_forget(future)
        self._track(future, job)

    async def scheduler_states(self, jobs: Iterable[Job]) -> dict[str, str]:
        """The scheduler's state of each job's attempt it still knows, by task id."""
        assert self.client is not None
        by_key = {job_key(job.task_id, job.attempt): job.task_id for job in jobs}
        if not by_key:
            return {}
        try:
            states = await self.client.run_on_scheduler(_key_states, keys=list(by_key))
        except Exception as exc:  # scheduler forbids run_on_scheduler: treat all as unknown
            log.warning("could not ask the scheduler for running tasks: %s", exc)
            return {}
        return {by_key[key]: state for key, state in states.items()}

    def attach(self, job: Job) -> None:
        """Follow an attempt the scheduler still runs for a service that is gone (the same
        process before a restart, or the supervisor this one took over from)."""
        assert self.client is not None
        key = job_key(job.task_id, job.attempt)
        future = Future(key, client=self.client)
        # Tell the scheduler this client wants the key, so it reports the key's outcome to us
        # (what Client._inform_scheduler_of_futures does on reconnect).
        self.client._send_to_scheduler(
            {"op": "client-desires-keys", "keys": [key], "client": self.client.id}
        )
        self._track(future, job)

    async def past_events(self) -> list[dict[str, Any]]:
        """The workers' events the scheduler still keeps, oldest first (for a supervisor
        taking over: what arrived while no one listened)."""
        assert self.client is not None
        events = await self.client.get_events(EVENT_TOPIC)
        return [msg for _ts, msg in events if isinstance(msg, dict) and "t" in msg]

    def forget_all(self) -> None:
        """Stop following every attempt, leaving the work on the cluster (another
        supervisor follows it now)."""
        self._futures.clear()
        self._waiting.clear()

    def _track(self, future: Future, job: Job) -> None:
        self._futures[job.task_id] = (future, job)
        loop = self._loop
        assert loop is not None

        def done(f: Future) -> None:
            if not (self._closing or loop.is_closed()):
                loop.call_soon_threadsafe(lambda: loop.create_task(self._finish(f, job)))

        future.add_done_callback(done)

    def is_tracking(self, task_id: str) -> bool:
        return task_id in self._futures or task_id in self._waiting

    async def _finish(self, future: Future, job: Job) -> None:
        current = self._futures.get(job.task_id)
        if current is None or current[0] is not future:
            return
        del self._futures[job.task_id]
        outcome = await self._outcome_of(future, job)
        future.release()
        self._listener.on_outcome(outcome)

    async def _outcome_of(self, future: Future, job: Job) -> Outcome:
        base = {"task_id": job.task_id, "attempt": job.attempt}
        if future.status == "cancelled":
            return Outcome(**base, succeeded=False, lost=True, error="the cluster lost the task")
        try:
            value = await future
        except asyncio.CancelledError:
            return Outcome(**base, succeeded=False, lost=True, error="the cluster lost the task")
        except Exception as exc:  # KilledWorker and friends: run_job itself never raises
            return Outcome(**base, succeeded=False, error=f"{type(exc).__name__}: {exc}",
                           fault=True)
        return outcome_from(value, **base)

    # cancelling -----------------------------------------------------------------------------
    async def request_cancel(self, task_id: str, *, started: bool) -> None:
        """Ask a task to stop: cooperative when running, immediate when still queued."""
        if self._waiting.pop(task_id, None) is not None or not self.connected:
            return  # never handed over, or lost with the scheduler: nothing runs
        assert self.client is not None
        try:
            await asyncio.wait_for(
                Event(cancel_event_name(task_id), client=self.client).set(), CANCEL_EVENT_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            # the scheduler went away meanwhile: the attempt is lost with it, and the index
            # (the task is Deleted) keeps it from being queued again
            log.warning("could not ask task %s to stop: %s", task_id, exc)
            return
        tracked = self._futures.get(task_id)
        if tracked is not None and not started:
            await self.client.cancel([tracked[0]], force=True)

    async def force_cancel(self, task_id: str) -> None:
        tracked = self._futures.get(task_id)
        if tracked is not None and self.connected:
            assert self.client is not None
            await self.client.cancel([tracked[0]], force=True)

    async def forget_cancel_event(self, task_id: str) -> None:
        if self.client is None or not self.connected:
            return
        try:
            await asyncio.wait_for(
                Event(cancel_event_name(task_id), client=self.client).clear(),
                CANCEL_EVENT_TIMEOUT)
        except Exception:
            pass

    # events -------------------------------------------------------------------------------------
    def _on_worker_event(self, event: tuple[float, dict[str, Any]]) -> None:
        _timestamp, msg = event
        if isinstance(msg, dict) and "t" in msg:
            self._listener.on_event(msg)


def _dashboard_link_of(client: Client) -> str | None:
    """The dashboard link from what the client learnt when it connected (no request)."""
    try:
        return client.dashboard_link
    except (KeyError, AttributeError, TypeError):  # the scheduler runs no dashboard
        return None


def outcome_from(value: dict[str, Any], *, task_id: str, attempt: int) -> Outcome:
    """The :class:`Outcome` of what :func:`run_job` returned."""
    ending = value.get("ending")
    lines = int(value.get("logLinesSent", 0))
    if ending != "succeeded":
        return Outcome(
            task_id=task_id, attempt=attempt, succeeded=False, cancelled=ending == "cancelled",
            error=value.get("error") or "failed", log_lines_sent=lines,
            fault=ending == "error", traceback=value.get("traceback"),
        )
    artifact = value.get("artifact")
    return Outcome(
        task_id=task_id,
        attempt=attempt,
        succeeded=True,
        artifact=ArtifactInfo(
            storage_path=artifact["storagePath"],
            file_name=artifact["fileName"],
            size_bytes=artifact["sizeBytes"],
            sha256=artifact["sha256"],
        ) if artifact else None,
        summary=value.get("summary"),
        entries_added=value.get("entriesAdded", []),
        entries_removed=value.get("entriesRemoved", []),
        entries_updated=[_entry_update(u) for u in value.get("entriesUpdated", [])],
        log_lines_sent=lines,
    )


def _entry_update(value: dict[str, Any]) -> EntryUpdate:
    """An :class:`EntryUpdate` from its msgpack form (the worker sends plain values: the run's
    ending also travels as an event, which must be msgpack-serialisable)."""
    build = value.get("build")
    return EntryUpdate(**{**value, "build": BuildState(
        **{**build, "outputs": tuple(build.get("outputs") or ())}) if build else None})
