"""Two rasters to co-register: their grids, how matching values are read from them, the map
from source pixels to reference pixels (through a reprojection when their CRSs differ) and
their overlap. Used by :mod:`tools.align.match` and :mod:`tools.align_raster`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from tools.align import registration as reg
from tools.contract import InvalidParams
from tools.raster import RasterHeader, read_header
from tools.raster.checks import checked_read, unreadable

LUMA = (0.299, 0.587, 0.114)


# --- what is read from each raster -----------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RasterGrid:
    """A raster's georeferencing and how matching values and validity are read from it."""

    path: str
    name: str  # how messages name it (a dataset path), never the server's path
    width: int
    height: int
    transform: Affine
    crs_wkt: str
    bands: tuple[int, ...]  # 1-based bands read for matching
    luma: bool  # matching values are the luma of three bands
    elevation: bool  # one float band: heights
    nodata: float | None = None  # of the bands read
    alpha: int | None = None  # the 1-based alpha band
    opaque: float = 255.0  # alpha of a fully opaque pixel
    mask_band: bool = False  # validity comes from an internal mask band (no nodata, no alpha)

    @property
    def pixel_size(self) -> float:
        return math.sqrt(abs(self.transform.determinant))


def open_grid(path: str | Path, *, what: str, name: str | None = None
              ) -> tuple[RasterGrid, RasterHeader]:
    """The grid of a raster, or :class:`InvalidParams` naming ``what`` when it cannot be used
    (``name`` names the file in messages about the file itself; default: its name)."""
    import rasterio
    from rasterio.enums import MaskFlags
    from rasterio.errors import RasterioError

    header = read_header(path, name=name)
    try:
        with rasterio.open(path) as ds:
            crs, transform = ds.crs, ds.transform
            flags = ds.mask_flag_enums[0] if ds.count else ()
    except RasterioError:  # gone or replaced since the header was read
        raise unreadable(header.name) from None
    if crs is None:
        raise InvalidParams(f"{what} has no CRS: it cannot be placed on the map")
    if transform.is_identity or transform.determinant == 0:
        raise InvalidParams(f"{what} has no geotransform")
    data = header.data_bands
    if not data:
        raise InvalidParams(f"{what} has no data band")
    elevation = len(data) == 1 and header.dtype.startswith("float")
    luma = len(data) >= 3
    kind = np.dtype(header.dtype)
    return RasterGrid(
        path=str(path), name=header.name, width=header.width, height=header.height, transform=transform,
        crs_wkt=crs.to_wkt(), bands=tuple(data[:3] if luma else data[:1]), luma=luma,
        elevation=elevation, nodata=header.nodata(data[0]), alpha=header.alpha_band,
        opaque=float(np.iinfo(kind).max) if kind.kind in "iu" else 1.0,
        mask_band=MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags
        and MaskFlags.nodata not in flags,
    ), header


