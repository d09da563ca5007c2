"""Fanning a tool's work (files, chunks) out over the cluster the tool runs on.

Inside a task on a Dask worker, :func:`fan_out` submits the pieces through
``distributed.worker_client`` (the parent task secedes, so it holds no worker thread while it
waits) and they run on every worker of the cluster. Outside a cluster (a notebook, a test
calling a tool directly) the pieces run in a local thread pool. Either way results come back
in submission order, the parent checks for cancellation while it waits, and on cancellation
or error the outstanding pieces are cancelled; pieces that are already running see the same
cancellation through a :class:`StopSignal` they are given.

A piece does not raise out of its Dask task (a Dask worker logs every exception a task raises
as "Compute Failed" with a traceback): :func:`piece` runs it so that it returns how it ended
as a value, and :func:`piece_result` raises that again in the parent, which ends the run the
usual way. So a cancelled run or a :class:`~tools.contract.ToolError` (outcomes, not faults)
logs nothing on the workers, and a bug in a piece is logged once, by whoever runs the tool,
with the piece's frames in its traceback (``distributed`` pickles tracebacks).

:func:`executor` is the one seam every piece runs through (:func:`fan_out` here, and
:func:`tools.raster.cog.write_cog`'s pieces): an :class:`Executor` that submits, waits for
the first pieces done, and cancels, on the Dask cluster or in local threads alike.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from tools.contract import Cancelled, Reporter, ToolError

T = TypeVar("T")
POLL_INTERVAL = 0.01
CHECK_INTERVAL = 0.2


class Stop(Protocol):
    """Anything with ``check()`` raising :class:`Cancelled` (e.g. :class:`StopSignal`)."""

    def check(self) -> None: ...


@dataclass(frozen=True)
class StopSignal:
    """A picklable handle on the run's cancellation, for pieces running anywhere."""

    event_name: str | None = None

    def is_set(self) -> bool:
        if self.event_name is None:
            return False
        now = time.monotonic()
        cache = _STOP_CACHE.setdefault(self.event_name, [0.0, False])
        if cache[1] or now - cache[0] < CHECK_INTERVAL:
            return bool(cache[1])
        cache[0] = now
        try:
            from distributed import Event

            cache[1] = bool(Event(self.event_name).is_set())
        except Exception:  # no scheduler reachable: keep going
            return False
        return bool(cache[1])

    def check(self) -> None:
        if self.is_set():
            raise Cancelled()


_STOP_CACHE: dict[str, list[Any]] = {}


@dataclass(frozen=True)
class _Ended:
    """What a piece returns instead of raising when it was cancelled or failed cleanly."""

    error: Exception


