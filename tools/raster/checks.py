"""What is wrong with a raster file, said with the name the user knows it by.

Every message names the raster as its caller names it (a tool passes the dataset-relative
path, e.g. ``flight1/ortho.tif``), never the server's path to the file:

- :class:`RasterUnreadable`: GDAL cannot open the file at all ("x.tif is not a raster GDAL
  can read");
- :class:`RasterDamaged`: GDAL opens it but its pixels cannot all be read ("x.tif is
  truncated or damaged: block 12,7 cannot be read: ...").

Two places find damage. :func:`check_blocks` is the cheap check made whenever a header is
read (:func:`tools.raster.read_header`): for a TIFF it compares the file's size with
the end of the tiles or strips GDAL knows about (``BLOCK_OFFSET_x_y``/``BLOCK_SIZE_x_y`` of
the ``TIFF`` metadata domain), which finds a truncated file without reading any pixel.
Damage inside the file (a tile whose bytes do not decode) is found only by reading it:
:func:`read_error` turns GDAL's read failure into a :class:`RasterDamaged` naming the block
(``x,y`` in blocks, GDAL's order), and :func:`checked_read` makes any read that way. Both are
:class:`tools.contract.InvalidParams`, so before queueing they are a 400 and in a run the
task fails with the same message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any, TypeVar

from tools.contract import InvalidParams

# Blocks whose offsets are compared with the file size, at most: every block of a raster up
# to 16384² in 128² tiles; for more, the last ones of each band (where writers append).
MAX_CHECKED_BLOCKS = 1 << 14
_GDAL_BLOCK = re.compile(r"X offset (\d+), Y offset (\d+)")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/[^\s,:;'\"]+")
T = TypeVar("T")


class RasterUnreadable(InvalidParams):
    """GDAL cannot open the file as a raster."""


class RasterDamaged(InvalidParams):
    """GDAL opens the raster but cannot read (some of) its pixels."""


def unreadable(name: str) -> RasterUnreadable:
    return RasterUnreadable(f"{name} is not a raster GDAL can read")


def check_blocks(src: Any, name: str) -> None:
    """Raise :class:`RasterDamaged` when a block of an open TIFF ends past the end of the
    file. Cheap: block offsets come from the header, no pixel is read."""
    try:
        size = os.path.getsize(src.name)
    except (OSError, TypeError):
        return  # not a local file (a VSI path): nothing to compare with
    rows, cols = src.block_shapes[0]
    nx, ny = -(-src.width // cols), -(-src.height // rows)
    bands = range(1, src.count + 1) if _band_interleaved(src) else range(1, min(src.count, 1) + 1)
    total = nx * ny
    first = max(0, total - max(1, MAX_CHECKED_BLOCKS // len(bands or (1,))))
    for band in bands:
        for i in range(first, total):
            x, y = i % nx, i // nx
            offset = src.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=band)
            if offset is None:
                return  # not a TIFF, or GDAL does not say: nothing to check
            length = src.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=band)
            end = int(offset) + int(length or 0)
            if int(offset) and end > size:
                raise RasterDamaged(
                    f"{name} is truncated or damaged: block {x},{y} cannot be read "
                    f"(its data ends at byte {end:,}; the file has {size:,} bytes)"
                )


def _band_interleaved(src: Any) -> bool:
    interleaving = getattr(src, "interleaving", None)
    return getattr(interleaving, "value", None) == "BAND" and src.count > 1


def read_error(name: str, exc: BaseException) -> RasterDamaged:
    """The :class:`RasterDamaged` for GDAL's read failure ``exc`` (a RasterioIOError): the
    block GDAL names and its deepest reason, with any file path taken out."""
    messages = []
    cause: BaseException | None = exc
    while cause is not None and len(messages) < 10:
        messages.append(str(cause.args[-1]) if getattr(cause, "args", None) else str(cause))
        cause = cause.__cause__ or cause.__context__
    block = next((m for m in map(_GDAL_BLOCK.search, messages) if m), None)
    where = f"block {block.group(1)},{block.group(2)}" if block else "a block"
    reason = _scrub(messages[-1]) if len(messages) > 1 else ""
    return RasterDamaged(
        f"{name} is truncated or damaged: {where} cannot be read"
        + (f" ({reason})" if reason else "")
    )


def _scrub(message: str) -> str:
    """A GDAL message without file paths (they may be the server's)."""
    return " ".join(_ABSOLUTE_PATH.sub("…", message).split()).rstrip(".")


def checked_read(name: str, read: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``read(*args, **kwargs)``, with GDAL's read failures turned into
    :class:`RasterDamaged` — the way every pixel read of a tool is made.

    The error is raised after the ``except`` block, so it carries no ``__context__``: Dask
    pickles an exception with its whole chain (tblib), GDAL's errors do not unpickle, and
    Dask would then send a bare ``Exception(repr)`` instead of this clean error."""
    from rasterio.errors import RasterioIOError

    try:
        return read(*args, **kwargs)
    except RasterioIOError as exc:
        error = read_error(name, exc)
    raise error


def read_window(array: Any, key: Any, *, name: str) -> Any:
    """``array[key]`` as numpy, for ``dask.array.from_array(getitem=...)``: the one place
    the chunks of :func:`tools.raster.open_raster` are read."""
    import numpy as np

    return checked_read(name, lambda: np.asarray(array[key]))
