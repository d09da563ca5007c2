"""GeoTIFFs for tests and benchmarks: one writer (pixels, grid, creation options) and the
pixel patterns several of them use.

The grid is UTM 33N (EPSG:32633) from (500000, 4500000) unless told otherwise; ``tile``
makes a tiled file; any other keyword is a GDAL creation option or profile entry as
``rasterio.open(..., "w", ...)`` takes it (``compress``, ``nodata``, ``photometric``, ...)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.windows import Window

UTM33N = "EPSG:32633"
ORIGIN = (500000.0, 4500000.0)


def grid(pixel: float, origin: tuple[float, float] = ORIGIN) -> Affine:
    """North-up square pixels of ``pixel`` metres from ``origin`` (the top-left corner)."""
    return from_origin(*origin, pixel, pixel)


def geotiff_profile(*, count: int, height: int, width: int, dtype: Any,
                    crs: str | CRS | None = UTM33N, transform: Affine | None = None,
                    pixel: float = 0.05, tile: int | None = None,
                    **options: Any) -> dict[str, Any]:
    """The ``rasterio.open(..., "w", **profile)`` of a GeoTIFF (no georeferencing at all when
    ``crs`` is None)."""
    profile: dict[str, Any] = dict(driver="GTiff", width=width, height=height, count=count,
                                   dtype=dtype)
    if crs is not None:
        profile.update(crs=crs, transform=transform if transform is not None else grid(pixel))
    if tile is not None:
        profile.update(tiled=True, blockxsize=tile, blockysize=tile)
    profile.update(options)
    return profile


def write_geotiff(path: Path, data: np.ndarray, *, crs: str | CRS | None = UTM33N,
                  transform: Affine | None = None, pixel: float = 0.05,
                  tile: int | None = None, descriptions: Sequence[str] = (),
                  colorinterp: Sequence[ColorInterp] = (), tags: Mapping[str, str] | None = None,
                  **options: Any) -> Path:
    """``data`` (bands × rows × columns, or rows × columns for one band) as a GeoTIFF; with
    band ``descriptions``, ``colorinterp`` and dataset ``tags`` when given."""
    bands = data if data.ndim == 3 else data[np.newaxis]
    count, height, width = bands.shape
    with rasterio.open(path, "w", **geotiff_profile(
        count=count, height=height, width=width, dtype=bands.dtype, crs=crs,
        transform=transform, pixel=pixel, tile=tile, **options,
    )) as dst:
        dst.write(bands)
        if colorinterp:
            dst.colorinterp = list(colorinterp)
        if tags:
            dst.update_tags(**tags)
        for band, text in enumerate(descriptions, start=1):
            dst.set_band_description(band, text)
    return path


def write_geotiff_by_windows(path: Path, pieces: Iterable[tuple[Window, np.ndarray]], *,
                             count: int, height: int, width: int, dtype: Any,
                             crs: str | CRS | None = UTM33N, transform: Affine | None = None,
                             pixel: float = 0.05, tile: int | None = None,
                             **options: Any) -> Path:
    """A GeoTIFF too large to hold in memory at once, written window by window."""
    with rasterio.open(path, "w", **geotiff_profile(
        count=count, height=height, width=width, dtype=dtype, crs=crs, transform=transform,
        pixel=pixel, tile=tile, **options,
    )) as dst:
        for window, block in pieces:
            dst.write(block, window=window)
    return path


def rgbn_gradient(size: int) -> np.ndarray:
    """Four smooth uint8 bands (red, green, blue, near infrared): compresses well."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return np.stack([
        (x / size * 200 + 20), (y / size * 200 + 20), ((x + y) / size * 100 + 30),
        (255 - x / size * 200),
    ]).astype(np.uint8)


def noise(count: int, size: int, *, seed: int) -> np.ndarray:
    """``count`` uint8 bands of noise in 1..254 (incompressible; no pixel is 0 or 255)."""
    return np.random.default_rng(seed).integers(1, 255, (count, size, size), dtype=np.uint8)
