"""The one way the project writes a Cloud-Optimized GeoTIFF from a lazy (band, y, x) DataArray.

:func:`write_cog` cuts the raster into square *pieces* (2048² by default, or the source
chunk size when larger; always aligned to the 512² TIFF tiles) and runs one task per piece
on the cluster the caller runs on (``worker_client`` inside a Dask worker, the default
``distributed`` client in a notebook or test, a local thread pool otherwise). A task
computes its window of the source graph on its own (synchronously, in the task), cuts it
into tiles, applies the TIFF predictor and compresses each tile with libdeflate
(``imagecodecs``; it releases the GIL, so threads compress in parallel), then halves the
window (2×2 average, or nearest) and encodes the overview tiles that fall inside it
(a 2048² piece holds whole tiles of three levels: 2048², 1024² and 512² pixels). What is
left (a 256² thumbnail of the piece) goes back to the caller, which gathers 8×8 such
thumbnails into a 2048² piece of the next level and submits it like any other piece, so
every level is computed from the one above, in parallel, from bounded windows. Pieces are
submitted in Morton (Z) order through a window of 2 × the cluster's threads, so only a few
pieces and at most one or two unfinished next-level pieces are ever alive.

Each task ticks the caller's progress as it encodes a full-resolution tile
(:mod:`tools.runtime.piece_progress`), so the percent of phase ``rendering`` moves tile by tile
rather than piece by piece (a 2048² piece is 44% of a 3072² raster).

The caller appends the compressed tiles, as they arrive, to a spool file next to the
destination, each already framed the way GDAL frames COG tiles (a 4-byte size before, the
last 4 bytes repeated after). At the end it writes the COG itself: the TIFF header, GDAL's
"ghost" structural metadata, all IFDs (main image, then overviews from the largest), and
then the tile data from the smallest overview to the full resolution in row-major order,
copied from the spool with ``copy_file_range``. The GeoTIFF tags (CRS, transform, nodata,
tags and band descriptions) are taken from a 1×1 GeoTIFF that GDAL writes in memory, so
they are encoded exactly as GDAL encodes them. Everything is written under temporary
names in the destination folder and the COG is renamed into place at the end; on
cancellation or error both are removed.

Layout and sizes follow GDAL's COG driver: overview *i* is ``ceil(size / 2**i)`` and
overviews go on until both sides fit in one block; the image keeps its exact size (no
padding); the file is BigTIFF only when it would not fit in 4 GiB.

Why this and not the alternatives (measured by ``benchmarks/cog_write_strategies.py`` on
this 2-core machine with the CPUs otherwise idle, best of 2 runs: 8192² × 4-band uint8
RGBA read from a tiled DEFLATE GeoTIFF, written as DEFLATE level 6 with the horizontal
predictor, 512² tiles, average overviews; wall time, CPU seconds and peak resident memory of the whole
process tree, interpreters and ``GDAL_CACHEMAX=128`` included; "COG" is ``rio_cogeo``'s
verdict; every output had the source's size and pixels unless noted):

=====================================================================  ======  =====  ========  ===
strategy                                                               wall s  CPU s  peak RSS  COG
=====================================================================  ======  =====  ========  ===
a1 rasterio block loop, 1 thread, tiled GTiff + ``build_overviews``    24.0    24.0   0.29 GB   no
a2 same with GDAL ``NUM_THREADS=ALL_CPUS``                             12.2    23.8   0.32 GB   no
(1) odc-geo ``save_cog_with_dask``, dask threads                       13.0    24.1   0.63 GB   yes
(3) dask chunks → one writer (uncompressed GTiff), GDAL COG copy       13.3    26.0   0.50 GB   yes
    with ``NUM_THREADS=ALL_CPUS``
(2) ``write_cog``, local threads                                       6.7     12.7   0.40 GB   yes
(2) ``write_cog``, LocalCluster client (2 worker processes)            8.0     15.5   0.82 GB   yes
=====================================================================  ======  =====  ========  ===

At 16384² (4× the pixels) the peak stays where it was: 0.42 GB with local threads, 1.03 GB
on the LocalCluster (three interpreters). GDAL (rasterio's wheels use libdeflate too)
builds overviews by reading the full resolution back and decompressing it, and its COG copy
re-reads and re-encodes everything; ``write_cog`` encodes every tile once from pixels it
already holds, so it needs half the CPU, and it keeps both cores busy to the end, overviews
included. odc-geo (libdeflate via tifffile as well) spends about as much CPU as GDAL,
writes band-interleaved planes, does not mark the alpha band, and pads the image: a
1000×777 RGBA came back as 1000×778 (ColorInterp gray, undefined ×3), which rules it out.

Caveats: each piece computes its window of the graph on its own, so a graph that depends
on a whole-raster reduction (percentiles, min/max) must have it computed (or persisted)
first, or every piece recomputes it; source chunks that do not line up with the pieces are
computed once per piece that overlaps them (a log line says so). Overviews are computed
from the level above (like GDAL's), averaging only valid pixels: not nodata, not NaN, and
alpha > 0 when ``alpha`` is set; the alpha band itself is averaged over all pixels.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

import imagecodecs
import numpy as np
import xarray as xr

from tools.contract import Cancelled, PrintReporter, Reporter
from tools.runtime import piece_progress
from tools.runtime.fanout import default_client, on_worker, piece, piece_result
from tools.runtime.piece_progress import Ticker

Resampling = Literal["average", "nearest"]

DEFAULT_PIECE = 2048
MAX_PIECE = 8192
WAIT_SLICE = 0.2
POLL_INTERVAL = 0.01
BIGTIFF_THRESHOLD = 2**32 - 1  # a classic TIFF cannot address more
_COPY_CHUNK = 8 << 20

_COMPRESSION = {"NONE": 1, "LZW": 5, "DEFLATE": 8, "ZSTD": 50000}
_DEFAULT_LEVEL = {"DEFLATE": 6, "ZSTD": 9}  # GDAL's defaults (ZLEVEL, ZSTD_LEVEL)
_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")


@dataclass(frozen=True, kw_only=True)
class CogInfo:
    """What :func:`write_cog` wrote."""

    path: Path
    width: int
    height: int
    count: int
    dtype: str
    overviews: tuple[int, ...]  # decimation factors 2, 4, …; level i is ceil(size / 2**i)


class Stop(Protocol):
    """Anything with ``check()`` raising :class:`Cancelled` (e.g. ``tools.runtime.fanout.StopSignal``)."""

    def check(self) -> None: ...


def write_cog(
    da: xr.DataArray,
    dst_path: str | os.PathLike[str],
    *,
    reporter: Reporter | None = None,
    stop: Stop | None = None,
    compress: str = "DEFLATE",
    blocksize: int = 512,
    overview_resampling: Resampling = "average",
    nodata: float | None = None,
    alpha: bool = False,
    predictor: int | None = None,
    level: int | None = None,
    tags: dict[str, str] | None = None,
    band_descriptions: Sequence[str] | None = None,
    piece_size: int | None = None,
) -> CogInfo:
    """Write ``da`` (band, y, x; or y, x) as a COG at ``dst_path``.

    The array may be lazy (dask) or in memory; its CRS and transform come from
    ``da.rio``. ``nodata`` defaults to ``da.rio.nodata``; ``alpha`` marks the last band as
    an alpha band (RGBA for 4 uint8 bands). ``predictor`` None means 2 (horizontal) for
    integers and 3 (floating point) for floats, 1 without compression; ``level`` None means
    GDAL's default for the codec. ``piece_size`` (a power-of-two multiple of ``blocksize``)
    is the side of the windows computed per task; by default 2048 or the source chunk size.
    Progress phases: ``rendering`` (fraction of full-resolution tiles encoded, moving tile by
    tile as the pieces run; a log line at every tenth), ``overviews``, ``assembling``.
    Raises :class:`Cancelled` when ``reporter`` or ``stop`` say so; nothing is left at
    ``dst_path`` or beside it then, or on error.
    """
    reporter = reporter if reporter is not None else PrintReporter(quiet=True)
    da = _as_band_y_x(da)
    count, height, width = (int(n) for n in da.shape)
    if nodata is None:
        nodata = da.rio.nodata
    codec = _Codec.make(
        dtype=str(da.dtype), count=count, blocksize=blocksize, compress=compress,
        level=level, predictor=predictor, alpha=alpha, nodata=nodata,
        resampling=overview_resampling,
    )
    layout = _Layout.make(height=height, width=width, blocksize=blocksize,
                          piece=piece_size or _default_piece(da, blocksize))
    geo_tags = _geotiff_tags(da, codec, tags=tags, band_descriptions=band_descriptions)
    dst = Path(dst_path)
    token = uuid.uuid4().hex[:12]
    partial = dst.with_name(f".{dst.name}.{token}.partial")
    spool_path = dst.with_name(f".{dst.name}.{token}.tiles")
    started = time.monotonic()
    try:
        with open(spool_path, "w+b") as spool:
            index = _render(da, layout, codec, spool, reporter, stop, token)
            reporter.progress(0.0, "assembling")
            size = _assemble(partial, spool, index, layout, codec, geo_tags, reporter, stop)
        os.replace(partial, dst)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        spool_path.unlink(missing_ok=True)
    reporter.progress(1.0, "assembling")
    reporter.log(
        f"Wrote {dst.name}: {width}×{height}×{count} {codec.dtype}, "
        f"{_counted(layout.nlevels, 'overview')}, "
        f"{size / 1e6:.1f} MB in {time.monotonic() - started:.1f} s"
    )
    return CogInfo(path=dst, width=width, height=height, count=count, dtype=codec.dtype,
                   overviews=tuple(2**i for i in range(1, layout.nlevels + 1)))


# ---------------------------------------------------------------------------------------
# Input


def _as_band_y_x(da: xr.DataArray) -> xr.DataArray:
    y, x = da.rio.y_dim, da.rio.x_dim
    if da.ndim == 2:
        da = da.expand_dims("band")
    if da.ndim != 3:
        raise ValueError(f"expected a (band, y, x) or (y, x) array, got dims {da.dims}")
    band = next(d for d in da.dims if d not in (y, x))
    return da.transpose(band, y, x)


def _counted(n: int, noun: str) -> str:
    """``1 piece``, ``2 pieces``: a count for a log line a person reads."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _default_piece(da: xr.DataArray, blocksize: int) -> int:
    chunks = da.chunks
    target = DEFAULT_PIECE
    if chunks is not None:
        target = max(target, min(max(chunks[1][0], chunks[2][0]), MAX_PIECE))
    piece = blocksize
    while piece < target:
        piece *= 2
    return piece


