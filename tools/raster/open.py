"""The one way to open a raster: a lazy, chunked ``(band, y, x)`` DataArray.

:func:`open_raster` reads with ``rioxarray.open_rasterio(lock=False,
masked=False)``: native dtype, no scale/offset applied, all bands in one chunk, chunk sides
multiples of the file's internal block (tile, or strip) about ``chunk_px`` (a chunk holds
about ``chunk_px²`` pixels). The header (:class:`RasterHeader`: nodata per band, colour
interpretation, alpha band, descriptions, metadata, block shape) is in
``da.attrs["raster_header"]``.
"""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from tools.raster import checks as raster_checks
from tools.raster.header import RasterHeader, read_header

DEFAULT_CHUNK_PX = 2048


def open_raster(path: str | Path, *, chunk_px: int = DEFAULT_CHUNK_PX,
                name: str | None = None) -> xr.DataArray:
    """Open a raster as a lazy ``(band, y, x)`` DataArray chunked on its internal blocks.

    ``name`` names the raster in errors (see :func:`read_header`); a chunk that cannot be
    read raises :class:`~tools.raster.checks.RasterDamaged` naming the block.
    """
    import os
    from functools import partial

    import rioxarray
    from dask.base import tokenize

    header = read_header(path, name=name)
    rows, cols = chunk_shape(header, chunk_px)
    da = rioxarray.open_rasterio(path, lock=False, masked=False, cache=False)
    assert isinstance(da, xr.DataArray)
    chunks = {"band": -1, "y": rows, "x": cols}
    # as rioxarray names its chunks (file, mtime, chunks), read through raster_checks
    try:
        mtime: float | None = os.path.getmtime(path)
    except OSError:  # not a local file (a GDAL virtual path)
        mtime = None
    token = tokenize(str(path), mtime, chunks)
    da = da.chunk(chunks, name_prefix=f"open_rasterio-{token}", token=token,
                  from_array_kwargs={"getitem": partial(raster_checks.read_window,
                                                        name=header.name)})
    da.attrs["raster_header"] = header
    return da


def chunk_shape(header: RasterHeader, chunk_px: int = DEFAULT_CHUNK_PX) -> tuple[int, int]:
    """(rows, cols) of a chunk: multiples of the block shape, about ``chunk_px²`` pixels."""
    block_rows, block_cols = header.block_shape
    wanted_cols = max(block_cols, round(chunk_px / block_cols) * block_cols)
    cols = max(1, min(header.width, wanted_cols))
    # Square chunks, unless the width (or a strip) decides the columns: then keep the area.
    wanted_rows = chunk_px if cols == wanted_cols else chunk_px * chunk_px / cols
    rows = max(block_rows, round(wanted_rows / block_rows) * block_rows)
    return max(1, min(header.height, rows)), cols
