"""The ``align-raster`` tool: co-register a raster to a reference with sub-pixel accuracy.

How (all in the source's CRS; the reference is reprojected on the fly when CRSs differ):

1. ``coarse``: both rasters are read once as overviews of at most ``COARSE_SIZE`` pixels over
   their overlap (luma for RGB, values for single bands); a whole-overlap phase correlation
   gives a translation seed, then phase-correlated and Gauss–Newton-refined windows of the
   overview, fitted robustly, give a coarse model (:mod:`tools.registration`).
2. ``matching``: up to ``MAX_WINDOWS_PER_SIDE``² windows of the source at full resolution are
   matched against the reference warped by the current model (seeded by phase correlation,
   refined to ~0.01 px); batches of windows run as Dask tasks on the cluster, each reading only
   its windows from disk. A RANSAC + least-squares fit of the tie points gives the model; for
   ``similarity`` a second pass against the refined model removes what is left.
3. ``writing``: a translation is written losslessly as a new geotransform; a similarity is
   resampled once (cubic) onto a north-up grid. Single-band float rasters are elevations:
   the median vertical offset to the reference is removed and reported. The output is a COG
   (:func:`tools.cog.write_cog`) at ``outputPath``, indexed by the service.

The model is reported as ``tx, ty`` (map units, the shift of the source's centre), ``thetaDeg``
(counter-clockwise) and ``scale`` about the source's centre. Memory is bounded by the overview
and window sizes, not the raster size. Same input, same output, bit for bit: windows are on a
fixed grid and RANSAC uses a fixed seed. In a notebook::

    from tools.align_raster import align
    result = align("drone.tif", "basemap.tif", "drone_aligned.tif", mode="similarity")
"""

from __future__ import annotations

import json
import math
import stat
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from affine import Affine

from tools import registration as reg
from tools.cog import write_cog
from tools.contract import (
    InvalidParams,
    Plan,
    PrintReporter,
    Reporter,
    ToolContext,
    ToolError,
    ToolResult,
    ToolSpec,
)
from tools.fanout import StopSignal, fan_out
from tools.raster_graph import RasterHeader, open_raster, read_header
from tools.safepath import lstat_in_dataset, normalize_relpath, resolve_in_dataset
from tools.staging import move_into_dataset, staging

MODES = ("similarity", "translation")
MIN_OVERLAP = 0.05
COARSE_SIZE = 512
COARSE_WINDOW = 128
MAX_WINDOW = 256
MIN_WINDOW = 64
MAX_WINDOWS_PER_SIDE = 12
WINDOWS_PER_TASK = 8
MIN_NCC = 0.4
MIN_TIE_POINTS = {"translation": 3, "similarity": 6}
INLIER_THRESHOLD_PX = 0.5
LUMA = (0.299, 0.587, 0.114)
OUTPUT_CHUNK = 2048

PATH = {"type": "string", "minLength": 1, "maxLength": 1024}

SPEC = ToolSpec(
    id="align-raster",
    version="1",
    title="Co-register a raster to a reference (sub-pixel translation or similarity)",
    required_access="Write",
    produces_artifact=False,
    result_extension=None,
    input_schema={
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "required": ["sourcePath", "referencePath", "outputPath"],
        "properties": {
            "sourcePath": {**PATH, "description": "The raster to correct."},
            "referencePath": {**PATH, "description": "The raster it must line up with."},
            "outputPath": {**PATH, "description": "Where the aligned COG goes (.tif)."},
            "mode": {"enum": list(MODES), "default": "similarity",
                     "description": "similarity: shift + rotation + scale; translation: shift."},
        },
    },
)


# --- what is read from each raster -----------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RasterGrid:
    """A raster's georeferencing and how matching values and validity are read from it."""

    path: str
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


