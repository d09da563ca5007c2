"""Finding the correction of a source against a reference: tie points and the estimate.

``coarse_estimate`` works on overviews of both rasters over their overlap (at most
``COARSE_SIZE`` px): a whole-overlap phase correlation seeds a translation, then windows of
the overview, phase-correlated and refined by Gauss–Newton, fitted robustly, give a coarse
model. ``estimate`` then matches up to ``MAX_WINDOWS_PER_SIDE``² full-resolution windows of the
source against the reference warped by the current model, in batches that run as Dask tasks
(each reads only its windows from disk), and fits the tie points with RANSAC + least squares;
a similarity gets a second pass against the refined model. The numerical steps are in
:mod:`tools.align.registration`.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tools.align import registration as reg
from tools.align.pair import Overlap, Pair, read_values
from tools.contract import Reporter, ToolError
from tools.runtime.fanout import StopSignal, fan_out

COARSE_SIZE = 512
COARSE_WINDOW = 128
MAX_WINDOW = 256
MIN_WINDOW = 64
MAX_WINDOWS_PER_SIDE = 12
WINDOWS_PER_TASK = 8
MIN_NCC = 0.4
MIN_TIE_POINTS = {"translation": 3, "similarity": 6}
INLIER_THRESHOLD_PX = 0.5


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

    def __init__(self, base: reg.PatchSampler, row0: int, col0: int) -> None:
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
