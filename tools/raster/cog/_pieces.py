"""One piece's task, run on the cluster (or in a local thread): compute its window, encode
its tiles at every level it holds, return the rest for the next stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tools.raster.cog._codec import Codec
from tools.raster.cog._sources import GraphSource, PassedSource, VariableSource
from tools.runtime.fanout import Stop
from tools.runtime.piece_progress import Ticker


@dataclass(frozen=True, kw_only=True)
class Job:
    stage: int
    row: int
    col: int
    level: int  # of the piece's pixels
    y0: int  # origin of the piece at that level
    x0: int
    levels: int  # levels encoded from the piece
    residual: bool  # whether to return the next level down
    source: GraphSource | VariableSource | PassedSource
    codec: Codec


@dataclass(frozen=True)
class PieceResult:
    tiles: list[tuple[int, int, int, bytes]]  # (level, tile row, tile col, stored bytes)
    residual: np.ndarray | None




def render_piece(job: Job, data: np.ndarray | None, remote: dict[Any, Any],
                  stop: Stop | None, ticker: Ticker | None = None) -> PieceResult:
    """Compute one piece, encode its tiles at every level it holds, return the rest.

    Runs as a task on the cluster (or in a local thread); each full-resolution tile it
    encodes ticks ``ticker`` (the caller's progress, before the result is back)."""
    if stop is not None:
        stop.check()
    codec = job.codec
    b = codec.blocksize
    arr = np.asarray(job.source.load(data, remote))
    if arr.dtype != np.dtype(codec.dtype):
        arr = arr.astype(codec.dtype)
    tiles: list[tuple[int, int, int, bytes]] = []
    for j in range(job.levels):
        row0, col0 = (job.y0 >> j) // b, (job.x0 >> j) // b
        for ty in range(0, arr.shape[1], b):
            for tx in range(0, arr.shape[2], b):
                if stop is not None:
                    stop.check()
                block = arr[:, ty:ty + b, tx:tx + b]
                tiles.append((job.level + j, row0 + ty // b, col0 + tx // b, codec.encode(block)))
                if ticker is not None and job.level + j == 0:
                    ticker.tick()
        if j < job.levels - 1 or job.residual:
            arr = codec.reduce(arr)
    return PieceResult(tiles, arr if job.residual else None)
