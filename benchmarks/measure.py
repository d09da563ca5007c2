"""Measurement helpers shared by the benchmarks (``bench_export.py``, ``bench_align.py``).

- :class:`TreeMemory`: the peak summed resident memory (RSS) of a process tree, and of chosen
  pids (e.g. a LocalCluster's workers), sampled every ``SAMPLE`` seconds with psutil on a
  background thread; also the tree's CPU seconds and the whole machine's, so a benchmark can
  tell how much CPU other people's jobs used meanwhile.
- :class:`QuietReporter`: a tool reporter that reports nothing; ``gb`` and ``verdict`` format
  figures the same way in every benchmark; :func:`overview_factors` is GDAL's COG rule for
  the hand-written baselines.

Benchmarks run as scripts from the repository root (``python benchmarks/bench_x.py``), so the
script's folder is on ``sys.path`` and ``from measure import ...`` works.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from tools.contract import PrintReporter

SAMPLE = 0.05  # seconds between memory samples


def overview_factors(width: int, height: int, block: int) -> list[int]:
    """GDAL's COG rule: 2, 4, ... until both sides fit in one block."""
    factors, f = [], 2
    while -(-width // (f // 2)) > block or -(-height // (f // 2)) > block:
        factors.append(f)
        f *= 2
    return factors


class TreeMemory:
    """Peak summed RSS of a process tree (and of chosen pids), sampled every 50 ms."""

    def __init__(self, root_pid: int | None = None) -> None:
        import psutil

        self.root = psutil.Process(root_pid)
        self.watched: list[int] = []  # e.g. the worker processes
        self.peak = 0
        self.watched_peak = 0
        self.per_pid_peak: dict[int, int] = {}
        self.timeline: list[tuple[float, int]] = []  # (monotonic time, watched RSS)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="tree-memory")

    def processes(self) -> list[Any]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except Exception:
            return [self.root]

    def sample(self) -> tuple[int, int]:
        total = watched = 0
        for p in self.processes():
            try:
                rss = p.memory_info().rss
            except Exception:  # a process that just ended
                continue
            total += rss
            if p.pid in self.watched:
                watched += rss
                self.per_pid_peak[p.pid] = max(self.per_pid_peak.get(p.pid, 0), rss)
        return total, watched

    def cpu(self) -> float:
        """CPU seconds (user + system) used so far by the live processes of the tree."""
        total = 0.0
        for p in self.processes():
            with contextlib.suppress(Exception):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def _run(self) -> None:
        while not self.stopped.is_set():
            self._update()
            time.sleep(SAMPLE)

    def _update(self) -> None:
        total, watched = self.sample()
        if self.watched:
            self.timeline.append((time.monotonic(), watched))
        self.peak = max(self.peak, total)
        self.watched_peak = max(self.watched_peak, watched)

    @staticmethod
    def machine_busy() -> float:
        """CPU seconds all processes of the machine have used (not idle, not iowait)."""
        import psutil

        t = psutil.cpu_times()  # guest time is already in user: not summed
        return float(t.user + t.nice + t.system + t.irq + t.softirq + t.steal)

    def __enter__(self) -> TreeMemory:
        self.busy0 = self.machine_busy()
        self.before, self.watched_before = self.sample()
        self.per_pid_peak.clear()
        self.peak, self.watched_peak = self.before, self.watched_before
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stopped.set()
        self.thread.join()
        self._update()
        self.busy = self.machine_busy() - self.busy0  # ours and everybody else's


class QuietReporter(PrintReporter):
    """The tools' own :class:`~tools.contract.PrintReporter`, printing nothing."""

    def __init__(self) -> None:
        super().__init__(quiet=True)


def gb(n: float) -> str:
    return f"{n / 2**30:.2f} GB"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
