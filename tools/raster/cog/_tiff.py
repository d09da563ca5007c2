"""The TIFF file: header, GDAL's ghost metadata, all IFDs first, then the tile data from the
smallest level to the full resolution, copied from the spool.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import xarray as xr

from tools.contract import Reporter
from tools.raster.cog._codec import Codec
from tools.raster.cog._layout import Layout
from tools.raster.cog._render import WAIT_SLICE, TileIndex
from tools.runtime.fanout import Stop

BIGTIFF_THRESHOLD = 2**32 - 1  # a classic TIFF cannot address more
_COPY_CHUNK = 8 << 20


_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
              16: 8, 17: 8, 18: 8}
_GEO_TAGS = (33550, 33922, 34264, 34735, 34736, 34737, 42112, 42113)


@dataclass(frozen=True)
class _Tag:
    code: int
    type: int
    count: int
    data: bytes  # little-endian values


def _short(code: int, *values: int) -> _Tag:
    return _Tag(code, 3, len(values), struct.pack(f"<{len(values)}H", *values))


def _long(code: int, *values: int) -> _Tag:
    return _Tag(code, 4, len(values), struct.pack(f"<{len(values)}I", *values))


def _offsets(code: int, values: np.ndarray, big: bool) -> _Tag:
    arr = values.astype("<u8" if big else "<u4")
    return _Tag(code, 16 if big else 4, arr.size, arr.tobytes())


def geotiff_tags(da: xr.DataArray, codec: Codec, *, tags: dict[str, str] | None,
                  band_descriptions: Sequence[str] | None) -> list[_Tag]:
    """GeoTIFF and GDAL tags for the main IFD, as GDAL writes them (via a 1×1 GeoTIFF)."""
    from rasterio.io import MemoryFile

    if band_descriptions is not None and len(band_descriptions) != codec.count:
        raise ValueError(f"{len(band_descriptions)} band descriptions for {codec.count} bands")
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=1, height=1, count=codec.count, dtype=codec.dtype,
                      crs=da.rio.crs, transform=da.rio.transform(), nodata=codec.nodata) as ds:
            if tags:
                ds.update_tags(**tags)
            for i, text in enumerate(band_descriptions or (), start=1):
                ds.set_band_description(i, text)
        buf = mem.read()
    return [t for t in _read_ifd(buf) if t.code in _GEO_TAGS]


def _read_ifd(buf: bytes) -> list[_Tag]:
    """The tags of the first IFD of a little-endian classic TIFF."""
    if buf[:4] != b"II*\x00":
        raise ValueError("expected a little-endian classic TIFF")
    (pos,) = struct.unpack_from("<I", buf, 4)
    (n,) = struct.unpack_from("<H", buf, pos)
    out = []
    for i in range(n):
        code, typ, count = struct.unpack_from("<HHI", buf, pos + 2 + 12 * i)
        size = _TYPE_SIZE[typ] * count
        at = pos + 2 + 12 * i + 8
        if size > 4:
            (at,) = struct.unpack_from("<I", buf, at)
        out.append(_Tag(code, typ, count, bytes(buf[at:at + size])))
    return out


def _ghost() -> bytes:
    """GDAL's structural metadata, byte for byte as its COG driver writes it."""
    body = ("LAYOUT=IFDS_BEFORE_DATA\nBLOCK_ORDER=ROW_MAJOR\nBLOCK_LEADER=SIZE_AS_UINT4\n"
            "BLOCK_TRAILER=LAST_4_BYTES_REPEATED\nKNOWN_INCOMPATIBLE_EDITION=NO\n ")
    ghost = f"GDAL_STRUCTURAL_METADATA_SIZE={len(body):06d} bytes\n{body}".encode("ascii")
    return ghost + b"\0" * (len(ghost) % 2)  # the first IFD starts on a word boundary


def _image_tags(layout: Layout, codec: Codec, level: int, offsets: np.ndarray,
                sizes: np.ndarray, geo: list[_Tag], big: bool) -> list[_Tag]:
    h, w = layout.dims(level)
    dt = np.dtype(codec.dtype)
    colour = codec.count - int(codec.alpha)
    rgb = colour == 3 and codec.dtype == "uint8"
    extra = [0] * (codec.count - (3 if rgb else 1))
    if codec.alpha:
        extra[-1] = 2  # unassociated alpha
    out = [
        _long(254, 0 if level == 0 else 1),
        _long(256, w),
        _long(257, h),
        _short(258, *[dt.itemsize * 8] * codec.count),
        _short(259, codec.compression),
        _short(262, 2 if rgb else 1),
        _short(277, codec.count),
        _short(284, 1),
        _short(322, codec.blocksize),
        _short(323, codec.blocksize),
        _offsets(324, offsets, big),
        _offsets(325, sizes, big),
        _short(339, *[{"u": 1, "i": 2, "f": 3}[dt.kind]] * codec.count),
    ]
    if codec.predictor != 1:
        out.append(_short(317, codec.predictor))
    if extra:
        out.append(_short(338, *extra))
    out += geo if level == 0 else [t for t in geo if t.code == 42113]
    return sorted(out, key=lambda t: t.code)


