"""Sub-pixel image registration: the numerical core of ``align-raster``.

Plain numpy/scipy on arrays in memory (one window, one coarse overview), so each step can be
tested and benchmarked on its own:

- :class:`Similarity`: a 4-DOF similarity (or a pure translation) of map coordinates about a
  fixed centre, ``q = s·R(θ)·(p - c) + c + t``;
- :func:`phase_correlation`: the shift between two windows, integer peak plus a parabolic
  sub-pixel step (the seed);
- :class:`PatchSampler` and :func:`refine_shift`: Gauss–Newton (Lucas–Kanade) refinement of
  the shift. The moving image is re-sampled with cubic splines *from its original pixels* at
  every step, which removes the ~0.1 px bias of single-shot phase correlation;
- :func:`robust_fit`: a deterministic RANSAC over tie points, then least squares on the
  inliers (twice).

Conventions: windows are ``(rows, cols)`` arrays; shifts are ``(dy, dx)`` in window pixels;
``moving(x) ≈ fixed(x - d)`` means the moving image is the fixed one moved by ``+d``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import ndimage

Mode = Literal["similarity", "translation"]

MIN_VALID_PIXELS = 256
MIN_STD = 1e-6


# --- the model ---------------------------------------------------------------------------


def apply_affine(t: Any, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """``t`` (an :class:`affine.Affine`) applied to coordinate arrays."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f