# ---------------------------------------------------------------------------------------
# Pixels to tiles: the codec (predictor + compression) and the 2× reduction


@dataclass(frozen=True, kw_only=True)
class _Codec:
    dtype: str
    count: int
    blocksize: int
    compression: int
    level: int | None
    predictor: int
    alpha: bool
    nodata: float | None
    resampling: Resampling

    @classmethod
    def make(cls, *, dtype: str, count: int, blocksize: int, compress: str, level: int | None,
             predictor: int | None, alpha: bool, nodata: float | None,
             resampling: str) -> _Codec:
        if dtype not in _DTYPES:
            raise ValueError(f"cannot write {dtype} pixels to a COG (use one of {_DTYPES})")
        name = compress.upper()
        if name not in _COMPRESSION:
            raise ValueError(f"unknown compression {compress!r} (use one of {list(_COMPRESSION)})")
        if blocksize < 16 or blocksize % 16:
            raise ValueError(f"blocksize must be a multiple of 16, got {blocksize}")
        if resampling not in ("average", "nearest"):
            raise ValueError(f"overview_resampling must be 'average' or 'nearest', got {resampling!r}")
        if alpha and count < 2:
            raise ValueError("alpha needs at least two bands (the last is the alpha band)")
        is_float = np.dtype(dtype).kind == "f"
        if predictor is None:
            predictor = 1 if name == "NONE" else 3 if is_float else 2
        if predictor not in (1, 2, 3) or (predictor == 3 and not is_float) or (
                predictor == 2 and is_float):
            raise ValueError(f"predictor {predictor} does not suit {dtype} pixels")
        if nodata is not None and not is_float:
            info = np.iinfo(dtype)
            if not (float(nodata).is_integer() and info.min <= nodata <= info.max):
                raise ValueError(f"nodata {nodata} is not a {dtype} value")
        return cls(dtype=dtype, count=count, blocksize=blocksize, compression=_COMPRESSION[name],
                   level=_DEFAULT_LEVEL.get(name) if level is None else level,
                   predictor=predictor, alpha=alpha, nodata=nodata,
                   resampling=resampling)  # type: ignore[arg-type]

    def encode(self, block: np.ndarray) -> bytes:
        """One tile, pixel-interleaved, zero-padded to the block size, as stored."""
        count, h, w = block.shape
        b = self.blocksize
        tile = np.zeros((b, b, count), dtype=np.dtype(self.dtype).newbyteorder("<"))
        tile[:h, :w] = np.moveaxis(block, 0, -1)
        if self.predictor == 2:
            tile = imagecodecs.delta_encode(tile, axis=-2)
        elif self.predictor == 3:
            tile = imagecodecs.floatpred_encode(tile, axis=-2)
        buffer: Any = tile  # the codecs take any contiguous buffer
        if self.compression == 8:
            return bytes(imagecodecs.deflate_encode(buffer, level=self.level))
        if self.compression == 50000:
            return bytes(imagecodecs.zstd_encode(buffer, level=self.level))
        if self.compression == 5:
            return bytes(imagecodecs.lzw_encode(buffer))
        return tile.tobytes()

    def reduce(self, arr: np.ndarray) -> np.ndarray:
        """Halve (band, y, x) pixels: ``ceil(size / 2)`` on each side."""
        if self.resampling == "nearest":
            return np.ascontiguousarray(arr[:, ::2, ::2])
        count = arr.shape[0]
        out = np.empty((count, (arr.shape[1] + 1) // 2, (arr.shape[2] + 1) // 2), arr.dtype)
        alpha_valid = arr[-1] > 0 if self.alpha else None
        for b in range(count):
            if self.alpha and b == count - 1:
                out[b] = _average(arr[b], None, 0)
                continue
            valid = alpha_valid
            band = arr[b]
            if self.nodata is not None and not math.isnan(self.nodata):
                ok = band != self.nodata
                valid = ok if valid is None else valid & ok
            if band.dtype.kind == "f":
                ok = ~np.isnan(band)
                valid = ok if valid is None else valid & ok
            fill = self.nodata if self.nodata is not None else 0
            out[b] = _average(band, valid, fill)
        return out


def _average(band: np.ndarray, valid: np.ndarray | None, fill: float) -> np.ndarray:
    """Mean of each 2×2 window over its valid pixels inside the raster."""
    h, w = band.shape
    if h % 2 or w % 2:  # pad to even sides; the padding is not valid
        inside = np.ones((h, w), bool) if valid is None else valid
        band = np.pad(band, ((0, h % 2), (0, w % 2)))
        valid = np.pad(inside, ((0, h % 2), (0, w % 2)))
    kind, size = band.dtype.kind, band.dtype.itemsize
    small_int = kind in "ui" and size <= 2
    if small_int:
        acc: type[np.number[Any]] = np.uint32 if kind == "u" else np.int32
    else:
        acc = np.float64 if size >= 4 and kind in "ui" or size == 8 else np.float32
    if valid is None:
        total = _quad_sum(band, acc)
        if small_int:
            return ((total + 2) // 4).astype(band.dtype)  # round half up
        mean = total / 4
        n = None
    else:
        total = _quad_sum(np.where(valid, band, 0), acc)
        n = _quad_sum(valid.view(np.uint8), np.uint8)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.true_divide(total, n, dtype=np.float64 if acc is np.float64 else np.float32)
    if kind in "ui":
        info = np.iinfo(band.dtype)
        mean = np.clip(np.floor(mean + 0.5), info.min, info.max)
    if n is not None:
        mean[n == 0] = fill
    return mean.astype(band.dtype)


def _quad_sum(x: np.ndarray, acc: Any) -> np.ndarray:
    """Sum of each 2×2 window of an array with even sides."""
    total = x[0::2, 0::2].astype(acc)
    total += x[1::2, 0::2]
    total += x[0::2, 1::2]
    total += x[1::2, 1::2]
    return total


# ---------------------------------------------------------------------------------------
# The pyramid: levels, stages and pieces


@dataclass(frozen=True, kw_only=True)
class _Layout:
    """Level ``l`` is ``ceil(size / 2**l)``; stage ``s`` computes levels
    ``s*(m+1) .. s*(m+1)+m`` from pieces of ``piece = blocksize * 2**m`` pixels."""

    height: int
    width: int
    blocksize: int
    piece: int
    m: int
    nlevels: int

    @classmethod
    def make(cls, *, height: int, width: int, blocksize: int, piece: int) -> _Layout:
        m = int(round(math.log2(piece / blocksize))) if piece >= blocksize else -1
        if m < 0 or blocksize << m != piece:
            raise ValueError(f"piece_size must be blocksize × a power of two, got {piece}")
        nlevels = 0
        while -(-height // 2**nlevels) > blocksize or -(-width // 2**nlevels) > blocksize:
            nlevels += 1
        return cls(height=height, width=width, blocksize=blocksize, piece=piece, m=m,
                   nlevels=nlevels)

    def dims(self, level: int) -> tuple[int, int]:
        return -(-self.height // 2**level), -(-self.width // 2**level)

    def tiles(self, level: int) -> tuple[int, int]:
        h, w = self.dims(level)
        return -(-h // self.blocksize), -(-w // self.blocksize)

    @property
    def nstages(self) -> int:
        return self.nlevels // (self.m + 1) + 1

    def stage_level(self, stage: int) -> int:
        return stage * (self.m + 1)

    def stage_levels(self, stage: int) -> int:
        """How many levels a piece of this stage encodes."""
        return min(self.m, self.nlevels - self.stage_level(stage)) + 1

    def pieces(self, stage: int) -> tuple[int, int]:
        h, w = self.dims(self.stage_level(stage))
        return -(-h // self.piece), -(-w // self.piece)

    def window(self, stage: int, row: int, col: int) -> tuple[slice, slice]:
        h, w = self.dims(self.stage_level(stage))
        p = self.piece
        return slice(row * p, min(h, (row + 1) * p)), slice(col * p, min(w, (col + 1) * p))

    def feeders(self, stage: int, row: int, col: int) -> int:
        """How many pieces of ``stage - 1`` feed piece (row, col) of ``stage``."""
        rows, cols = self.pieces(stage - 1)
        k = 1 << (self.m + 1)
        return (min(rows, (row + 1) * k) - row * k) * (min(cols, (col + 1) * k) - col * k)


def _morton(rows: int, cols: int) -> list[tuple[int, int]]:
    def key(rc: tuple[int, int]) -> int:
        code = 0
        for bit in range(max(rows, cols).bit_length()):
            code |= ((rc[0] >> bit) & 1) << (2 * bit + 1) | ((rc[1] >> bit) & 1) << (2 * bit)
        return code

    return sorted(((r, c) for r in range(rows) for c in range(cols)), key=key)


# ---------------------------------------------------------------------------------------
# Sources: how a task gets the pixels of its piece


@dataclass(frozen=True)
class _GraphSource:
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
class _VariableSource:
    """A window of a non-dask (in memory or lazily indexed) variable."""

    variable: xr.Variable

    def load(self, data: np.ndarray | None, remote: dict[Any, Any]) -> np.ndarray:
        return np.asarray(self.variable.values)


@dataclass(frozen=True)
class _PassedSource:
    """Pixels passed to the task as its second argument (next-stage pieces)."""

    def load(self, data: np.ndarray | None, remote: dict[Any, Any]) -> np.ndarray:
        assert data is not None
        return data


class _Sources:
    """Makes the sources of the full-resolution pieces, from the source's task graph."""

    def __init__(self, da: xr.DataArray) -> None:
        self.variable = da.variable
        self.dask = da.chunks is not None
        if self.dask:
            data = da.data
            self.graph = dict(data.__dask_graph__())
            self.keys = data.__dask_keys__()
            self.bounds = [np.cumsum((0, *c)) for c in data.chunks]
            future = _future_type()
            self.remote = {k for k, v in self.graph.items()
                           if future is not None and isinstance(v, future)}

    def get(self, ys: slice, xs: slice) -> tuple[_GraphSource | _VariableSource, dict[Any, Any]]:
        """The source of a piece and the cluster-held chunks it needs."""
        if not self.dask:
            return _VariableSource(self.variable[:, ys, xs]), {}
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
        return _GraphSource(graph, keys, crop), remote

    def overlap(self, layout: _Layout) -> float:
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


# ---------------------------------------------------------------------------------------
# Tasks


@dataclass(frozen=True, kw_only=True)
class _Job:
    stage: int
    row: int
    col: int
    level: int  # of the piece's pixels
    y0: int  # origin of the piece at that level
    x0: int
    levels: int  # levels encoded from the piece
    residual: bool  # whether to return the next level down
    source: _GraphSource | _VariableSource | _PassedSource
    codec: _Codec


@dataclass(frozen=True)
class _PieceResult:
    tiles: list[tuple[int, int, int, bytes]]  # (level, tile row, tile col, stored bytes)
    residual: np.ndarray | None


def _future_type() -> type | None:
    try:
        from distributed import Future
    except ImportError:
        return None
    return Future


def _render_piece(job: _Job, data: np.ndarray | None, remote: dict[Any, Any],
                  stop: Stop | None, ticker: Ticker | None = None) -> _PieceResult:
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
    return _PieceResult(tiles, arr if job.residual else None)


# ---------------------------------------------------------------------------------------
# Running tasks: on the cluster (worker_client / default client) or in local threads


class _Runner(Protocol):
    slots: int
    stop: Stop | None
    client: Any  # the distributed client pieces run through, None for local threads

    def submit(self, fn: Callable[..., Any], *args: Any, key: str, priority: int) -> Any: ...

    def put(self, data: np.ndarray) -> Any: ...

    def wait_any(self, futures: Sequence[Any], timeout: float) -> set[Any]: ...

    def cancel(self, futures: Sequence[Any]) -> None: ...


class _ThreadRunner:
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

    def submit(self, fn: Callable[..., Any], *args: Any, key: str, priority: int) -> Any:
        return self.pool.submit(fn, *args)

    def put(self, data: np.ndarray) -> Any:
        return data

    def wait_any(self, futures: Sequence[Any], timeout: float) -> set[Any]:
        done, _ = concurrent.futures.wait(
            futures, timeout=timeout, return_when=concurrent.futures.FIRST_COMPLETED)
        return done

    def cancel(self, futures: Sequence[Any]) -> None:
        self.event.set()
        for future in futures:
            future.cancel()


class _DaskRunner:
    def __init__(self, client: Any, stop: Stop | None) -> None:
        self.client = client
        self.slots = max(1, sum(client.nthreads().values()))
        self.stop = stop

    def submit(self, fn: Callable[..., Any], *args: Any, key: str, priority: int) -> Any:
        # a cancelled piece returns, not raises: see tools.runtime.fanout.piece
        return self.client.submit(piece(fn), *args, key=key, pure=False, priority=priority)

    def put(self, data: np.ndarray) -> Any:
        return self.client.scatter(data, hash=False)

    def wait_any(self, futures: Sequence[Any], timeout: float) -> set[Any]:
        # Polled, not distributed.wait(timeout=...): the TimeoutError that raises is caught in
        # a reference cycle that keeps the pending futures (and their ~5 MB results on the
        # workers) alive until the garbage collector runs, so memory grew with the raster.
        return _poll_done(futures, timeout)

    def cancel(self, futures: Sequence[Any]) -> None:
        if futures:
            self.client.cancel(list(futures))


def _poll_done(futures: Sequence[Any], timeout: float) -> set[Any]:
    deadline = time.monotonic() + timeout
    while True:
        done = {f for f in futures if f.done()}
        if done or time.monotonic() >= deadline:
            return done
        time.sleep(POLL_INTERVAL)


@contextmanager
def _runner(stop: Stop | None) -> Iterator[_Runner]:
    """The cluster seen from inside a task, the default client, or local threads."""
    if on_worker():
        from distributed import worker_client

        with worker_client() as client:
            yield _DaskRunner(client, stop)
        return
    client = default_client()
    if client is not None:
        yield _DaskRunner(client, stop)
        return
    import dask

    slots = int(dask.config.get("num_workers", None) or os.cpu_count() or 2)
    pool = concurrent.futures.ThreadPoolExecutor(slots, thread_name_prefix="cog")
    runner = _ThreadRunner(pool, slots, stop)
    try:
        yield runner
    finally:
        runner.event.set()
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------
# Rendering: pieces → spool file of framed tiles


@dataclass
class _TileIndex:
    """Where every tile of every level sits in the spool: offset of its frame, data size."""

    offsets: list[np.ndarray]
    sizes: list[np.ndarray]

    @classmethod
    def empty(cls, layout: _Layout) -> _TileIndex:
        shapes = [layout.tiles(level) for level in range(layout.nlevels + 1)]
        return cls([np.full(s, -1, np.int64) for s in shapes], [np.zeros(s, np.int64) for s in shapes])


@dataclass
class _Pending:
    buffer: np.ndarray
    missing: int


@dataclass
class _Progress:
    """Phase ``rendering``: the fraction of full-resolution tiles encoded (ticked by the
    pieces as each is encoded, or counted from their results, whichever is ahead), reported
    at every percent and logged at every tenth; then ``overviews``: the overview tiles.
    Thread-safe: ticks come from the pieces' threads or the client's event loop."""

    reporter: Reporter
    layout: _Layout
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


def _render(da: xr.DataArray, layout: _Layout, codec: _Codec, spool: BinaryIO,
            reporter: Reporter, stop: Stop | None, token: str) -> _TileIndex:
    sources = _Sources(da)
    overlap = sources.overlap(layout)
    if overlap > 1.25:
        reporter.log(f"Source chunks do not line up with {layout.piece}² pieces: "
                     f"{overlap:.2f}× the pixels are computed")
    index = _TileIndex.empty(layout)
    pending: dict[tuple[int, int, int], _Pending] = {}
    queue = deque(_morton(*layout.pieces(0)))

    def job(stage: int, row: int, col: int, source: Any) -> _Job:
        ys, xs = layout.window(stage, row, col)
        return _Job(stage=stage, row=row, col=col, level=layout.stage_level(stage),
                    y0=ys.start, x0=xs.start, levels=layout.stage_levels(stage),
                    residual=stage + 1 < layout.nstages, source=source, codec=codec)

    progress = _Progress(reporter, layout)
    with _runner(stop) as runner, piece_progress.counting(progress.tick, runner.client) as ticker:
        pieces = len(queue)
        reporter.log(f"Writing a {layout.width}×{layout.height}×{codec.count} {codec.dtype} COG: "
                     f"{_counted(pieces, 'piece')} of {layout.piece}², "
                     f"{_counted(layout.nlevels, 'overview')}, "
                     f"{_counted(runner.slots, 'parallel task')}")
        window = 2 * runner.slots
        running: dict[Any, _Job] = {}

        def submit(j: _Job, data: Any, remote: dict[Any, Any]) -> None:
            future = runner.submit(_render_piece, j, data, remote, runner.stop, ticker,
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
                    result: _PieceResult = piece_result(future.result())
                    del future
                    _spool_tiles(spool, index, result.tiles)
                    progress.add(result.tiles)
                    if result.residual is not None:
                        ready = _gather(pending, layout, j, result.residual)
                        if ready is not None:
                            stage, row, col, pixels = ready
                            submit(job(stage, row, col, _PassedSource()), runner.put(pixels), {})
        except BaseException:
            runner.cancel(list(running))
            raise
    progress.reporter.progress(1.0, "overviews")
    return index


def _gather(pending: dict[tuple[int, int, int], _Pending], layout: _Layout, j: _Job,
            residual: np.ndarray) -> tuple[int, int, int, np.ndarray] | None:
    """Put a piece's residual into its next-stage piece; return that piece once complete."""
    k = layout.m + 1
    stage, row, col = j.stage + 1, j.row >> k, j.col >> k
    key = (stage, row, col)
    if key not in pending:
        ys, xs = layout.window(stage, row, col)
        pending[key] = _Pending(
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


def _spool_tiles(spool: BinaryIO, index: _TileIndex,
                 tiles: list[tuple[int, int, int, bytes]]) -> None:
    for level, row, col, data in tiles:
        index.offsets[level][row, col] = spool.tell()
        index.sizes[level][row, col] = len(data)
        spool.write(struct.pack("<I", len(data)))  # GDAL's BLOCK_LEADER=SIZE_AS_UINT4
        spool.write(data)
        spool.write(data[-4:])  # BLOCK_TRAILER=LAST_4_BYTES_REPEATED


# ---------------------------------------------------------------------------------------
# The TIFF file: header, ghost metadata, IFDs first, then tile data (smallest level first)

_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
              16: 8, 17: 8, 18: 8}
_GEO_TAGS = (33550, 33922, 34264, 34735, 34736, 34737, 42112, 42113)


@dataclass(frozen=True)
class _Tag:
    code: int
    type: int
    count: int
    data: bytes  # little-endian values


def _short(code: int, *values: int) -> _Tag:
    return _Tag(code, 3, len(values), struct.pack(f"<{len(values)}H", *values))


def _long(code: int, *values: int) -> _Tag:
    return _Tag(code, 4, len(values), struct.pack(f"<{len(values)}I", *values))


def _offsets(code: int, values: np.ndarray, big: bool) -> _Tag:
    arr = values.astype("<u8" if big else "<u4")
    return _Tag(code, 16 if big else 4, arr.size, arr.tobytes())


def _geotiff_tags(da: xr.DataArray, codec: _Codec, *, tags: dict[str, str] | None,
                  band_descriptions: Sequence[str] | None) -> list[_Tag]:
    """GeoTIFF and GDAL tags for the main IFD, as GDAL writes them (via a 1×1 GeoTIFF)."""
    from rasterio.io import MemoryFile

    if band_descriptions is not None and len(band_descriptions) != codec.count:
        raise ValueError(f"{len(band_descriptions)} band descriptions for {codec.count} bands")
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=1, height=1, count=codec.count, dtype=codec.dtype,
                      crs=da.rio.crs, transform=da.rio.transform(), nodata=codec.nodata) as ds:
            if tags:
                ds.update_tags(**tags)
            for i, text in enumerate(band_descriptions or (), start=1):
                ds.set_band_description(i, text)
        buf = mem.read()
    return [t for t in _read_ifd(buf) if t.code in _GEO_TAGS]


def _read_ifd(buf: bytes) -> list[_Tag]:
    """The tags of the first IFD of a little-endian classic TIFF."""
    if buf[:4] != b"II*\x00":
        raise ValueError("expected a little-endian classic TIFF")
    (pos,) = struct.unpack_from("<I", buf, 4)
    (n,) = struct.unpack_from("<H", buf, pos)
    out = []
    for i in range(n):
        code, typ, count = struct.unpack_from("<HHI", buf, pos + 2 + 12 * i)
        size = _TYPE_SIZE[typ] * count
        at = pos + 2 + 12 * i + 8
        if size > 4:
            (at,) = struct.unpack_from("<I", buf, at)
        out.append(_Tag(code, typ, count, bytes(buf[at:at + size])))
    return out


def _ghost() -> bytes:
    """GDAL's structural metadata, byte for byte as its COG driver writes it."""
    body = ("LAYOUT=IFDS_BEFORE_DATA\nBLOCK_ORDER=ROW_MAJOR\nBLOCK_LEADER=SIZE_AS_UINT4\n"
            "BLOCK_TRAILER=LAST_4_BYTES_REPEATED\nKNOWN_INCOMPATIBLE_EDITION=NO\n ")
    ghost = f"GDAL_STRUCTURAL_METADATA_SIZE={len(body):06d} bytes\n{body}".encode("ascii")
    return ghost + b"\0" * (len(ghost) % 2)  # the first IFD starts on a word boundary


def _image_tags(layout: _Layout, codec: _Codec, level: int, offsets: np.ndarray,
                sizes: np.ndarray, geo: list[_Tag], big: bool) -> list[_Tag]:
    h, w = layout.dims(level)
    dt = np.dtype(codec.dtype)
    colour = codec.count - int(codec.alpha)
    rgb = colour == 3 and codec.dtype == "uint8"
    extra = [0] * (codec.count - (3 if rgb else 1))
    if codec.alpha:
        extra[-1] = 2  # unassociated alpha
    out = [
        _long(254, 0 if level == 0 else 1),
        _long(256, w),
        _long(257, h),
        _short(258, *[dt.itemsize * 8] * codec.count),
        _short(259, codec.compression),
        _short(262, 2 if rgb else 1),
        _short(277, codec.count),
        _short(284, 1),
        _short(322, codec.blocksize),
        _short(323, codec.blocksize),
        _offsets(324, offsets, big),
        _offsets(325, sizes, big),
        _short(339, *[{"u": 1, "i": 2, "f": 3}[dt.kind]] * codec.count),
    ]
    if codec.predictor != 1:
        out.append(_short(317, codec.predictor))
    if extra:
        out.append(_short(338, *extra))
    out += geo if level == 0 else [t for t in geo if t.code == 42113]
    return sorted(out, key=lambda t: t.code)


def _ifd_size(tags: list[_Tag], big: bool) -> int:
    inline = 8 if big else 4
    head = 8 + 20 * len(tags) + 8 if big else 2 + 12 * len(tags) + 4
    return head + sum(len(t.data) + len(t.data) % 2 for t in tags if len(t.data) > inline)


def _pack_ifd(tags: list[_Tag], at: int, next_ifd: int, big: bool) -> bytes:
    inline = 8 if big else 4
    head = bytearray(struct.pack("<Q" if big else "<H", len(tags)))
    extra = bytearray()
    data_at = at + (8 + 20 * len(tags) + 8 if big else 2 + 12 * len(tags) + 4)
    for t in tags:
        if len(t.data) > inline:
            value = struct.pack("<Q" if big else "<I", data_at + len(extra))
            extra += t.data + b"\0" * (len(t.data) % 2)
        else:
            value = t.data.ljust(inline, b"\0")
        head += struct.pack("<HHQ" if big else "<HHI", t.code, t.type, t.count) + value
    head += struct.pack("<Q" if big else "<I", next_ifd)
    return bytes(head + extra)


def _assemble(path: Path, spool: BinaryIO, index: _TileIndex, layout: _Layout, codec: _Codec,
              geo: list[_Tag], reporter: Reporter, stop: Stop | None) -> int:
    """Write the COG from the spooled tiles; returns its size in bytes."""
    spool.flush()
    levels = range(layout.nlevels + 1)
    if any((index.offsets[lv] < 0).any() for lv in levels):
        raise RuntimeError("a tile is missing from the spool")  # a bug, not a user error
    framed = sum(int(index.sizes[lv].sum()) + 8 * index.sizes[lv].size for lv in levels)
    for big in (False, True):
        ghost = _ghost()
        header = 16 if big else 8
        placeholder = [_image_tags(layout, codec, lv, index.sizes[lv], index.sizes[lv], geo, big)
                       for lv in levels]
        ifd_at = [header + len(ghost)]
        for tags in placeholder:
            ifd_at.append(ifd_at[-1] + _ifd_size(tags, big))
        data_start = ifd_at[-1]
        if big or data_start + framed <= BIGTIFF_THRESHOLD:
            break
    # tile data from the smallest level to the full resolution, row-major inside a level
    positions: list[np.ndarray] = [np.empty(0)] * len(levels)
    at = data_start
    for lv in reversed(levels):
        frames = index.sizes[lv].ravel() + 8
        starts = at + np.concatenate(([0], np.cumsum(frames)[:-1]))
        positions[lv] = (starts + 4).reshape(index.sizes[lv].shape)
        at += int(frames.sum())
    with open(path, "wb") as out:
        if big:
            out.write(b"II+\x00" + struct.pack("<HHQ", 8, 0, ifd_at[0]))
        else:
            out.write(b"II*\x00" + struct.pack("<I", ifd_at[0]))
        out.write(ghost)
        for lv in levels:
            tags = _image_tags(layout, codec, lv, positions[lv], index.sizes[lv], geo, big)
            out.write(_pack_ifd(tags, ifd_at[lv], ifd_at[lv + 1] if lv < layout.nlevels else 0,
                                big))
        assert out.tell() == data_start
        ranges = [(int(o), int(s) + 8) for lv in reversed(levels)
                  for o, s in zip(index.offsets[lv].ravel(), index.sizes[lv].ravel())]
        _copy_ranges(spool, out, _merge(ranges), reporter, stop, framed)
        assert out.tell() == at
    return at


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, length in ranges:
        if merged and merged[-1][0] + merged[-1][1] == start:
            merged[-1] = (merged[-1][0], merged[-1][1] + length)
        else:
            merged.append((start, length))
    return merged


def _copy_ranges(src: BinaryIO, dst: BinaryIO, ranges: list[tuple[int, int]],
                 reporter: Reporter, stop: Stop | None, total: int) -> None:
    dst.flush()
    fin, fout = src.fileno(), dst.fileno()
    kernel = hasattr(os, "copy_file_range")
    done = 0
    last = time.monotonic()
    for start, length in ranges:
        while length:
            n = 0
            if kernel:
                try:
                    n = os.copy_file_range(fin, fout, min(length, 1 << 30), start)
                except OSError:
                    kernel = False
            if not n:
                chunk = os.pread(fin, min(length, _COPY_CHUNK), start)
                if not chunk:
                    raise RuntimeError("the tile spool is shorter than its index")
                n = os.write(fout, chunk)
            start += n
            length -= n
            done += n
        if time.monotonic() - last > WAIT_SLICE:
            last = time.monotonic()
            reporter.check_cancelled()
            if stop is not None:
                stop.check()
            reporter.progress(done / max(1, total), "assembling")
