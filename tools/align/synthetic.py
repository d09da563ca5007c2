"""Synthetic rasters with known geometry: for examples, tests and benchmarks.

:class:`Texture` is a smooth random field defined everywhere in map coordinates (a sum of
plane waves with log-uniform wavelengths), so a raster of it can be rendered exactly through
any georeferencing, including a deliberately wrong one: :func:`write_texture` renders pixel
``x`` of a raster whose file says ``transform`` with the content really found at
``truth(transform·x)``. Grids render with one matrix product per block (fast at 16384²).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from affine import Affine

from tools.align.registration import Similarity, apply_affine

Kind = Literal["rgb", "elevation", "grey"]


@dataclass(frozen=True)
class Texture:
    kx: np.ndarray  # radians per map unit
    ky: np.ndarray
    phase: np.ndarray
    amplitude: np.ndarray

    @classmethod
    def random(cls, *, seed: int, pixel: float, waves: int = 48, shortest_px: float = 12,
               longest_px: float = 2000) -> Texture:
        """Unit-variance texture with wavelengths from ``shortest_px`` to ``longest_px``
        pixels of size ``pixel``."""
        rng = np.random.default_rng(seed)
        wavelength = np.exp(rng.uniform(math.log(shortest_px), math.log(longest_px), waves)) * pixel
        angle = rng.uniform(0, math.pi, waves)
        k = 2 * math.pi / wavelength
        amplitude = np.sqrt(wavelength)
        amplitude *= math.sqrt(2 / np.sum(amplitude**2))
        return cls(kx=k * np.cos(angle), ky=k * np.sin(angle),
                   phase=rng.uniform(0, 2 * math.pi, waves), amplitude=amplitude)

    def at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Values at map coordinates (any shape)."""
        out = np.zeros(np.shape(x))
        for kx, ky, ph, a in zip(self.kx, self.ky, self.phase, self.amplitude):
            out += a * np.cos(kx * x + ky * y + ph)
        return out

    def on_grid(self, pixel_to_map: Affine, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Values at the pixel centres ``rows × cols`` of an affine grid, as
        ``cos(αc + βr + γ) = cos(βr + γ)cos(αc) - sin(βr + γ)sin(αc)`` in one matrix product."""
        t = pixel_to_map
        alpha = self.kx * t.a + self.ky * t.d
        beta = self.kx * t.b + self.ky * t.e
        gamma = self.kx * t.c + self.ky * t.f + self.phase
        r = (rows.astype(np.float64) + 0.5)[:, None]
        c = (cols.astype(np.float64) + 0.5)[:, None]
        left = np.hstack([self.amplitude * np.cos(beta * r + gamma),
                          -self.amplitude * np.sin(beta * r + gamma)])
        right = np.hstack([np.cos(alpha * c), np.sin(alpha * c)])
        return left @ right.T


def _bands(kind: Kind, base: np.ndarray, detail: np.ndarray, z_offset: float) -> np.ndarray:
    if kind == "elevation":
        return (100.0 + z_offset + 8.0 * base)[None].astype(np.float32)
    if kind == "grey":
        return np.clip(np.rint(128 + 40 * base), 1, 255)[None].astype(np.uint8)
    r = 120 + 45 * base
    g = 130 + 35 * base + 12 * detail
    b = 110 + 25 * base - 10 * detail
    return np.clip(np.rint(np.stack([r, g, b])), 1, 255).astype(np.uint8)


def write_texture(path: str | Path, *, width: int, height: int, transform: Affine,
                  crs: str = "EPSG:32633", kind: Kind = "rgb", seed: int = 7,
                  truth: Similarity | None = None, noise: float = 0.0,
                  nodata_border: int = 0, z_offset: float = 0.0, tile: int = 256,
                  map_of: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
                  texture_pixel: float | None = None, block_rows: int = 1024) -> Path:
    """Write a tiled DEFLATE GeoTIFF of the texture (``seed``) whose file says ``transform``
    but whose content is at ``truth(transform·x)`` (the identity when None). ``noise`` is the
    standard deviation of added Gaussian noise in texture units; ``nodata_border`` pixels
    around the edge are nodata (0, or NaN for elevations). ``map_of`` maps this raster's map
    coordinates to the texture's (another CRS); the slow exact path is used then."""
    import rasterio

    pixel = texture_pixel or math.sqrt(abs(transform.determinant))
    base_tex = Texture.random(seed=seed, pixel=pixel)
    detail_tex = Texture.random(seed=seed + 1000, pixel=pixel, shortest_px=8, longest_px=200)
    grid = Affine(*(truth or Similarity()).coefficients()) @ transform
    dtype = "float32" if kind == "elevation" else "uint8"
    count = 3 if kind == "rgb" else 1
    nodata = float("nan") if kind == "elevation" else 0
    rng = np.random.default_rng(seed + 17)
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=dtype,
                   crs=crs, transform=transform, nodata=nodata, tiled=True, blockxsize=tile,
                   blockysize=tile, compress="deflate", zlevel=1,
                   photometric="RGB" if kind == "rgb" else "MINISBLACK", BIGTIFF="IF_SAFER")
    cols = np.arange(width)
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, height, block_rows):
            rows = np.arange(r0, min(height, r0 + block_rows))
            if map_of is None:
                base = base_tex.on_grid(grid, rows, cols)
                detail = detail_tex.on_grid(grid, rows, cols)
            else:
                cc, rr = np.meshgrid(cols + 0.5, rows + 0.5)
                x, y = apply_affine(grid, cc, rr)
                x, y = map_of(np.asarray(x), np.asarray(y))
                base, detail = base_tex.at(x, y), detail_tex.at(x, y)
            if noise:
                base = base + rng.normal(0.0, noise, base.shape)
            block = _bands(kind, base, detail, z_offset)
            if nodata_border:
                _blank_border(block, rows, width, height, nodata_border, nodata)
            dst.write(block, window=((int(rows[0]), int(rows[-1]) + 1), (0, width)))
    return Path(path)


def _blank_border(block: np.ndarray, rows: np.ndarray, width: int, height: int, border: int,
                  nodata: float) -> None:
    edge = (rows < border) | (rows >= height - border)
    block[:, edge, :] = nodata
    block[:, :, :border] = nodata
    block[:, :, width - border:] = nodata


def corner_error_px(estimated: Similarity, truth: Similarity, transform: Affine, width: int,
                    height: int) -> float:
    """The largest distance, in pixels, between where the two models put the raster's
    corners: the residual misregistration that is left anywhere on the raster."""
    cols = np.array([0, width, width, 0], dtype=np.float64)
    rows = np.array([0, 0, height, height], dtype=np.float64)
    x, y = apply_affine(transform, cols, rows)
    ex, ey = estimated.apply(x, y)
    tx, ty = truth.apply(x, y)
    return float(np.max(np.hypot(ex - tx, ey - ty)) / math.sqrt(abs(transform.determinant)))
