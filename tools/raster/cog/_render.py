"""Rendering: pieces submitted through :func:`tools.runtime.fanout.executor` (a window of
2 × the cluster's threads, in Morton order), their tiles appended to a spool file of framed
tiles, their residuals gathered into next-stage pieces; progress from ticks and results.
"""

from __future__ import annotations

import struct
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import xarray as xr

from tools.contract import Reporter
from tools.raster.cog._codec import Codec
from tools.raster.cog._layout import Layout, morton
from tools.raster.cog._pieces import Job, PieceResult, render_piece
from tools.raster.cog._sources import PassedSource, Sources
from tools.runtime import piece_progress
from tools.runtime.fanout import Stop, executor, piece_result

WAIT_SLICE = 0.2


def counted(n: int, noun: str) -> str:
    """``1 piece``, ``2 pieces``: a count for a log line a person reads."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


@dataclass
class TileIndex:
    """Where every tile of every level sits in the spool: offset of its frame, data size."""

    offsets: list[np.ndarray]
    sizes: list[np.ndarray]

    @classmethod
    def empty(cls, layout: Layout) -> TileIndex:
        shapes = [layout.tiles(level) for level in range(layout.nlevels + 1)]
        return cls([np.full(s, -1, np.int64) for s in shapes], [np.zeros(s, np.int64) for s in shapes])


@dataclass
class Pending:
    buffer: np.ndarray
    missing: int


@dataclass
class Progress:
    """Phase ``rendering``: the fraction of full-resolution tiles encoded (ticked by the
    pieces as each is encoded, or counted from their results, whichever is ahead), reported
    at every percent and logged at every tenth; then ``overviews``: the overview tiles.
    Thread-safe: ticks come from the pieces' threads or the client's event loop."""

    reporter: Reporter
    layout: Layout
    encoded: int = 0  # full-resolution tiles ticked
    lock: threading.Lock = field(default_factory=threading.Lock)
    main_total: int = 0
    ovr_total: int = 0
    main_done: int = 0
    ovr_done: int = 0
    phase: str = "rendering"
    shown: int = -1  # the percent last reported in the current phase
    logged: int = 0  # the tenths of the rendering logged

    def __post_init__(self) -> None:
        self.main_total = int(np.prod(self.layout.tiles(0)))
        self.ovr_total = sum(int(np.prod(self.layout.tiles(lv)))
                             for lv in range(1, self.layout.nlevels + 1))
        self.reporter.progress(0.0, "rendering")
        self.shown = 0

    def add(self, tiles: list[tuple[int, int, int, bytes]]) -> None:
        with self.lock:
            for t in tiles:
                if t[0] == 0:
                    self.main_done += 1
                else:
                    self.ovr_done += 1
            self._refresh()

    def tick(self, tiles: int) -> None:
        with self.lock:
            self.encoded += tiles
            self._refresh()

    def _refresh(self) -> None:
        main = min(self.main_total, max(self.main_done, self.encoded))
        if self.main_done < self.main_total:
            self._show(main / self.main_total, "rendering")
            self._log(main)
            return
        self._log(self.main_total)
        self._show(self.ovr_done / max(1, self.ovr_total), "overviews")

    def _show(self, fraction: float, phase: str) -> None:
        if phase != self.phase:
            self.phase, self.shown = phase, -1
        percent = int(fraction * 100)
        if percent > self.shown:
            self.shown = percent
            self.reporter.progress(fraction, phase)

    def _log(self, main: int) -> None:
        tenths = main * 10 // self.main_total
        if tenths > self.logged:
            self.logged = tenths
            self.reporter.log(f"Rendering: {main * 100 // self.main_total}% ({main:,} of "
                              f"{self.main_total:,} full-resolution tiles)")


def render(da: xr.DataArray, layout: Layout, codec: Codec, spool: BinaryIO,
            reporter: Reporter, stop: Stop | None, token: str) -> TileIndex:
    sources = Sources(da)
    overlap = sources.overlap(layout)
    if overlap > 1.25:
        reporter.log(f"Source chunks do not line up with {layout.piece}² pieces: "
                     f"{overlap:.2f}× the pixels are computed")
    index = TileIndex.empty(layout)
    pending: dict[tuple[int, int, int], Pending] = {}
    queue = deque(morton(*layout.pieces(0)))

    def job(stage: int, row: int, col: int, source: Any) -> Job:
        ys, xs = layout.window(stage, row, col)
        return Job(stage=stage, row=row, col=col, level=layout.stage_level(stage),
                   y0=ys.start, x0=xs.start, levels=layout.stage_levels(stage),
                   residual=stage + 1 < layout.nstages, source=source, codec=codec)

    progress = Progress(reporter, layout)
    with (executor(stop, thread_name="cog") as runner,
          piece_progress.counting(progress.tick, runner.client) as ticker):
        pieces = len(queue)
        reporter.log(f"Writing a {layout.width}×{layout.height}×{codec.count} {codec.dtype} COG: "
                     f"{counted(pieces, 'piece')} of {layout.piece}², "
                     f"{counted(layout.nlevels, 'overview')}, "
                     f"{counted(runner.slots, 'parallel task')}")
        window = 2 * runner.slots
        running: dict[Any, Job] = {}

        def submit(j: Job, data: Any, remote: dict[Any, Any]) -> None:
            future = runner.submit(render_piece, j, data, remote, runner.stop, ticker,
                                   key=f"cog-{token}-{j.stage}-{j.row}-{j.col}",
                                   priority=j.stage)
            running[future] = j

        try:
            while queue or running:
                while queue and len(running) < window:
                    row, col = queue.popleft()
                    source, remote = sources.get(*layout.window(0, row, col))
                    submit(job(0, row, col, source), None, remote)
                done = runner.wait_any(list(running), WAIT_SLICE)
                reporter.check_cancelled()
                if stop is not None:
                    stop.check()
                for future in done:
                    j = running.pop(future)
                    result: PieceResult = piece_result(future.result())
                    del future
                    spool_tiles(spool, index, result.tiles)
                    progress.add(result.tiles)
                    if result.residual is not None:
                        ready = gather(pending, layout, j, result.residual)
                        if ready is not None:
                            stage, row, col, pixels = ready
                            submit(job(stage, row, col, PassedSource()), runner.put(pixels), {})
        except BaseException:
            runner.cancel(list(running))
            raise
    progress.reporter.progress(1.0, "overviews")
    return index


def gather(pending: dict[tuple[int, int, int], Pending], layout: Layout, j: Job,
            residual: np.ndarray) -> tuple[int, int, int, np.ndarray] | None:
    """Put a piece's residual into its next-stage piece; return that piece once complete."""
    k = layout.m + 1
    stage, row, col = j.stage + 1, j.row >> k, j.col >> k
    key = (stage, row, col)
    if key not in pending:
        ys, xs = layout.window(stage, row, col)
        pending[key] = Pending(
            np.empty((residual.shape[0], ys.stop - ys.start, xs.stop - xs.start), residual.dtype),
            layout.feeders(stage, row, col))
    slot = pending[key]
    y, x = (j.y0 >> k) - row * layout.piece, (j.x0 >> k) - col * layout.piece
    slot.buffer[:, y:y + residual.shape[1], x:x + residual.shape[2]] = residual
    slot.missing -= 1
    if slot.missing:
        return None
    del pending[key]
    return stage, row, col, slot.buffer


def spool_tiles(spool: BinaryIO, index: TileIndex,
                 tiles: list[tuple[int, int, int, bytes]]) -> None:
    for level, row, col, data in tiles:
        index.offsets[level][row, col] = spool.tell()
        index.sizes[level][row, col] = len(data)
        spool.write(struct.pack("<I", len(data)))  # GDAL's BLOCK_LEADER=SIZE_AS_UINT4
        spool.write(data)
        spool.write(data[-4:])  # BLOCK_TRAILER=LAST_4_BYTES_REPEATED