def piece(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` as a piece to submit to the cluster: whatever it raises comes back as a value
    for :func:`piece_result` instead of failing the Dask task."""
    return functools.partial(_run_piece, fn)


def _run_piece(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except (Cancelled, ToolError) as exc:
        return _Ended(exc)
    except Exception as exc:  # a fault: it travels to the parent, traceback included
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # an exception that cannot travel: Dask reports it as it can
            raise exc from None
        return _Ended(exc)


def piece_result(value: Any) -> Any:
    """A piece's result; raises the cancellation or tool error the piece ended with."""
    if isinstance(value, _Ended):
        raise value.error
    return value


def on_worker() -> bool:
    """Whether this code runs inside a task on a Dask worker."""
    try:
        from distributed import get_worker

        get_worker()
        return True
    except (ImportError, ValueError):
        return False


def default_client() -> Any:
    """The ``distributed`` client a notebook or script made its default, else None."""
    import dask

    if dask.config.get("scheduler", None) not in (None, "dask.distributed", "distributed"):
        return None
    try:
        from distributed import default_client as current

        return current()
    except (ImportError, ValueError):
        return None


# --- the executor seam: the cluster, or local threads ---------------------------------------


class Executor(Protocol):
    """Where pieces run: the Dask cluster seen from the caller, or a local thread pool.

    ``slots`` is how many pieces run at once (the cluster's threads); ``client`` the
    ``distributed`` client they run through (None for local threads), e.g. to receive their
    worker events; ``stop`` the cancellation to hand to pieces (for local threads it is also
    set when the executor cancels or closes, so running pieces stop with it)."""

    slots: int
    client: Any
    stop: Stop | None

    def submit(self, fn: Callable[..., Any], *args: Any, key: str, priority: int = 0) -> Any:
        """Run ``fn(*args)`` as a piece (on the cluster: with that key and priority, and as
        a :func:`piece`: see :func:`piece_result`); returns its future."""

    def put(self, data: T) -> T | Any:
        """``data`` as an argument for pieces: on the cluster, scattered once."""

    def wait_any(self, futures: Sequence[Any], timeout: float) -> set[Any]:
        """The futures done within ``timeout`` seconds (empty if none is)."""

    def cancel(self, futures: Sequence[Any]) -> None:
        """Cancel the pieces not done (running local ones see it through ``stop``)."""


class _ThreadExecutor:
    def __init__(self, pool: concurrent.futures.ThreadPoolExecutor, slots: int,
                 stop: Stop | None) -> None:
        self.pool = pool
        self.slots = slots
        self.client = None
        self.event = threading.Event()
        self.outer = stop
        self.stop: Stop | None = self

    def check(self) -> None:  # the stop handed to pieces running in our threads
        if self.event.is_set():
            raise Cancelled()
        if self.outer is not None:
            self.outer.check()

    def submit(self, fn: Callable[..., Any], *args: Any, key: str, priority: int = 0) -> Any:
        return self.pool.submit(fn, *args)

    def put(self, data: T) -> T:
        return data

    def wait_any(self, futures: Sequence[Any], timeout: float) -> set[Any]:
        done, _ = concurrent.futures.wait(
            futures, timeout=timeout, return_when=concurrent.futures.FIRST_COMPLETED)
        return done

    def cancel(self, futures: Sequence[Any]) -> None:
        self.event.set()
        for future in futures:
            future.cancel()


class _DaskExecutor:
    def __init__(self, client: Any, stop: Stop | None) -> None:
        self.client = client
        self.slots = max(1, sum(client.nthreads().values()))
        self.stop = stop

    def submit(self, fn: Callable[..., Any], *args: Any, key: str, priority: int = 0) -> Any:
        # a cancelled piece returns, not raises: see piece()
        return self.client.submit(piece(fn), *args, key=key, pure=False, priority=priority)

    def put(self, data: T) -> Any:
        return self.client.scatter(data, hash=False)

    def wait_any(self, futures: Sequence[Any], timeout: float) -> set[Any]:
        # Polled, not distributed.wait(timeout=...): the TimeoutError that raises is caught in
        # a reference cycle that keeps the pending futures (and their results on the
        # workers) alive until the garbage collector runs, so memory grew with the work.
        deadline = time.monotonic() + timeout
        while True:
            done = {f for f in futures if f.done()}
            if done or time.monotonic() >= deadline:
                return done
            time.sleep(POLL_INTERVAL)

    def cancel(self, futures: Sequence[Any]) -> None:
        if futures:
            self.client.cancel(list(futures))


@contextmanager
def executor(stop: Stop | None = None, *, thread_name: str = "piece") -> Iterator[Executor]:
    """The cluster seen from inside a task, the default client, or local threads (as many
    as dask's ``num_workers``, else the CPUs; named ``thread_name``). ``stop`` is the run's
    cancellation, handed to pieces as :attr:`Executor.stop`."""
    if on_worker():
        from distributed import worker_client

        with worker_client() as client:
            yield _DaskExecutor(client, stop)
        return
    client = default_client()
    if client is not None:
        yield _DaskExecutor(client, stop)
        return
    import dask

    slots = int(dask.config.get("num_workers", None) or os.cpu_count() or 2)
    pool = concurrent.futures.ThreadPoolExecutor(slots, thread_name_prefix=thread_name)
    threads = _ThreadExecutor(pool, slots, stop)
    try:
        yield threads
    finally:
        threads.event.set()
        pool.shutdown(wait=True, cancel_futures=True)


def fan_out(
    fn: Callable[..., T],
    args: Sequence[tuple[Any, ...]],
    *,
    reporter: Reporter,
    key_prefix: str,
) -> Iterator[T]:
    """Run ``fn(*a)`` for every ``a`` in ``args`` on the cluster; yield results in order."""
    if not args:
        return
    with executor(thread_name=key_prefix) as pieces:
        futures = [pieces.submit(fn, *a, key=f"{key_prefix}-{i}") for i, a in enumerate(args)]
        try:
            for future in futures:
                yield _wait(future, reporter)
        finally:
            pieces.cancel(futures)


def _wait(future: Any, reporter: Reporter) -> Any:
    """The future's result, checking for cancellation while it runs. Polled rather than
    ``result(timeout=...)``: a distributed TimeoutError keeps futures alive in a reference
    cycle until the garbage collector runs."""
    while not future.done():
        reporter.check_cancelled()
        time.sleep(POLL_INTERVAL)
    reporter.check_cancelled()
    return piece_result(future.result())


def compute(obj: Any, *, reporter: Reporter) -> Any:
    """Compute a dask collection or delayed value on the cluster, stopping on cancellation.

    On a worker it runs through ``worker_client`` on the whole cluster; elsewhere with
    dask's current scheduler (the default ``distributed`` client when there is one)."""
    if on_worker():
        from distributed import worker_client

        with worker_client() as client:
            future = client.compute(obj)
            try:
                return _wait(future, reporter)
            finally:
                future.cancel()
    reporter.check_cancelled()
    import dask

    (result,) = dask.compute(obj)
    reporter.check_cancelled()
    return result
