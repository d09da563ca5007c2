"""Sources: how a piece's task gets the pixels of its window (a culled slice of the source's
graph, a window of an in-memory variable, or pixels passed in for next-stage pieces).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from tools.raster.cog._layout import Layout


@dataclass(frozen=True)
class GraphSource:
    """The culled task graph of the source chunks under a piece, and the crop to apply.

    Chunks held by the cluster (a persisted array) are not in the graph: they come as the
    task's ``remote`` argument, which Dask resolves to their values."""

    graph: dict[Any, Any]
    keys: list[list[list[Any]]]  # [band chunk][y chunk][x chunk]
    crop: tuple[slice, slice]

    def load(self, data: np.ndarray | None, remote: dict[Any, Any]) -> np.ndarray:
        from dask.local import get_sync

        graph = self.graph
        if remote:
            graph = dict(graph)
            for key, value in remote.items():
                graph[key] = value.result() if hasattr(value, "result") else value
        flat = [k for bands in self.keys for rows in bands for k in rows]
        blocks = iter(get_sync(graph, flat))
        nested = [[[next(blocks) for _ in rows] for rows in bands] for bands in self.keys]
        return np.block(nested)[:, self.crop[0], self.crop[1]]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class VariableSource:
    """A window of a non-dask (in memory or lazily indexed) variable."""

    variable: xr.Variable

    def load(self, data: np.ndarray | None, remote: dict[Any, Any]) -> np.ndarray:
        return np.asarray(self.variable.values)


@dataclass(frozen=True)
class PassedSource:
    """Pixels passed to the task as its second argument (next-stage pieces)."""

    def load(self, data: np.ndarray | None, remote: dict[Any, Any]) -> np.ndarray:
        assert data is not None
        return data


class Sources:
    """Makes the sources of the full-resolution pieces, from the source's task graph."""

    def __init__(self, da: xr.DataArray) -> None:
        self.variable = da.variable
        self.dask = da.chunks is not None
        if self.dask:
            data = da.data
            self.graph = dict(data.__dask_graph__())
            self.keys = data.__dask_keys__()
            self.bounds = [np.cumsum((0, *c)) for c in data.chunks]
            future = future_type()
            self.remote = {k for k, v in self.graph.items()
                           if future is not None and isinstance(v, future)}

    def get(self, ys: slice, xs: slice) -> tuple[GraphSource | VariableSource, dict[Any, Any]]:
        """The source of a piece and the cluster-held chunks it needs."""
        if not self.dask:
            return VariableSource(self.variable[:, ys, xs]), {}
        from dask.optimization import cull

        y_bounds, x_bounds = self.bounds[1], self.bounds[2]
        iy0 = int(np.searchsorted(y_bounds, ys.start, side="right")) - 1
        iy1 = int(np.searchsorted(y_bounds, ys.stop, side="left"))
        ix0 = int(np.searchsorted(x_bounds, xs.start, side="right")) - 1
        ix1 = int(np.searchsorted(x_bounds, xs.stop, side="left"))
        keys = [[row[ix0:ix1] for row in band[iy0:iy1]] for band in self.keys]
        graph, _ = cull(self.graph, [k for b in keys for r in b for k in r])
        remote = {k: graph.pop(k) for k in self.remote.intersection(graph)}
        crop = (slice(ys.start - int(y_bounds[iy0]), ys.stop - int(y_bounds[iy0])),
                slice(xs.start - int(x_bounds[ix0]), xs.stop - int(x_bounds[ix0])))
        return GraphSource(graph, keys, crop), remote

    def overlap(self, layout: Layout) -> float:
        """Source pixels computed per raster pixel (1.0 when chunks line up with pieces)."""
        if not self.dask:
            return 1.0
        cover = 1.0
        for bounds, size in zip(self.bounds[1:], (layout.height, layout.width)):
            total = 0
            for start in range(0, size, layout.piece):
                stop = min(size, start + layout.piece)
                i0 = int(np.searchsorted(bounds, start, side="right")) - 1
                i1 = int(np.searchsorted(bounds, stop, side="left"))
                total += int(bounds[i1] - bounds[i0])
            cover *= total / size
        return cover


def future_type() -> type | None:
    try:
        from distributed import Future
    except ImportError:
        return None
    return Future


