"""The one way the project writes a Cloud-Optimized GeoTIFF: :func:`write_cog`.

How it works, and why this and not GDAL's COG driver or odc-geo, is told in
:mod:`tools.raster.cog._write`.
"""

from tools.raster.cog._write import CogInfo, Resampling, Stop, write_cog

__all__ = ["CogInfo", "Resampling", "Stop", "write_cog"]
