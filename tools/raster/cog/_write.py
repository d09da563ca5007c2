""":func:`write_cog`: the input checked, then the pieces rendered into a spool of tiles
(:mod:`~tools.raster.cog._render`) and the COG assembled from it
(:mod:`~tools.raster.cog._tiff`), under temporary names renamed into place at the end.
See :mod:`tools.raster.cog` for how and why."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import xarray as xr

from tools.contract import PrintReporter, Reporter
from tools.raster.cog._codec import Codec, Resampling
from tools.raster.cog._layout import Layout
from tools.raster.cog._render import counted, render
from tools.raster.cog._tiff import assemble, geotiff_tags
from tools.runtime.fanout import Stop

DEFAULT_PIECE = 2048
MAX_PIECE = 8192


@dataclass(frozen=True, kw_only=True)
class CogInfo:
    """What :func:`write_cog` wrote."""

    path: Path
    width: int
    height: int
    count: int
    dtype: str
    overviews: tuple[int, ...]  # decimation factors 2, 4, …; level i is ceil(size / 2**i)


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
    da = as_band_y_x(da)
    count, height, width = (int(n) for n in da.shape)
    if nodata is None:
        nodata = da.rio.nodata
    codec = Codec.make(
        dtype=str(da.dtype), count=count, blocksize=blocksize, compress=compress,
        level=level, predictor=predictor, alpha=alpha, nodata=nodata,
        resampling=overview_resampling,
    )
    layout = Layout.make(height=height, width=width, blocksize=blocksize,
                          piece=piece_size or default_piece(da, blocksize))
    geo_tags = geotiff_tags(da, codec, tags=tags, band_descriptions=band_descriptions)
    dst = Path(dst_path)
    token = uuid.uuid4().hex[:12]
    partial = dst.with_name(f".{dst.name}.{token}.partial")
    spool_path = dst.with_name(f".{dst.name}.{token}.tiles")
    started = time.monotonic()
    try:
        with open(spool_path, "w+b") as spool:
            index = render(da, layout, codec, spool, reporter, stop, token)
            reporter.progress(0.0, "assembling")
            size = assemble(partial, spool, index, layout, codec, geo_tags, reporter, stop)
        os.replace(partial, dst)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        spool_path.unlink(missing_ok=True)
    reporter.progress(1.0, "assembling")
    reporter.log(
        f"Wrote {dst.name}: {width}×{height}×{count} {codec.dtype}, "
        f"{counted(layout.nlevels, 'overview')}, "
        f"{size / 1e6:.1f} MB in {time.monotonic() - started:.1f} s"
    )
    return CogInfo(path=dst, width=width, height=height, count=count, dtype=codec.dtype,
                   overviews=tuple(2**i for i in range(1, layout.nlevels + 1)))


def as_band_y_x(da: xr.DataArray) -> xr.DataArray:
    y, x = da.rio.y_dim, da.rio.x_dim
    if da.ndim == 2:
        da = da.expand_dims("band")
    if da.ndim != 3:
        raise ValueError(f"expected a (band, y, x) or (y, x) array, got dims {da.dims}")
    band = next(d for d in da.dims if d not in (y, x))
    return da.transpose(band, y, x)


def default_piece(da: xr.DataArray, blocksize: int) -> int:
    chunks = da.chunks
    target = DEFAULT_PIECE
    if chunks is not None:
        target = max(target, min(max(chunks[1][0], chunks[2][0]), MAX_PIECE))
    piece = blocksize
    while piece < target:
        piece *= 2
    return piece
