"""Rasters in and out: the one way to open a raster and the one way to write a COG.

- :mod:`tools.raster.header`: :class:`RasterHeader`, what a raster's header says (no pixels
  read), from :func:`read_header` or, for an opened array, :func:`header_of`;
- :mod:`tools.raster.open`: :func:`open_raster`, a raster as a lazy ``(band, y, x)``
  DataArray chunked on its blocks (align-raster, build, merge-multispectral and
  raster-export all open rasters with it);
- :mod:`tools.raster.checks`: what is wrong with a raster file (:class:`RasterUnreadable`,
  :class:`RasterDamaged`), said with the name the user knows it by;
- :mod:`tools.raster.sensors`: the sensor profiles a header is recognised by (band names,
  presets);
- :mod:`tools.raster.cog`: :func:`write_cog`, a Cloud-Optimized GeoTIFF from a lazy array,
  computed in parallel pieces on the cluster the caller runs on.
"""

from tools.raster import sensors
from tools.raster.checks import RasterDamaged, RasterUnreadable
from tools.raster.cog import CogInfo, write_cog
from tools.raster.header import RasterHeader, header_of, read_header
from tools.raster.open import DEFAULT_CHUNK_PX, chunk_shape, open_raster

__all__ = [
    "DEFAULT_CHUNK_PX",
    "CogInfo",
    "RasterDamaged",
    "RasterHeader",
    "RasterUnreadable",
    "chunk_shape",
    "header_of",
    "open_raster",
    "read_header",
    "sensors",
    "write_cog",
]
