"""Pixels to stored tiles: the codec (TIFF predictor + compression) and the 2× reduction
that makes each overview level from the one above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import imagecodecs
import numpy as np

Resampling = Literal["average", "nearest"]

COMPRESSION = {"NONE": 1, "LZW": 5, "DEFLATE": 8, "ZSTD": 50000}
DEFAULT_LEVEL = {"DEFLATE": 6, "ZSTD": 9}  # GDAL's defaults (ZLEVEL, ZSTD_LEVEL)
DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")



@dataclass(frozen=True, kw_only=True)
class Codec:
    dtype: str
    count: int
    blocksize: int
    compression: int
    level: int | None
    predictor: int
    alpha: bool
    nodata: float | None
    resampling: Resampling

    @classmethod
    def make(cls, *, dtype: str, count: int, blocksize: int, compress: str, level: int | None,
             predictor: int | None, alpha: bool, nodata: float | None,
             resampling: str) -> Codec:
        if dtype not in DTYPES:
            raise ValueError(f"cannot write {dtype} pixels to a COG (use one of {DTYPES})")
        name = compress.upper()
        if name not in COMPRESSION:
            raise ValueError(f"unknown compression {compress!r} (use one of {list(COMPRESSION)})")
        if blocksize < 16 or blocksize % 16:
            raise ValueError(f"blocksize must be a multiple of 16, got {blocksize}")
        if resampling not in ("average", "nearest"):
            raise ValueError(f"overview_resampling must be 'average' or 'nearest', got {resampling!r}")
        if alpha and count < 2:
            raise ValueError("alpha needs at least two bands (the last is the alpha band)")
        is_float = np.dtype(dtype).kind == "f"
        if predictor is None:
            predictor = 1 if name == "NONE" else 3 if is_float else 2
        if predictor not in (1, 2, 3) or (predictor == 3 and not is_float) or (
                predictor == 2 and is_float):
            raise ValueError(f"predictor {predictor} does not suit {dtype} pixels")
        if nodata is not None and not is_float:
            info = np.iinfo(dtype)
            if not (float(nodata).is_integer() and info.min <= nodata <= info.max):
                raise ValueError(f"nodata {nodata} is not a {dtype} value")
        return cls(dtype=dtype, count=count, blocksize=blocksize, compression=COMPRESSION[name],
                   level=DEFAULT_LEVEL.get(name) if level is None else level,
                   predictor=predictor, alpha=alpha, nodata=nodata,
                   resampling=resampling)  # type: ignore[arg-type]

    def encode(self, block: np.ndarray) -> bytes:
        """One tile, pixel-interleaved, zero-padded to the block size, as stored."""
        count, h, w = block.shape
        b = self.blocksize
        tile = np.zeros((b, b, count), dtype=np.dtype(self.dtype).newbyteorder("<"))
        tile[:h, :w] = np.moveaxis(block, 0, -1)
        if self.predictor == 2:
            tile = imagecodecs.delta_encode(tile, axis=-2)
        elif self.predictor == 3:
            tile = imagecodecs.floatpred_encode(tile, axis=-2)
        buffer: Any = tile  # the codecs take any contiguous buffer
        if self.compression == 8:
            return bytes(imagecodecs.deflate_encode(buffer, level=self.level))
        if self.compression == 50000:
            return bytes(imagecodecs.zstd_encode(buffer, level=self.level))
        if self.compression == 5:
            return bytes(imagecodecs.lzw_encode(buffer))
        return tile.tobytes()

    def reduce(self, arr: np.ndarray) -> np.ndarray:
        """Halve (band, y, x) pixels: ``ceil(size / 2)`` on each side."""
        if self.resampling == "nearest":
            return np.ascontiguousarray(arr[:, ::2, ::2])
        count = arr.shape[0]
        out = np.empty((count, (arr.shape[1] + 1) // 2, (arr.shape[2] + 1) // 2), arr.dtype)
        alpha_valid = arr[-1] > 0 if self.alpha else None
        for b in range(count):
            if self.alpha and b == count - 1:
                out[b] = average(arr[b], None, 0)
                continue
            valid = alpha_valid
            band = arr[b]
            if self.nodata is not None and not math.isnan(self.nodata):
                ok = band != self.nodata
                valid = ok if valid is None else valid & ok
            if band.dtype.kind == "f":
                ok = ~np.isnan(band)
                valid = ok if valid is None else valid & ok
            fill = self.nodata if self.nodata is not None else 0
            out[b] = average(band, valid, fill)
        return out


def average(band: np.ndarray, valid: np.ndarray | None, fill: float) -> np.ndarray:
    """Mean of each 2×2 window over its valid pixels inside the raster."""
    h, w = band.shape
    if h % 2 or w % 2:  # pad to even sides; the padding is not valid
        inside = np.ones((h, w), bool) if valid is None else valid
        band = np.pad(band, ((0, h % 2), (0, w % 2)))
        valid = np.pad(inside, ((0, h % 2), (0, w % 2)))
    kind, size = band.dtype.kind, band.dtype.itemsize
    small_int = kind in "ui" and size <= 2
    if small_int:
        acc: type[np.number[Any]] = np.uint32 if kind == "u" else np.int32
    else:
        acc = np.float64 if size >= 4 and kind in "ui" or size == 8 else np.float32
    if valid is None:
        total = quad_sum(band, acc)
        if small_int:
            return ((total + 2) // 4).astype(band.dtype)  # round half up
        mean = total / 4
        n = None
    else:
        total = quad_sum(np.where(valid, band, 0), acc)
        n = quad_sum(valid.view(np.uint8), np.uint8)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.true_divide(total, n, dtype=np.float64 if acc is np.float64 else np.float32)
    if kind in "ui":
        info = np.iinfo(band.dtype)
        mean = np.clip(np.floor(mean + 0.5), info.min, info.max)
    if n is not None:
        mean[n == 0] = fill
    return mean.astype(band.dtype)


def quad_sum(x: np.ndarray, acc: Any) -> np.ndarray:
    """Sum of each 2×2 window of an array with even sides."""
    total = x[0::2, 0::2].astype(acc)
    total += x[1::2, 0::2]
    total += x[0::2, 1::2]
    total += x[1::2, 1::2]
    return total