def open_grid(path: str | Path, *, what: str) -> tuple[RasterGrid, RasterHeader]:
    """The grid of a raster, or :class:`InvalidParams` naming ``what`` when it cannot be used."""
    import rasterio
    from rasterio.enums import MaskFlags

    try:
        header = read_header(path)
        with rasterio.open(path) as ds:
            crs, transform = ds.crs, ds.transform
            flags = ds.mask_flag_enums[0] if ds.count else ()
    except Exception as exc:
        raise InvalidParams(f"{what} is not a readable raster: {exc}") from None
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
        path=str(path), width=header.width, height=header.height, transform=transform,
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
    data = ds.read(indexes, **options).astype(np.float64)
    bands = data[: len(grid.bands)]
    valid = np.all(np.isfinite(bands), axis=0)
    if grid.nodata is not None and not math.isnan(grid.nodata):
        valid &= ~np.any(bands == grid.nodata, axis=0)
    if grid.alpha:
        valid &= data[-1] >= grid.opaque if out_shape is not None else data[-1] > 0
    if grid.mask_band:
        mask_options = {"window": window, "out_shape": out_shape} if out_shape else {"window": window}
        valid &= ds.dataset_mask(**mask_options) > 0
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


# --- validation ----------------------------------------------------------------------------


def _input(root: Path, params: dict[str, Any], key: str) -> Path:
    path = resolve_in_dataset(root, params[key])
    if not path.is_file():
        raise InvalidParams(f"{key} '{params[key]}' does not exist")
    return path


def output_relpath(params: dict[str, Any]) -> str:
    rel = normalize_relpath(params["outputPath"])
    if not rel.lower().endswith((".tif", ".tiff")):
        raise InvalidParams(f"outputPath '{rel}' must end in .tif or .tiff (it is a COG)")
    for key in ("sourcePath", "referencePath"):
        if rel == normalize_relpath(params[key]):
            raise InvalidParams(f"outputPath must differ from {key} ('{rel}')")
    return rel


@dataclass(frozen=True)
class Checked:
    pair: Pair
    overlap: Overlap
    header: RasterHeader
    warning: str | None


def check_inputs(source: Path, reference: Path) -> Checked:
    """Both rasters readable and georeferenced, overlapping by at least ``MIN_OVERLAP``."""
    src, header = open_grid(source, what=f"sourcePath '{source.name}'")
    ref, _ = open_grid(reference, what=f"referencePath '{reference.name}'")
    pair = make_pair(src, ref)
    overlap = overlap_of(pair)
    if overlap.fraction < MIN_OVERLAP:
        raise InvalidParams(
            f"the reference covers {overlap.fraction:.1%} of the source; at least "
            f"{MIN_OVERLAP:.0%} is needed to align them"
        )
    warning = None
    if not pair.reprojection.identity:
        warning = "source and reference CRSs differ: the reference was reprojected to the source CRS"
    return Checked(pair=pair, overlap=overlap, header=header, warning=warning)


