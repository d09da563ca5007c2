"""How far pieces running anywhere on the cluster have got, before their results come back.

A task that fans pieces out (:mod:`tools.raster.cog`) learns that a piece is done only when its
result arrives, which for a 2048² piece is a sixteenth of a 6000² raster at once. To move
its progress while pieces run, it hands each piece a :class:`Ticker` (:func:`counting`): a
piece calls ``ticker.tick(n)`` as it finishes units of work (tiles), and the counting task's
``sink(n)`` is called.

- In the process that counts (local threads, or a piece on the counting task's own worker),
  ``tick`` calls the sink directly.
- Elsewhere it is a worker event on the one topic :data:`TOPIC` (``Worker.log_event``, as
  the service's own events travel; the scheduler keeps a bounded log per topic, so one
  shared topic keeps it bounded), which the counting process's client receives
  (``Client.subscribe_topic``) and routes to the sink by the ticker's token.

Ticks are a hint for progress: one lost before the subscription reached the scheduler is
made up when the piece's result arrives (callers show the larger of both counts).
"""

from __future__ import annotations

import threading
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

TOPIC = "procplat-piece-progress"

_SINKS: dict[str, Callable[[int], None]] = {}
_LOCK = threading.Lock()
_SUBSCRIBED: weakref.WeakSet[Any] = weakref.WeakSet()


@dataclass(frozen=True)
class Ticker:
    """A picklable handle pieces report their progress through."""

    token: str

    def tick(self, n: int = 1) -> None:
        sink = _SINKS.get(self.token)
        if sink is not None:
            sink(n)
            return
        try:
            from distributed import get_worker

            worker = get_worker()
        except (ImportError, ValueError):
            return  # nowhere to send it
        worker.log_event(TOPIC, [self.token, n])


@contextmanager
def counting(sink: Callable[[int], None], client: Any = None) -> Iterator[Ticker]:
    """A ticker for pieces whose ticks call ``sink(n)`` while the block runs (from the
    piece's thread, or the client's event loop thread: ``sink`` must be thread-safe).
    ``client`` (a ``distributed.Client``, or None for local threads) receives the ticks of
    pieces running in other processes."""
    token = uuid.uuid4().hex
    with _LOCK:
        _SINKS[token] = sink
        if client is not None and client not in _SUBSCRIBED:
            client.subscribe_topic(TOPIC, _route)
            _SUBSCRIBED.add(client)
    try:
        yield Ticker(token)
    finally:
        with _LOCK:
            _SINKS.pop(token, None)


def _route(event: Any) -> None:
    """A tick from another process: ``(timestamp, [token, n])``."""
    _, (token, n) = event
    sink = _SINKS.get(token)
    if sink is not None:
        sink(int(n))
