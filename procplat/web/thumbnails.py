"""Small PNG previews of rasters, in bounded time and memory whatever the raster's size.

The picture is read at thumbnail size (GDAL answers a decimated read from the overview
nearest that size), so only the blocks of one small overview are decoded; a raster with no
overviews is previewed only when it is small (:data:`MAX_PIXELS_WITHOUT_OVERVIEWS`),
others once their build (a COG with overviews) exists. Pixels that are nodata, masked or
transparent in the raster are transparent in the PNG.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioIOError

__all__ = ["MAX_PIXELS_WITHOUT_OVERVIEWS", "THUMBNAIL_SIZE", "thumbnail_png"]

THUMBNAIL_SIZE = 256
MAX_PIXELS_WITHOUT_OVERVIEWS = 4096 * 4096
_GDAL_CACHE_MB = 32


def thumbnail_png(candidates: Sequence[Path], size: int = THUMBNAIL_SIZE) -> bytes | None:
    """The PNG of the first candidate that can be previewed within the bounds, or None."""
    with rasterio.Env(GDAL_CACHEMAX=_GDAL_CACHE_MB, GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        for path in candidates:
            if not path.is_file():
                continue
            try:
                picture = _render(path, size)
            except RasterioIOError:
                continue  # not a raster GDAL reads: the next candidate, else no preview
            if picture is not None:
                return picture
    return None


def _render(path: Path, size: int) -> bytes | None:
    with rasterio.open(path) as src:
        if not src.overviews(1) and src.width * src.height > MAX_PIXELS_WITHOUT_OVERVIEWS:
            return None
        scale = max(src.width, src.height) / size
        width = max(1, round(src.width / scale)) if scale > 1 else src.width
        height = max(1, round(src.height / scale)) if scale > 1 else src.height
        colour = [i + 1 for i, c in enumerate(src.colorinterp) if c != ColorInterp.alpha]
        bands = colour[:3] if len(colour) >= 3 else colour[:1]
        data = src.read(bands, out_shape=(len(bands), height, width),
                        resampling=Resampling.nearest)
        mask = src.dataset_mask(out_shape=(height, width), resampling=Resampling.nearest)
    rgb = np.stack([_to_byte(band, mask > 0) for band in data])
    if rgb.shape[0] == 1:
        rgb = np.repeat(rgb, 3, axis=0)
    rgba = np.concatenate([rgb, (mask > 0).astype(np.uint8)[None] * 255])
    out = io.BytesIO()
    Image.fromarray(np.moveaxis(rgba, 0, -1), "RGBA").save(out, "PNG", optimize=False)
    return out.getvalue()


def _to_byte(band: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Bytes as they are; other types stretched from the 2nd to the 98th percentile of the
    valid pixels."""
    if band.dtype == np.uint8:
        return band
    values = band[valid & np.isfinite(band)] if np.issubdtype(band.dtype, np.floating) \
        else band[valid]
    if values.size == 0:
        return np.zeros(band.shape, np.uint8)
    low, high = np.percentile(values, [2, 98])
    span = float(high - low) or 1.0
    scaled = (np.nan_to_num(band.astype(np.float64), nan=low) - low) / span * 255
    return np.clip(scaled, 0, 255).astype(np.uint8)