def validate(params: dict[str, Any], dataset_root: Path) -> Plan:
    source = _input(dataset_root, params, "sourcePath")
    reference = _input(dataset_root, params, "referencePath")
    rel = output_relpath(params)
    resolve_in_dataset(dataset_root, rel)
    found = lstat_in_dataset(dataset_root, rel)  # no file or symlink among its folders
    if found is not None and stat.S_ISDIR(found.st_mode):
        raise InvalidParams(f"outputPath '{rel}' is a folder")
    checked = check_inputs(source, reference)
    h = checked.header
    itemsize = np.dtype(h.dtype).itemsize
    return Plan(estimated_output_bytes=h.width * h.height * (h.count + 1) * itemsize * 4 // 3)


# --- matching --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TiePoint:
    col: float  # the window centre, continuous source pixels
    row: float
    dy: float  # where its content is in the reference warped by the model used
    dx: float
    ncc: float
    ok: bool
    heights: np.ndarray | None = None  # reference - source samples (elevation only)


def _patch_sampler(pair: Pair, model: reg.Similarity, values: np.ndarray, valid: np.ndarray,
                   *, col0: float, row0: float, ref_col0: float, ref_row0: float,
                   ref_step_x: float = 1.0, ref_step_y: float = 1.0,
                   step_x: float = 1.0, step_y: float = 1.0) -> reg.PatchSampler:
    """A sampler of a reference patch at window positions: window index (i, j) is the
    source pixel centre (col0 + (j + 0.5)·step_x, row0 + (i + 0.5)·step_y); patch index
    (k, l) is the reference pixel centre (ref_col0 + (l + 0.5)·ref_step_x, ...)."""

    def to_patch(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, r = pair.to_reference(model, col0 + (cols + 0.5) * step_x, row0 + (rows + 0.5) * step_y)
        return (r - ref_row0) / ref_step_y - 0.5, (c - ref_col0) / ref_step_x - 0.5

    return reg.PatchSampler(values, valid, to_patch)


def match_window(fixed: np.ndarray, fixed_valid: np.ndarray, sampler: reg.PatchSampler,
                 *, keep_samples: bool = False, seek: bool = False) -> reg.Refined | None:
    """Refine from the model's prediction; when that fails (or with ``seek``, when the
    prediction may be pixels off) seed by phase correlation (trusted within a quarter
    window) and keep the better-correlated answer."""
    refined = None
    if not seek:
        refined = reg.refine_shift(fixed, fixed_valid, sampler, keep_samples=keep_samples)
        if refined is not None and refined.converged and refined.ncc >= MIN_NCC:
            return refined
    h, w = fixed.shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    moving, moving_valid = sampler.sample(rows, cols)
    seed = reg.phase_correlation(fixed, moving, fixed_valid, moving_valid)
    if seed is None or max(abs(seed.dy), abs(seed.dx)) >= min(h, w) / 4:
        return refined
    seeded = reg.refine_shift(fixed, fixed_valid, sampler, (seed.dy, seed.dx),
                              keep_samples=keep_samples)
    if refined is None or (seeded is not None and seeded.ncc > refined.ncc):
        return seeded
    return refined


@dataclass(frozen=True)
class MatchJob:
    """What a batch of full-resolution windows needs on a worker (picklable)."""

    pair: Pair
    model: reg.Similarity
    size: int
    windows: tuple[tuple[int, int], ...]  # (col0, row0) of each window
    stop: StopSignal = field(default_factory=StopSignal)


def match_windows(job: MatchJob) -> list[TiePoint]:
    """Match each window of the source against the reference; runs on a worker."""
    import rasterio
    from rasterio.windows import Window

    pair, size = job.pair, job.size
    points: list[TiePoint] = []
    with rasterio.open(pair.source.path) as src, rasterio.open(pair.reference.path) as ref:
        for col0, row0 in job.windows:
            job.stop.check()
            fixed, fixed_valid = read_values(src, pair.source, Window(col0, row0, size, size))
            centre = (col0 + size / 2, row0 + size / 2)
            region = _reference_region(pair, job.model, col0, row0, size)
            if region is None:
                points.append(TiePoint(centre[0], centre[1], 0, 0, 0, False))
                continue
            rc0, rr0, rc1, rr1 = region
            patch, patch_valid = read_values(ref, pair.reference, Window(rc0, rr0, rc1 - rc0, rr1 - rr0))
            sampler = _patch_sampler(pair, job.model, patch, patch_valid, col0=col0, row0=row0,
                                     ref_col0=rc0, ref_row0=rr0)
            refined = match_window(fixed, fixed_valid, sampler,
                                   keep_samples=pair.source.elevation)
            points.append(_tie_point(centre, refined, fixed))
    return points


def _tie_point(centre: tuple[float, float], refined: reg.Refined | None,
               fixed: np.ndarray) -> TiePoint:
    if refined is None:
        return TiePoint(centre[0], centre[1], 0, 0, 0, False)
    ok = refined.converged and refined.ncc >= MIN_NCC and refined.valid_fraction >= 0.3
    heights = None
    if ok and refined.moving is not None and refined.valid is not None:
        diff = (refined.moving - fixed)[refined.valid]
        heights = diff[:: max(1, diff.size // 1024)].astype(np.float64)
    return TiePoint(centre[0], centre[1], refined.dy, refined.dx, refined.ncc, ok, heights)


def _reference_region(pair: Pair, model: reg.Similarity, col0: int, row0: int, size: int,
                      ) -> tuple[int, int, int, int] | None:
    """The reference pixels a window may need (a quarter window of slack for the shift,
    plus the spline's support), clipped to the reference; None when it is outside."""
    margin = size / 4 + 4
    cols = np.array([col0 - margin, col0 + size + margin] * 2)
    rows = np.array([row0 - margin] * 2 + [row0 + size + margin] * 2)
    c, r = pair.to_reference(model, cols, rows)
    ref = pair.reference
    c0, r0 = max(0, math.floor(c.min()) - 3), max(0, math.floor(r.min()) - 3)
    c1, r1 = min(ref.width, math.ceil(c.max()) + 3), min(ref.height, math.ceil(r.max()) + 3)
    if c1 - c0 < 16 or r1 - r0 < 16:
        return None
    return c0, r0, c1, r1


# --- the estimate ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    model: reg.Similarity
    inliers: int
    candidates: int  # windows that matched (before the robust fit)
    windows: int  # windows tried
    rmse_px: float
    ncc: float  # median over inliers
    heights: list[np.ndarray] = field(default_factory=list)


class NoFit(ToolError):
    """The tie points do not determine a model (too few matched, or they disagree)."""


def _fit(pair: Pair, model: reg.Similarity, points: Sequence[TiePoint], *, mode: reg.Mode,
         pixel: float) -> Estimate:
    """Tie points → correspondences (source map point, where its content really is) → fit."""
    good = [p for p in points if p.ok]
    need = MIN_TIE_POINTS[mode]
    if len(good) < need:
        raise NoFit(
            f"could not match the rasters: {len(good)} of {len(points)} windows matched (at "
            f"least {need} needed); the overlap has too little texture, or the rasters do not "
            "show the same place"
        )
    t = pair.source.transform
    cols = np.array([p.col for p in good])
    rows = np.array([p.row for p in good])
    px, py = reg.apply_affine(t, cols, rows)
    qx, qy = reg.apply_affine(t, cols + np.array([p.dx for p in good]),
                              rows + np.array([p.dy for p in good]))
    qx, qy = model.apply(qx, qy)
    p = np.column_stack([px, py])
    q = np.column_stack([qx, qy])
    fit = reg.robust_fit(p, q, centre=(model.cx, model.cy), mode=mode,
                         threshold=INLIER_THRESHOLD_PX * pixel)
    inliers = int(fit.inliers.sum())
    if inliers < need:
        hint = ("the source also looks rotated or scaled: try mode 'similarity'"
                if mode == "translation" else "the distortion is not a similarity")
        raise NoFit(
            f"{len(good)} windows matched but only {inliers} agree on one {mode} (at least "
            f"{need} needed): {hint}"
        )
    inlier_points = [g for g, keep in zip(good, fit.inliers) if keep]
    return Estimate(
        model=fit.model, inliers=inliers, candidates=len(good), windows=len(points),
        rmse_px=fit.rmse / pixel, ncc=float(np.median([g.ncc for g in inlier_points])),
        heights=[g.heights for g in inlier_points if g.heights is not None],
    )


def _window_grid(overlap: Overlap, size: int, cap: int) -> list[tuple[int, int]]:
    """Window origins on a regular grid over the overlap (at most ``cap`` per side)."""
    def starts(lo: int, extent: int) -> list[int]:
        n = max(1, min(cap, extent // size))
        if extent < size:
            return []
        step = (extent - size) / max(1, n - 1) if n > 1 else 0
        first = lo + (0 if n > 1 else (extent - size) // 2)
        return sorted({int(round(first + k * step)) for k in range(n)})

    return [(c, r) for r in starts(overlap.row0, overlap.height)
            for c in starts(overlap.col0, overlap.width)]


def window_size(overlap: Overlap) -> int:
    """A power of two between MIN_WINDOW and MAX_WINDOW, at most a sixth of the overlap."""
    size = MAX_WINDOW
    while size > MIN_WINDOW and size * 6 > min(overlap.width, overlap.height):
        size //= 2
    return size


def coarse_estimate(pair: Pair, overlap: Overlap, *, mode: reg.Mode, reporter: Reporter,
                    ) -> reg.Similarity:
    """A seed model from overviews of both rasters over the overlap."""
    import rasterio
    from rasterio.windows import Window

    src_grid = pair.source
    factor = max(1, math.ceil(max(overlap.width, overlap.height) / COARSE_SIZE))
    shape = (max(1, overlap.height // factor), max(1, overlap.width // factor))
    step_y, step_x = overlap.height / shape[0], overlap.width / shape[1]
    centre = reg.apply_affine(src_grid.transform, src_grid.width / 2, src_grid.height / 2)
    model = reg.Similarity(cx=centre[0], cy=centre[1])
    with rasterio.open(src_grid.path) as src, rasterio.open(pair.reference.path) as ref:
        fixed, fixed_valid = read_values(
            src, src_grid, Window(overlap.col0, overlap.row0, overlap.width, overlap.height), shape)
        reporter.progress(0.3, "coarse")
        patch = _coarse_reference(pair, model, overlap, factor, ref)
    reporter.progress(0.6, "coarse")
    if patch is None:
        return model
    values, valid, (rc0, rr0, ref_step) = patch

    def sampler_for(m: reg.Similarity) -> reg.PatchSampler:
        return _patch_sampler(pair, m, values, valid, col0=overlap.col0, row0=overlap.row0,
                              ref_col0=rc0, ref_row0=rr0, ref_step_x=ref_step, ref_step_y=ref_step,
                              step_x=step_x, step_y=step_y)

    whole = match_window(fixed, fixed_valid, sampler_for(model), seek=True)
    if whole is not None and whole.ncc > 0.1:
        point = TiePoint(shape[1] / 2, shape[0] / 2, whole.dy, whole.dx, whole.ncc, True)
        model = _coarse_fit(pair, overlap, model, [point], "translation", step_x, step_y) or model
    for _ in range(2):
        size = min(COARSE_WINDOW, max(16, min(shape) // 4))
        grid = _window_grid(Overlap(0, 0, shape[1], shape[0], 1.0), size, 8)
        sampler = sampler_for(model)
        points = []
        for c0, r0 in grid:
            win = (slice(r0, r0 + size), slice(c0, c0 + size))
            local = _offset_sampler(sampler, r0, c0)
            refined = match_window(fixed[win], fixed_valid[win], local, seek=True)
            points.append(_tie_point((c0 + size / 2, r0 + size / 2), refined, fixed[win]))
        model = _coarse_fit(pair, overlap, model, points, mode, step_x, step_y) or model
    reporter.progress(1.0, "coarse")
    return model


class _OffsetSampler(reg.PatchSampler):
    """A sampler seen from a sub-window starting at (row0, col0) of its window."""

    def __init__(self, base: reg.PatchSampler, row0: int, col0: int) -> None:  # noqa: D107
        self._base, self._row0, self._col0 = base, row0, col0
        self.shape = base.shape

    def sample(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._base.sample(rows + self._row0, cols + self._col0)


def _offset_sampler(base: reg.PatchSampler, row0: int, col0: int) -> reg.PatchSampler:
    return _OffsetSampler(base, row0, col0)


def _coarse_fit(pair: Pair, overlap: Overlap, model: reg.Similarity, points: list[TiePoint],
                mode: reg.Mode, step_x: float, step_y: float) -> reg.Similarity | None:
    """Fit coarse tie points (in overview pixels) as full-resolution ones."""
    scaled = [TiePoint(overlap.col0 + p.col * step_x, overlap.row0 + p.row * step_y,
                       p.dy * step_y, p.dx * step_x, p.ncc, p.ok) for p in points]
    if sum(p.ok for p in scaled) < (1 if len(scaled) == 1 else MIN_TIE_POINTS[mode]):
        return None
    pixel = pair.source.pixel_size * max(step_x, step_y)
    if len(scaled) == 1:
        t = pair.source.transform
        p = scaled[0]
        px, py = reg.apply_affine(t, p.col, p.row)
        qx, qy = model.apply(*reg.apply_affine(t, p.col + p.dx, p.row + p.dy))
        return reg.Similarity(a=model.a, b=model.b, tx=model.tx + float(qx) - px,
                              ty=model.ty + float(qy) - py, cx=model.cx, cy=model.cy)
    try:
        return _fit(pair, model, scaled, mode=mode, pixel=pixel).model
    except NoFit:
        return None


def _coarse_reference(pair: Pair, model: reg.Similarity, overlap: Overlap, factor: int, ref: Any,
                      ) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]] | None:
    """The reference around the overlap, averaged down to about the overview's pixel size."""
    from rasterio.windows import Window

    margin = max(overlap.width, overlap.height) * 0.1
    cols = np.array([overlap.col0 - margin, overlap.col1 + margin] * 2)
    rows = np.array([overlap.row0 - margin] * 2 + [overlap.row1 + margin] * 2)
    c, r = pair.to_reference(model, cols, rows)
    grid = pair.reference
    c0, r0 = max(0, math.floor(c.min())), max(0, math.floor(r.min()))
    c1, r1 = min(grid.width, math.ceil(c.max())), min(grid.height, math.ceil(r.max()))
    if c1 - c0 < 16 or r1 - r0 < 16:
        return None
    ratio = pair.source.pixel_size / grid.pixel_size  # reference pixels per source pixel
    step = max(1, int(factor * ratio))
    c1, r1 = c0 + (c1 - c0) // step * step, r0 + (r1 - r0) // step * step
    shape = ((r1 - r0) // step, (c1 - c0) // step)
    values, valid = read_values(ref, grid, Window(c0, r0, c1 - c0, r1 - r0), shape)
    return values, valid, (c0, r0, step)


def estimate(pair: Pair, overlap: Overlap, *, mode: reg.Mode, reporter: Reporter,
             stop: StopSignal) -> Estimate:
    """Coarse seed, then one (translation) or two (similarity) full-resolution passes."""
    reporter.progress(0.0, "coarse")
    model = coarse_estimate(pair, overlap, mode=mode, reporter=reporter)
    reporter.log(f"Coarse estimate: {_describe(model, pair.source.pixel_size)}")
    size = window_size(overlap)
    grid = _window_grid(overlap, size, MAX_WINDOWS_PER_SIDE)
    passes = 2 if mode == "similarity" else 1
    result: Estimate | None = None
    token = uuid.uuid4().hex[:8]
    for n in range(passes):
        reporter.progress(0.0, "matching" if passes == 1 else f"matching (pass {n + 1}/{passes})")
        batches = [tuple(grid[i:i + WINDOWS_PER_TASK]) for i in range(0, len(grid), WINDOWS_PER_TASK)]
        jobs = [(MatchJob(pair=pair, model=model, size=size, windows=b, stop=stop),) for b in batches]
        points: list[TiePoint] = []
        for done, batch in enumerate(fan_out(match_windows, jobs, reporter=reporter,
                                             key_prefix=f"align-{token}-{n}"), start=1):
            points += batch
            reporter.progress(done / len(jobs))
        result = _fit(pair, model, points, mode=mode, pixel=pair.source.pixel_size)
        model = result.model
        reporter.log(
            f"Pass {n + 1}: {result.inliers} of {result.candidates} matched {size}×{size} windows "
            f"are inliers (of {result.windows}), rmse {result.rmse_px:.3f} px: "
            f"{_describe(model, pair.source.pixel_size)}"
        )
    assert result is not None
    return result


def _describe(model: reg.Similarity, pixel: float) -> str:
    return (f"shift {model.tx / pixel:+.3f}, {model.ty / pixel:+.3f} px, rotation "
            f"{model.theta_deg:+.4f}°, scale {model.scale:.6f}")


# --- the result ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AlignResult:
    tx: float
    ty: float
    thetaDeg: float  # noqa: N815 - the JSON names of the task result
    scale: float
    shiftZ: float | None  # noqa: N815
    inlierCount: int  # noqa: N815
    inlierRatio: float  # noqa: N815
    rmse: float
    confidence: float
    mode: str
    warning: str | None
    centre: tuple[float, float] = (0.0, 0.0)
    pixelSize: float = 1.0  # noqa: N815
    output: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @property
    def model(self) -> reg.Similarity:
        theta = math.radians(self.thetaDeg)
        return reg.Similarity(a=self.scale * math.cos(theta), b=self.scale * math.sin(theta),
                              tx=self.tx, ty=self.ty, cx=self.centre[0], cy=self.centre[1])


def _confidence(est: Estimate) -> float:
    ratio = est.inliers / max(1, est.windows)
    support = min(1.0, est.inliers / 12)
    precision = 1.0 / (1.0 + est.rmse_px / 0.1)
    return round(max(0.0, min(1.0, ratio ** 0.5 * support * max(est.ncc, 0.0) * (0.5 + 0.5 * precision))), 3)


def _warnings(est: Estimate, checked_warning: str | None, confidence: float) -> str | None:
    notes = [checked_warning] if checked_warning else []
    if est.inliers / max(1, est.windows) < 0.5:
        notes.append(f"only {est.inliers} of {est.windows} windows agree: check the result")
    if confidence < 0.5:
        notes.append(f"low confidence ({confidence:.2f})")
    return "; ".join(notes) or None


# --- writing -------------------------------------------------------------------------------------


def _corrected(da: xr.DataArray, transform: Affine) -> xr.DataArray:
    """``da`` with a new north-up-or-not geotransform (pixels untouched)."""
    height, width = da.sizes["y"], da.sizes["x"]
    xs = reg.apply_affine(transform, np.arange(width) + 0.5, np.full(width, 0.5))[0]
    ys = reg.apply_affine(transform, np.full(height, 0.5), np.arange(height) + 0.5)[1]
    out = da.assign_coords(x=np.asarray(xs), y=np.asarray(ys))
    return out.rio.write_transform(transform)


def _shift_heights(da: xr.DataArray, shift_z: float, nodata: float | None) -> xr.DataArray:
    shifted = da + np.asarray(shift_z, dtype=da.dtype)
    if nodata is not None and not math.isnan(nodata):
        shifted = xr.where(da == nodata, da, shifted, keep_attrs=True)
    return shifted.astype(da.dtype).rio.write_crs(da.rio.crs)


def translated(src: Path, model: reg.Similarity, shift_z: float | None) -> xr.DataArray:
    """The source with the corrected geotransform; pixels copied as they are."""
    da = open_raster(src)
    new = Affine(*model.coefficients()) @ da.rio.transform()
    out = _corrected(da, new)
    if shift_z:
        out = _shift_heights(out, shift_z, da.rio.nodata)
        out = out.rio.write_transform(new)
    return out


def write_output(src: Path, dst: Path, model: reg.Similarity, shift_z: float | None, *,
                 reporter: Reporter, stop: StopSignal, blocksize: int = 512) -> None:
    header = read_header(src)
    if model.is_translation:
        da = translated(src, model, shift_z)
        write_cog(da, dst, reporter=reporter, stop=stop, nodata=da.rio.nodata, blocksize=blocksize,
                  alpha=header.alpha_band == header.count and header.count > 1,
                  band_descriptions=_descriptions(header))
        return
    from tools.resample import resample_similarity

    resampled = resample_similarity(src, model, shift_z=shift_z, chunk=OUTPUT_CHUNK)
    write_cog(resampled.data, dst, reporter=reporter, stop=stop, nodata=resampled.nodata,
              blocksize=blocksize,
              alpha=resampled.alpha, band_descriptions=resampled.descriptions)


def _descriptions(header: RasterHeader) -> list[str] | None:
    if not any(header.descriptions):
        return None
    return [d or "" for d in header.descriptions]


# --- the tool -----------------------------------------------------------------------------------


def align(source: str | Path, reference: str | Path, dst: str | Path | None, *,
          mode: str = "similarity", reporter: Reporter | None = None,
          stop: StopSignal | None = None, output_label: str | None = None,
          blocksize: int = 512) -> AlignResult:
    """Estimate the correction of ``source`` against ``reference`` and, when ``dst`` is given,
    write the corrected source there as a COG. Runs on the current Dask cluster. The result
    is logged as one JSON line (``output``: ``output_label``, else the file name)."""
    if mode not in MODES:
        raise InvalidParams(f"unknown mode '{mode}' (known: {', '.join(MODES)})")
    reporter = reporter or PrintReporter()
    stop = stop or StopSignal()
    checked = check_inputs(Path(source), Path(reference))
    pair, overlap = checked.pair, checked.overlap
    if checked.warning:
        reporter.log(f"Warning: {checked.warning}")
    reporter.log(
        f"Aligning {Path(source).name} ({pair.source.width}×{pair.source.height}) to "
        f"{Path(reference).name} ({pair.reference.width}×{pair.reference.height}), mode {mode}, "
        f"overlap {overlap.fraction:.0%}"
    )
    est = estimate(pair, overlap, mode=mode, reporter=reporter, stop=stop)  # type: ignore[arg-type]
    shift_z = None
    if pair.source.elevation and est.heights:
        shift_z = float(np.median(np.concatenate(est.heights)))
        reporter.log(f"Vertical offset to the reference: {shift_z:+.3f} (removed)")
    confidence = _confidence(est)
    pixel = pair.source.pixel_size
    model = est.model
    result = AlignResult(
        tx=model.tx, ty=model.ty, thetaDeg=model.theta_deg if mode == "similarity" else 0.0,
        scale=model.scale if mode == "similarity" else 1.0, shiftZ=shift_z,
        inlierCount=est.inliers, inlierRatio=round(est.inliers / max(1, est.windows), 4),
        rmse=round(est.rmse_px, 4), confidence=confidence, mode=mode,
        warning=_warnings(est, checked.warning, confidence), centre=(model.cx, model.cy),
        pixelSize=pixel, output=output_label or (None if dst is None else Path(dst).name),
    )
    if dst is not None:
        stop.check()
        reporter.check_cancelled()
        write_output(Path(source), Path(dst), model, shift_z, reporter=reporter, stop=stop,
                     blocksize=blocksize)
    reporter.log(json.dumps(result.to_json()))
    return result


def run(params: dict[str, Any], ctx: ToolContext) -> ToolResult:
    root = ctx.dataset_root
    source = _input(root, params, "sourcePath")
    reference = _input(root, params, "referencePath")
    rel = output_relpath(params)
    stop = StopSignal(ctx.cancel_event)
    with staging(root, SPEC.id, ctx.task_id) as folder:
        staged = folder / Path(rel).name
        result = align(source, reference, staged, mode=params.get("mode") or "similarity",
                       reporter=ctx.reporter, stop=stop, output_label=rel,
                       blocksize=ctx.limits.raster_tile_size)
        ctx.reporter.check_cancelled()
        stop.check()
        move_into_dataset(staged, root, rel)
    return ToolResult(entries_added=[rel], summary=result.to_json())