@dataclass(frozen=True, kw_only=True)
class Similarity:
    """``q = [[a, -b], [b, a]]·(p - c) + c + t`` in map coordinates (``a = s·cosθ``,
    ``b = s·sinθ``, θ counter-clockwise with y pointing north). The identity by default."""

    a: float = 1.0
    b: float = 0.0
    tx: float = 0.0
    ty: float = 0.0
    cx: float = 0.0
    cy: float = 0.0

    @property
    def scale(self) -> float:
        return math.hypot(self.a, self.b)

    @property
    def theta_deg(self) -> float:
        return math.degrees(math.atan2(self.b, self.a))

    @property
    def is_translation(self) -> bool:
        return self.a == 1.0 and self.b == 0.0

    def apply(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = x - self.cx, y - self.cy
        return (self.a * dx - self.b * dy + self.cx + self.tx,
                self.b * dx + self.a * dy + self.cy + self.ty)

    def inverse(self) -> Similarity:
        """The inverse map, about the image of the centre."""
        s2 = self.a * self.a + self.b * self.b
        a, b = self.a / s2, -self.b / s2
        cx, cy = self.cx + self.tx, self.cy + self.ty
        return Similarity(a=a, b=b, tx=-self.tx, ty=-self.ty, cx=cx, cy=cy)

    def coefficients(self) -> tuple[float, float, float, float, float, float]:
        """``(A, B, C, D, E, F)`` of ``x' = A·x + B·y + C``, ``y' = D·x + E·y + F``."""
        a, b = self.a, self.b
        c = self.cx + self.tx - a * self.cx + b * self.cy
        f = self.cy + self.ty - b * self.cx - a * self.cy
        return (a, -b, c, b, a, f)

    @classmethod
    def from_coefficients(cls, coefficients: tuple[float, ...], *, cx: float, cy: float,
                          ) -> Similarity:
        """The similarity of an affine map ``(A, B, C, D, E, F)`` (its similar part)."""
        a_, b_, c, d, e, f = coefficients
        a, b = (a_ + e) / 2, (d - b_) / 2
        tx = a * cx - b * cy + c - cx
        ty = b * cx + a * cy + f - cy
        return cls(a=a, b=b, tx=tx, ty=ty, cx=cx, cy=cy)


def fit_similarity(p: np.ndarray, q: np.ndarray, *, centre: tuple[float, float],
                   mode: Mode) -> Similarity:
    """Least-squares model mapping points ``p`` (n, 2) onto ``q`` (n, 2)."""
    cx, cy = centre
    if mode == "translation":
        t = np.mean(q - p, axis=0)
        return Similarity(tx=float(t[0]), ty=float(t[1]), cx=cx, cy=cy)
    dx, dy = p[:, 0] - cx, p[:, 1] - cy
    n = len(p)
    design = np.zeros((2 * n, 4))
    design[0::2] = np.column_stack([dx, -dy, np.ones(n), np.zeros(n)])
    design[1::2] = np.column_stack([dy, dx, np.zeros(n), np.ones(n)])
    target = np.empty(2 * n)
    target[0::2] = q[:, 0] - cx
    target[1::2] = q[:, 1] - cy
    (a, b, tx, ty), *_ = np.linalg.lstsq(design, target, rcond=None)
    return Similarity(a=float(a), b=float(b), tx=float(tx), ty=float(ty), cx=cx, cy=cy)


def residuals(model: Similarity, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Distance between the model's image of each ``p`` and its ``q``."""
    x, y = model.apply(p[:, 0], p[:, 1])
    return np.hypot(x - q[:, 0], y - q[:, 1])


@dataclass(frozen=True)
class RobustFit:
    model: Similarity
    inliers: np.ndarray  # bool per tie point
    rmse: float  # of the inliers, in the units of p and q


MAX_EXHAUSTIVE_SAMPLES = 2000
RANDOM_SAMPLES = 2000


def robust_fit(p: np.ndarray, q: np.ndarray, *, centre: tuple[float, float], mode: Mode,
               threshold: float, seed: int = 0) -> RobustFit:
    """RANSAC (minimal samples: 1 point for a translation, 2 for a similarity; every sample
    when there are few, else a fixed-seed random choice, so the result is deterministic),
    then least squares on the inliers, re-selected and re-fitted twice."""
    n = len(p)
    k = 1 if mode == "translation" else 2
    if n < k:
        raise ValueError(f"{n} tie points cannot fix a {mode}")
    samples: list[tuple[int, ...]]
    if math.comb(n, k) <= MAX_EXHAUSTIVE_SAMPLES:
        samples = list(itertools.combinations(range(n), k))
    else:
        rng = np.random.default_rng(seed)
        samples = [tuple(rng.choice(n, size=k, replace=False)) for _ in range(RANDOM_SAMPLES)]
    best: tuple[int, float] | None = None
    best_inliers = np.ones(n, dtype=bool)
    for sample in samples:
        idx = list(sample)
        if k == 2 and np.allclose(p[idx[0]], p[idx[1]]):
            continue
        model = fit_similarity(p[idx], q[idx], centre=centre, mode=mode)
        r = residuals(model, p, q)
        inliers = r < threshold
        score = (int(inliers.sum()), -float(np.sum(np.minimum(r, threshold))))
        if best is None or score > best:
            best, best_inliers = score, inliers
    inliers = best_inliers
    model = fit_similarity(p[inliers], q[inliers], centre=centre, mode=mode)
    for _ in range(2):
        refreshed = residuals(model, p, q) < threshold
        if refreshed.sum() < k:
            break
        inliers = refreshed
        model = fit_similarity(p[inliers], q[inliers], centre=centre, mode=mode)
    r = residuals(model, p[inliers], q[inliers])
    return RobustFit(model=model, inliers=inliers, rmse=float(np.sqrt(np.mean(r * r))))


# --- shifts between windows ----------------------------------------------------------------


@dataclass(frozen=True)
class Shift:
    dy: float
    dx: float
    peak: float  # phase correlation: height of the normalised peak (0..1)


def standardize(values: np.ndarray, valid: np.ndarray) -> np.ndarray | None:
    """Zero mean, unit variance over ``valid``; 0 elsewhere. None when flat or too small."""
    if int(valid.sum()) < MIN_VALID_PIXELS:
        return None
    v = values[valid]
    mean, std = float(v.mean()), float(v.std())
    if not math.isfinite(std) or std < MIN_STD * max(1.0, abs(mean)):
        return None
    return np.where(valid, (values - mean) / std, 0.0)


def _hann(shape: tuple[int, int]) -> np.ndarray:
    return np.outer(np.hanning(shape[0]), np.hanning(shape[1]))


def phase_correlation(fixed: np.ndarray, moving: np.ndarray, fixed_valid: np.ndarray,
                      moving_valid: np.ndarray) -> Shift | None:
    """The shift ``d`` with ``moving(x) ≈ fixed(x - d)``: the normalised cross-power peak,
    refined with a parabola through its neighbours. None when either window is flat."""
    zf, zm = standardize(fixed, fixed_valid), standardize(moving, moving_valid)
    if zf is None or zm is None:
        return None
    zf, zm = ndimage.gaussian_filter(zf, SMOOTHING), ndimage.gaussian_filter(zm, SMOOTHING)
    window = _hann(fixed.shape)
    ff, fm = np.fft.rfft2(zf * window), np.fft.rfft2(zm * window)
    cross = fm * np.conj(ff)
    cross /= np.maximum(np.abs(cross), 1e-12)
    surface = np.fft.irfft2(cross, s=fixed.shape)
    iy, ix = np.unravel_index(int(np.argmax(surface)), surface.shape)
    h, w = surface.shape

    def parabola(minus: float, centre: float, plus: float) -> float:
        denominator = minus - 2 * centre + plus
        return 0.0 if denominator >= 0 else 0.5 * (minus - plus) / denominator

    peak = float(surface[iy, ix])
    sy = parabola(surface[(iy - 1) % h, ix], peak, surface[(iy + 1) % h, ix])
    sx = parabola(surface[iy, (ix - 1) % w], peak, surface[iy, (ix + 1) % w])
    dy = (iy if iy <= h // 2 else iy - h) + sy
    dx = (ix if ix <= w // 2 else ix - w) + sx
    return Shift(dy=float(dy), dx=float(dx), peak=peak)


class PatchSampler:
    """Cubic-spline samples of an image patch at arbitrary positions, with validity.

    ``to_patch(rows, cols)`` maps window positions to (fractional) patch indices; a sample is
    valid when all patch pixels its spline touches are valid and inside the patch."""

    def __init__(self, patch: np.ndarray, valid: np.ndarray,
                 to_patch: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
                 ) -> None:
        filled = np.where(valid, patch, float(patch[valid].mean()) if valid.any() else 0.0)
        self._coefficients = ndimage.spline_filter(filled.astype(np.float64), order=3,
                                                   mode="mirror")
        # a pixel is usable when its 4×4 spline support is valid
        self._invalid = (~ndimage.binary_erosion(valid, np.ones((5, 5), bool), border_value=0)
                         ).astype(np.uint8)
        self._to_patch = to_patch
        self.shape = patch.shape

    def sample(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pr, pc = self._to_patch(rows, cols)
        h, w = self.shape
        inside = (pr >= 1) & (pr <= h - 2) & (pc >= 1) & (pc <= w - 2)
        coords = np.array([pr, pc])
        values = ndimage.map_coordinates(self._coefficients, coords, order=3, mode="mirror",
                                         prefilter=False)
        bad = ndimage.map_coordinates(self._invalid, coords, order=0, mode="constant", cval=1)
        return values, inside & (bad == 0)


@dataclass(frozen=True)
class Refined:
    dy: float
    dx: float
    ncc: float  # normalised cross-correlation after alignment (-1..1)
    valid_fraction: float
    iterations: int
    converged: bool
    moving: np.ndarray | None = None  # the moving samples at the final shift (raw values)
    valid: np.ndarray | None = None


MAX_ITERATIONS = 20
TOLERANCE = 1e-4
GIVE_UP_AFTER = 4  # steps; then a window whose correlation stays below GIVE_UP_CORRELATION
GIVE_UP_CORRELATION = 0.2
SMOOTHING = 1.0  # σ of the Gaussian both windows are smoothed with, in pixels
EROSION = np.ones((7, 7), bool)  # pixels whose smoothing or gradient touched nodata


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.add.reduce(a * b))


def refine_shift(fixed: np.ndarray, fixed_valid: np.ndarray, sampler: PatchSampler,
                 seed: tuple[float, float] = (0.0, 0.0), *, keep_samples: bool = False,
                 tolerance: float = TOLERANCE) -> Refined | None:
    """Gauss–Newton on ``Σ (z(G*fixed)(x) - z(G*moving)(x + d))²`` over pixels valid in
    both, starting at ``seed``. ``G`` is a small Gaussian (noise), ``z`` standardises over
    the pixels used (gain and offset free), and the Jacobian is the mean of both images'
    gradients (efficient second-order minimisation: few steps, no bias). The moving image
    is re-sampled from its own pixels at every step. None when there is too little valid
    overlap, or texture in only one direction."""
    h, w = fixed.shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    d = np.array(seed, dtype=np.float64)
    smooth_fixed = ndimage.gaussian_filter(fixed, SMOOTHING)
    fixed_usable = ndimage.binary_erosion(fixed_valid, EROSION, border_value=0)
    fy, fx = np.gradient(smooth_fixed)
    converged = False
    iterations = 0
    for iteration in range(1, MAX_ITERATIONS + 1):
        iterations = iteration
        moving, moving_valid = sampler.sample(rows + d[0], cols + d[1])
        usable = fixed_usable if moving_valid.all() else (
            fixed_usable & ndimage.binary_erosion(moving_valid, EROSION, border_value=1))
        if int(usable.sum()) < MIN_VALID_PIXELS:
            return None
        smooth_moving = ndimage.gaussian_filter(moving, SMOOTHING)
        f, m = smooth_fixed[usable], smooth_moving[usable]
        f_std, m_std = float(f.std()), float(m.std())
        if min(f_std, m_std) < MIN_STD * max(1.0, abs(float(f.mean())), abs(float(m.mean()))):
            return None
        my, mx = np.gradient(smooth_moving)
        jy = (fy[usable] / f_std + my[usable] / m_std) / 2
        jx = (fx[usable] / f_std + mx[usable] / m_std) / 2
        e = (m - m.mean()) / m_std - (f - f.mean()) / f_std
        # plain reductions, not BLAS dot products: a multi-threaded BLAS in a busy notebook
        # process waits for its helper threads on every one of these small products
        yy, yx, xx = _dot(jy, jy), _dot(jy, jx), _dot(jx, jx)
        hessian = np.array([[yy, yx], [yx, xx]])
        if np.linalg.cond(hessian) > 1e6:
            return None  # texture in one direction only: the shift along it is unknown
        if iteration > GIVE_UP_AFTER and 1.0 - _dot(e, e) / (2 * e.size) < GIVE_UP_CORRELATION:
            return None  # still unrelated after several steps: not the same scene here
        step = np.linalg.solve(hessian, np.array([_dot(jy, e), _dot(jx, e)]))
        d -= step
        if not np.all(np.isfinite(d)) or np.abs(d).max() > max(h, w) / 2:
            return None
        if float(np.hypot(*step)) < tolerance:
            converged = True
            break
    moving, moving_valid = sampler.sample(rows + d[0], cols + d[1])
    both = fixed_valid & moving_valid
    zf, zm = standardize(fixed, both), standardize(moving, both)
    if zf is None or zm is None:
        return None
    ncc = float(np.mean(zf[both] * zm[both]))
    return Refined(
        dy=float(d[0]), dx=float(d[1]), ncc=ncc, valid_fraction=float(both.mean()),
        iterations=iterations, converged=converged,
        moving=moving if keep_samples else None, valid=both if keep_samples else None,
    )