def _ifd_size(tags: list[_Tag], big: bool) -> int:
    inline = 8 if big else 4
    head = 8 + 20 * len(tags) + 8 if big else 2 + 12 * len(tags) + 4
    return head + sum(len(t.data) + len(t.data) % 2 for t in tags if len(t.data) > inline)


def _pack_ifd(tags: list[_Tag], at: int, next_ifd: int, big: bool) -> bytes:
    inline = 8 if big else 4
    head = bytearray(struct.pack("<Q" if big else "<H", len(tags)))
    extra = bytearray()
    data_at = at + (8 + 20 * len(tags) + 8 if big else 2 + 12 * len(tags) + 4)
    for t in tags:
        if len(t.data) > inline:
            value = struct.pack("<Q" if big else "<I", data_at + len(extra))
            extra += t.data + b"\0" * (len(t.data) % 2)
        else:
            value = t.data.ljust(inline, b"\0")
        head += struct.pack("<HHQ" if big else "<HHI", t.code, t.type, t.count) + value
    head += struct.pack("<Q" if big else "<I", next_ifd)
    return bytes(head + extra)


def assemble(path: Path, spool: BinaryIO, index: TileIndex, layout: Layout, codec: Codec,
              geo: list[_Tag], reporter: Reporter, stop: Stop | None) -> int:
    """Write the COG from the spooled tiles; returns its size in bytes."""
    spool.flush()
    levels = range(layout.nlevels + 1)
    if any((index.offsets[lv] < 0).any() for lv in levels):
        raise RuntimeError("a tile is missing from the spool")  # a bug, not a user error
    framed = sum(int(index.sizes[lv].sum()) + 8 * index.sizes[lv].size for lv in levels)
    for big in (False, True):
        ghost = _ghost()
        header = 16 if big else 8
        placeholder = [_image_tags(layout, codec, lv, index.sizes[lv], index.sizes[lv], geo, big)
                       for lv in levels]
        ifd_at = [header + len(ghost)]
        for tags in placeholder:
            ifd_at.append(ifd_at[-1] + _ifd_size(tags, big))
        data_start = ifd_at[-1]
        if big or data_start + framed <= BIGTIFF_THRESHOLD:
            break
    # tile data from the smallest level to the full resolution, row-major inside a level
    positions: list[np.ndarray] = [np.empty(0)] * len(levels)
    at = data_start
    for lv in reversed(levels):
        frames = index.sizes[lv].ravel() + 8
        starts = at + np.concatenate(([0], np.cumsum(frames)[:-1]))
        positions[lv] = (starts + 4).reshape(index.sizes[lv].shape)
        at += int(frames.sum())
    with open(path, "wb") as out:
        if big:
            out.write(b"II+\x00" + struct.pack("<HHQ", 8, 0, ifd_at[0]))
        else:
            out.write(b"II*\x00" + struct.pack("<I", ifd_at[0]))
        out.write(ghost)
        for lv in levels:
            tags = _image_tags(layout, codec, lv, positions[lv], index.sizes[lv], geo, big)
            out.write(_pack_ifd(tags, ifd_at[lv], ifd_at[lv + 1] if lv < layout.nlevels else 0,
                                big))
        assert out.tell() == data_start
        ranges = [(int(o), int(s) + 8) for lv in reversed(levels)
                  for o, s in zip(index.offsets[lv].ravel(), index.sizes[lv].ravel())]
        _copy_ranges(spool, out, _merge(ranges), reporter, stop, framed)
        assert out.tell() == at
    return at


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, length in ranges:
        if merged and merged[-1][0] + merged[-1][1] == start:
            merged[-1] = (merged[-1][0], merged[-1][1] + length)
        else:
            merged.append((start, length))
    return merged


def _copy_ranges(src: BinaryIO, dst: BinaryIO, ranges: list[tuple[int, int]],
                 reporter: Reporter, stop: Stop | None, total: int) -> None:
    dst.flush()
    fin, fout = src.fileno(), dst.fileno()
    kernel = hasattr(os, "copy_file_range")
    done = 0
    last = time.monotonic()
    for start, length in ranges:
        while length:
            n = 0
            if kernel:
                try:
                    n = os.copy_file_range(fin, fout, min(length, 1 << 30), start)
                except OSError:
                    kernel = False
            if not n:
                chunk = os.pread(fin, min(length, _COPY_CHUNK), start)
                if not chunk:
                    raise RuntimeError("the tile spool is shorter than its index")
                n = os.write(fout, chunk)
            start += n
            length -= n
            done += n
        if time.monotonic() - last > WAIT_SLICE:
            last = time.monotonic()
            reporter.check_cancelled()
            if stop is not None:
                stop.check()
            reporter.progress(done / max(1, total), "assembling")