def read_values(ds: Any, grid: RasterGrid, window: Any,
                out_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Matching values (float64) and validity of a window, optionally averaged down to
    ``out_shape``. Invalid: nodata in a band read, alpha 0 (reduced: not fully opaque), not
    finite. The pixels are decoded once (validity from the same read, unless the raster
    keeps it in a separate mask band)."""
    from rasterio.enums import Resampling

    indexes = list(grid.bands) + ([grid.alpha] if grid.alpha else [])
    options: dict[str, Any] = {"window": window}
    if out_shape is not None:
        options.update(out_shape=(len(indexes), *out_shape), resampling=Resampling.average)
    data = checked_read(grid.name, ds.read, indexes, **options).astype(np.float64)
    bands = data[: len(grid.bands)]
    valid = np.all(np.isfinite(bands), axis=0)
    if grid.nodata is not None and not math.isnan(grid.nodata):
        valid &= ~np.any(bands == grid.nodata, axis=0)
    if grid.alpha:
        valid &= data[-1] >= grid.opaque if out_shape is not None else data[-1] > 0
    if grid.mask_band:
        mask_options = {"window": window, "out_shape": out_shape} if out_shape else {"window": window}
        valid &= checked_read(grid.name, ds.dataset_mask, **mask_options) > 0
    if out_shape is not None:  # a reduced pixel may mix valid and nodata pixels at edges
        from scipy import ndimage

        valid = ndimage.binary_erosion(valid, border_value=1)
    if grid.luma:
        values = LUMA[0] * bands[0] + LUMA[1] * bands[1] + LUMA[2] * bands[2]
    else:
        values = bands[0]
    return np.where(valid, values, 0.0), valid


# --- geometry between the two rasters ----------------------------------------------------


LATTICE = 17


@dataclass(frozen=True)
class Reprojection:
    """Source-CRS map coordinates → reference-CRS map coordinates: the identity for equal
    CRSs, else PROJ on a lattice over the region of interest, interpolated with cubic
    splines (smooth projections: error far below a pixel)."""

    identity: bool
    x0: float = 0.0
    y0: float = 0.0
    step_x: float = 1.0
    step_y: float = 1.0
    lattice_x: np.ndarray | None = None
    lattice_y: np.ndarray | None = None

    @classmethod
    def make(cls, src_wkt: str, ref_wkt: str, bounds: tuple[float, float, float, float],
             ) -> Reprojection:
        from rasterio.crs import CRS
        from rasterio.warp import transform
        from scipy import ndimage

        if CRS.from_wkt(src_wkt) == CRS.from_wkt(ref_wkt):
            return cls(identity=True)
        xmin, ymin, xmax, ymax = bounds
        pad_x, pad_y = (xmax - xmin) * 0.5, (ymax - ymin) * 0.5
        xmin, xmax, ymin, ymax = xmin - pad_x, xmax + pad_x, ymin - pad_y, ymax + pad_y
        xs, ys = np.meshgrid(np.linspace(xmin, xmax, LATTICE), np.linspace(ymin, ymax, LATTICE))
        tx, ty = transform(CRS.from_wkt(src_wkt), CRS.from_wkt(ref_wkt), xs.ravel(), ys.ravel())
        shape = xs.shape
        return cls(
            identity=False, x0=xmin, y0=ymin, step_x=(xmax - xmin) / (LATTICE - 1),
            step_y=(ymax - ymin) / (LATTICE - 1),
            lattice_x=ndimage.spline_filter(np.reshape(tx, shape), order=3),
            lattice_y=ndimage.spline_filter(np.reshape(ty, shape), order=3),
        )

    def __call__(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.identity:
            return x, y
        from scipy import ndimage

        assert self.lattice_x is not None and self.lattice_y is not None
        coords = np.array([(np.asarray(y) - self.y0) / self.step_y,
                           (np.asarray(x) - self.x0) / self.step_x])
        flat = coords.reshape(2, -1)
        rx = ndimage.map_coordinates(self.lattice_x, flat, order=3, mode="nearest",
                                     prefilter=False)
        ry = ndimage.map_coordinates(self.lattice_y, flat, order=3, mode="nearest",
                                     prefilter=False)
        return rx.reshape(np.shape(x)), ry.reshape(np.shape(y))


@dataclass(frozen=True)
class Pair:
    """Source and reference, and the map from source pixels to reference pixels."""

    source: RasterGrid
    reference: RasterGrid
    reprojection: Reprojection

    def to_reference(self, model: reg.Similarity, cols: np.ndarray, rows: np.ndarray,
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Continuous source pixel coordinates → continuous reference pixel coordinates,
        with the source's map coordinates corrected by ``model``."""
        x, y = reg.apply_affine(self.source.transform, cols, rows)
        x, y = model.apply(np.asarray(x), np.asarray(y))
        x, y = self.reprojection(x, y)
        c, r = reg.apply_affine(~self.reference.transform, x, y)
        return np.asarray(c), np.asarray(r)

    def from_reference_bounds(self) -> tuple[float, float, float, float]:
        """The reference footprint in source pixel coordinates (a bounding box)."""
        from rasterio.crs import CRS
        from rasterio.warp import transform

        ref = self.reference
        cols, rows = _ring(ref.width, ref.height)
        x, y = reg.apply_affine(ref.transform, cols, rows)
        if not self.reprojection.identity:
            x, y = transform(CRS.from_wkt(ref.crs_wkt), CRS.from_wkt(self.source.crs_wkt),
                             list(x), list(y))
        c, r = reg.apply_affine(~self.source.transform, x, y)
        return float(np.min(c)), float(np.min(r)), float(np.max(c)), float(np.max(r))


def _ring(width: int, height: int, n: int = 21) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0, 1, n)
    cols = np.concatenate([t * width, np.full(n, width), (1 - t) * width, np.zeros(n)])
    rows = np.concatenate([np.zeros(n), t * height, np.full(n, height), (1 - t) * height])
    return cols, rows


def make_pair(source: RasterGrid, reference: RasterGrid) -> Pair:
    t = source.transform
    xs = [t.c, t.c + t.a * source.width + t.b * source.height]
    ys = [t.f, t.f + t.d * source.width + t.e * source.height]
    bounds = (min(xs), min(ys), max(xs), max(ys))
    return Pair(source, reference, Reprojection.make(source.crs_wkt, reference.crs_wkt, bounds))


@dataclass(frozen=True)
class Overlap:
    col0: int
    row0: int
    col1: int
    row1: int
    fraction: float  # of the source's area

    @property
    def width(self) -> int:
        return self.col1 - self.col0

    @property
    def height(self) -> int:
        return self.row1 - self.row0


def overlap_of(pair: Pair) -> Overlap:
    """Where the reference's footprint covers the source, in source pixels."""
    c0, r0, c1, r1 = pair.from_reference_bounds()
    src = pair.source
    col0, row0 = max(0, math.floor(c0)), max(0, math.floor(r0))
    col1, row1 = min(src.width, math.ceil(c1)), min(src.height, math.ceil(r1))
    if col1 <= col0 or row1 <= row0:
        return Overlap(0, 0, 0, 0, 0.0)
    fraction = (col1 - col0) * (row1 - row0) / (src.width * src.height)
    return Overlap(col0, row0, col1, row1, fraction)
