"""The type and properties of a dataset entry, detected on every upload and by rescans.

:func:`detect` (:mod:`tools.detect.entry`) reads a file's name and header; point clouds and
vector files are opened by :mod:`tools.detect.geodata`, which is imported only when such a
file is met (it loads laspy and pyogrio). Importing this package loads neither rasterio nor
Pillow: the service imports it on every upload path.
"""

from tools.detect.entry import ENTRY_TYPES, Detected, detect

__all__ = ["ENTRY_TYPES", "Detected", "detect"]
