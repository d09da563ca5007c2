"""Resampling a raster once through a similarity of its map coordinates, onto a north-up grid.

The output is a lazy ``(band, y, x)`` DataArray: each chunk maps its pixel centres back into
the source, reads only the source window they fall in and samples it with cubic splines
(nodata filled from the nearest valid pixel first, so edges do not ring; a pixel is valid
when the bilinear footprint of its position is wholly valid). Memory is bounded by the chunk
size. Used by ``align-raster`` for the similarity case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from affine import Affine

from tools.align.registration import Similarity, apply_affine
from tools.raster import RasterHeader, read_header
from tools.raster.checks import checked_read


@dataclass(frozen=True)
class Resampled:
    data: xr.DataArray
    nodata: float | None
    alpha: bool  # the last band is an alpha band
    descriptions: list[str] | None


@dataclass(frozen=True)
class _Plan:
    path: str
    name: str  # how messages name the source (a dataset path)
    source_transform: Affine
    inverse: Similarity  # output map coordinates → source map coordinates
    out_transform: Affine
    width: int
    height: int
    dtype: str
    source_count: int
    source_width: int
    source_height: int
    alpha_band: int | None  # 1-based, in the source
    add_alpha: bool
    nodata: float | None
    shift_z: float | None


def output_grid(source_transform: Affine, width: int, height: int, model: Similarity,
                ) -> tuple[Affine, int, int]:
    """The north-up grid covering the corrected footprint, at the corrected pixel size."""
    cols = np.array([0, width, width, 0], dtype=np.float64)
    rows = np.array([0, 0, height, height], dtype=np.float64)
    x, y = model.apply(*apply_affine(source_transform, cols, rows))
    pixel = math.sqrt(abs(source_transform.determinant)) * model.scale
    xmin, xmax, ymin, ymax = x.min(), x.max(), y.min(), y.max()
    out_w = max(1, math.ceil((xmax - xmin) / pixel - 1e-6))
    out_h = max(1, math.ceil((ymax - ymin) / pixel - 1e-6))
    return Affine(pixel, 0.0, float(xmin), 0.0, -pixel, float(ymax)), out_w, out_h


def resample_similarity(src: str | Path, model: Similarity, *, shift_z: float | None = None,
                        chunk: int = 2048, name: str | None = None) -> Resampled:
    """``src`` with its map coordinates corrected by ``model``, on a north-up grid. Integer
    rasters without nodata or alpha get an alpha band (the corners outside the rotated
    footprint are transparent); float rasters without nodata get NaN."""
    import dask.array as dsa
    import rasterio

    header = read_header(src, name=name)
    with rasterio.open(src) as ds:
        transform, crs = ds.transform, ds.crs
    out_transform, width, height = output_grid(transform, header.width, header.height, model)
    floating = np.dtype(header.dtype).kind == "f"
    nodata = header.nodata(1)
    alpha_band = header.alpha_band
    add_alpha = alpha_band is None and nodata is None and not floating
    if alpha_band is None and nodata is None and floating:
        nodata = float("nan")
    plan = _Plan(path=str(src), name=header.name, source_transform=transform, inverse=model.inverse(),
                 out_transform=out_transform, width=width, height=height, dtype=header.dtype,
                 source_count=header.count, source_width=header.width,
                 source_height=header.height, alpha_band=alpha_band, add_alpha=add_alpha,
                 nodata=nodata, shift_z=shift_z)
    count = header.count + (1 if add_alpha else 0)
    chunks = ((count,), _splits(height, chunk), _splits(width, chunk))
    data = dsa.map_blocks(_block, plan, chunks=chunks, dtype=header.dtype,
                          meta=np.empty((0, 0, 0), dtype=header.dtype))
    xs = out_transform.c + (np.arange(width) + 0.5) * out_transform.a
    ys = out_transform.f + (np.arange(height) + 0.5) * out_transform.e
    import rioxarray  # noqa: F401  (the .rio accessor)

    da = xr.DataArray(data, dims=("band", "y", "x"),
                      coords={"band": np.arange(1, count + 1), "y": ys, "x": xs})
    da = da.rio.write_crs(crs).rio.write_transform(out_transform)
    descriptions = _descriptions(header, add_alpha)
    alpha_last = add_alpha or (alpha_band is not None and alpha_band == header.count)
    return Resampled(data=da, nodata=None if alpha_last and nodata is None else nodata,
                     alpha=alpha_last and count > 1, descriptions=descriptions)


def _splits(total: int, chunk: int) -> tuple[int, ...]:
    return tuple(min(chunk, total - start) for start in range(0, total, chunk))


def _descriptions(header: RasterHeader, add_alpha: bool) -> list[str] | None:
    if not any(header.descriptions):
        return None
    names = [d or "" for d in header.descriptions]
    return names + ["alpha"] if add_alpha else names


def _block(plan: _Plan, block_info: dict[Any, Any] | None = None) -> np.ndarray:
    (_, _), (r0, r1), (c0, c1) = block_info[None]["array-location"]  # type: ignore[index]
    h, w = r1 - r0, c1 - c0
    count = plan.source_count + (1 if plan.add_alpha else 0)
    rows, cols = np.mgrid[r0:r1, c0:c1].astype(np.float64) + 0.5
    x, y = apply_affine(plan.out_transform, cols, rows)
    x, y = plan.inverse.apply(np.asarray(x), np.asarray(y))
    sc, sr = apply_affine(~plan.source_transform, x, y)
    si, sj = np.asarray(sr) - 0.5, np.asarray(sc) - 0.5  # source array indices
    out = np.empty((count, h, w), dtype=plan.dtype)
    fill = 0 if plan.nodata is None else plan.nodata
    out[:] = np.asarray(fill).astype(plan.dtype)
    window = _source_window(plan, si, sj)
    if window is None:
        return out
    return _sample(plan, window, si, sj, out)


def _source_window(plan: _Plan, si: np.ndarray, sj: np.ndarray) -> tuple[int, int, int, int] | None:
    height, width = plan.source_height, plan.source_width
    i0, j0 = max(0, math.floor(si.min()) - 3), max(0, math.floor(sj.min()) - 3)
    i1, j1 = min(height, math.ceil(si.max()) + 4), min(width, math.ceil(sj.max()) + 4)
    if i1 - i0 < 2 or j1 - j0 < 2:
        return None
    return i0, j0, i1, j1


def _sample(plan: _Plan, window: tuple[int, int, int, int], si: np.ndarray, sj: np.ndarray,
            out: np.ndarray) -> np.ndarray:
    import rasterio
    from rasterio.windows import Window
    from scipy import ndimage

    i0, j0, i1, j1 = window
    with rasterio.open(plan.path) as ds:
        win = Window(j0, i0, j1 - j0, i1 - i0)
        data = checked_read(plan.name, ds.read, window=win)
        valid = checked_read(plan.name, ds.dataset_mask, window=win) > 0
    if np.dtype(plan.dtype).kind == "f":
        valid &= np.all(np.isfinite(data), axis=0)
    coords = np.array([si - i0, sj - j0])
    inside = ((coords[0] >= 0) & (coords[0] <= i1 - i0 - 1)
              & (coords[1] >= 0) & (coords[1] <= j1 - j0 - 1))
    footprint = ndimage.map_coordinates(valid.astype(np.float32), coords, order=1,
                                        mode="constant", cval=0.0)
    ok = inside & (footprint >= 0.999)
    if not ok.any():
        return out
    nearest = _nearest_valid_index(valid)
    info = np.iinfo(plan.dtype) if np.dtype(plan.dtype).kind in "iu" else None
    for band in range(plan.source_count):
        if plan.alpha_band is not None and band == plan.alpha_band - 1:
            values = ndimage.map_coordinates(data[band], coords, order=0, mode="nearest")
        else:
            filled = data[band][nearest] if nearest is not None else data[band]
            values = ndimage.map_coordinates(filled.astype(np.float64), coords, order=3,
                                             mode="nearest")
            if plan.shift_z:
                values = values + plan.shift_z
        if info is not None:
            values = np.clip(np.rint(values), info.min, info.max)
        out[band][ok] = values[ok].astype(plan.dtype)
    if plan.add_alpha:
        top = np.iinfo(plan.dtype).max if np.dtype(plan.dtype).kind in "iu" else 1
        out[-1] = np.where(ok, top, 0).astype(plan.dtype)
    return out


def _nearest_valid_index(valid: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """Index arrays that replace each invalid pixel by its nearest valid one."""
    from scipy import ndimage

    if valid.all() or not valid.any():
        return None
    _, indices = ndimage.distance_transform_edt(~valid, return_indices=True)
    return tuple(indices)
