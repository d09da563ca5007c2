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
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from tools.contract import Cancelled, Reporter, ToolError

T = TypeVar("T")
POLL_INTERVAL = 0.01
CHECK_INTERVAL = 0.2


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


@contextmanager
def _executor() -> Iterator[Any]:
    """A Dask client seen from inside a task, the default client, or a local thread pool."""
    if on_worker():
        from distributed import worker_client

        with worker_client() as client:
            yield client
    elif (client := default_client()) is not None:
        yield client
    else:
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
            yield pool


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
    with _executor() as executor:
        dask = not isinstance(executor, concurrent.futures.Executor)
        if dask:
            keys = [f"{key_prefix}-{i}" for i in range(len(args))]
            futures = [executor.submit(piece(fn), *a, key=k, pure=False)
                       for a, k in zip(args, keys)]
        else:
            futures = [executor.submit(fn, *a) for a in args]
        try:
            for future in futures:
                yield _wait(future, reporter)
        finally:
            for future in futures:
                future.cancel()


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
