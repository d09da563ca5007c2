"""How far pieces running anywhere on the cluster have got, before their results come back.

A task that fans pieces out (:mod:`tools.cog`) learns that a piece is done only when its
result arrives, which for a 2048² piece is a sixteenth of a 6000² raster at once. To move
its progress while pieces run, it hands each piece a :class:`Ticker` and reads a
:class:`Counter`: a piece calls ``ticker.tick(n)`` as it finishes units of work (tiles).

- In the process that counts (local threads, or a piece on the counting task's own worker),
  ``tick`` adds to the counter directly.
- Elsewhere it is a worker event on the one topic :data:`TOPIC` (``Worker.log_event``, as
  the service's own events travel; the scheduler keeps a bounded log per topic, so one
  shared topic keeps it bounded), which the counting process's client receives
  (``Client.subscribe_topic``) and routes to the counter by the ticker's token.

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


class Counter:
    """A thread-safe running total."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0

    def add(self, n: int) -> None:
        with self._lock:
            self._value += n

    @property
    def value(self) -> int:
        with self._lock:
            return self._value


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
def counting(client: Any = None) -> Iterator[tuple[Ticker, Counter]]:
    """A ticker for pieces and the counter their ticks add to, while the block runs.
    ``client`` (a ``distributed.Client``, or None for local threads) receives the ticks of
    pieces running in other processes."""
    counter = Counter()
    token = uuid.uuid4().hex
    with _LOCK:
        _SINKS[token] = counter.add
        if client is not None and client not in _SUBSCRIBED:
            client.subscribe_topic(TOPIC, _route)
            _SUBSCRIBED.add(client)
    try:
        yield Ticker(token), counter
    finally:
        with _LOCK:
            _SINKS.pop(token, None)


def _route(event: Any) -> None:
    """A tick from another process: ``(timestamp, [token, n])``."""
    _, (token, n) = event
    sink = _SINKS.get(token)
    if sink is not None:
        sink(int(n))
