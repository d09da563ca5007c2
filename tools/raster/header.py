"""What a raster's header says, read without its pixels: :class:`RasterHeader`.

:func:`read_header` reads it with rasterio (metadata only) and checks that the raster's
blocks lie inside the file; :func:`header_of` gives the header of an array from
:func:`tools.raster.open.open_raster` (or one made from a plain array's attributes). The
header names the alpha band, the data bands and the sensor the metadata match
(:mod:`tools.raster.sensors`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from tools.raster import checks as raster_checks
from tools.raster import sensors

if TYPE_CHECKING:
    import xarray as xr

_GDAL_TYPES = {
    "uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16",
    "uint32": "UInt32", "int32": "Int32", "uint64": "UInt64", "int64": "Int64",
    "float32": "Float32", "float64": "Float64",
}
# Domains that hold no sensor facts (DERIVED_SUBDATASETS repeats the file's path).
_SKIPPED_DOMAINS = frozenset(("DERIVED_SUBDATASETS", "IMAGE_STRUCTURE"))


@dataclass(frozen=True, kw_only=True)
class RasterHeader:
    """What a raster's header says (no pixels read).

    ``metadata`` holds ``KEY=VALUE`` items of the dataset's default and named metadata
    domains (but DERIVED_SUBDATASETS and IMAGE_STRUCTURE) and of every band: what sensor
    detection matches its patterns against.
    """

    path: str
    width: int
    height: int
    count: int
    dtype: str  # numpy name of band 1's type
    name: str = ""  # how messages name the raster (a dataset path), never the server's path
    block_shape: tuple[int, int] = (256, 256)  # (rows, cols) of band 1
    nodatavals: tuple[float | None, ...] = ()
    colorinterp: tuple[str, ...] = ()
    descriptions: tuple[str | None, ...] = ()
    metadata: tuple[str, ...] = field(default=(), repr=False)

    @property
    def alpha_band(self) -> int | None:
        """The 1-based alpha band, or None: the band described as ``alpha``, else the one
        whose colour interpretation is alpha unless its description names a spectral band
        (GDAL marks the 4th band of a 4-band Byte TIFF alpha, even a NIR band)."""
        for i, description in enumerate(self.descriptions):
            if description and description.strip().lower() == "alpha":
                return i + 1
        for i, name in enumerate(self.colorinterp):
            described = self.descriptions[i] if i < len(self.descriptions) else None
            if name == "alpha" and not (described and sensors.band_letter(described)):
                return i + 1
        return None

    @property
    def data_bands(self) -> tuple[int, ...]:
        """The 1-based bands that are not the alpha band."""
        return tuple(b for b in range(1, self.count + 1) if b != self.alpha_band)

    @property
    def is_byte(self) -> bool:
        return self.dtype == "uint8"

    @property
    def traits(self) -> sensors.RasterTraits:
        return sensors.RasterTraits(
            band_count=self.count,
            data_type=_GDAL_TYPES.get(self.dtype, self.dtype),
            metadata=self.metadata,
            descriptions=self.descriptions,
            colorinterp=self.colorinterp,
            alpha_band=self.alpha_band,
        )

    @cached_property
    def sensor(self) -> sensors.SensorMatch | None:
        return sensors.detect_sensor(self.traits)

    def nodata(self, band: int) -> float | None:
        """The nodata value of a 1-based band, or None."""
        return self.nodatavals[band - 1] if band - 1 < len(self.nodatavals) else None


def read_header(path: str | Path, *, name: str | None = None) -> RasterHeader:
    """Read a raster's header with rasterio (metadata only) and check its blocks lie
    inside the file (:func:`tools.raster.checks.check_blocks`).

    ``name`` is how errors name the file (a tool passes the dataset path; default: the
    file name). Raises :class:`~tools.raster.checks.RasterUnreadable` when GDAL cannot open
    it, :class:`~tools.raster.checks.RasterDamaged` when it is truncated.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    label = name or Path(path).name
    with warnings.catch_warnings(), rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="TRUE"):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            src = rasterio.open(path)
        except RasterioError:
            raise raster_checks.unreadable(label) from None
        with src:
            metadata = [f"{k}={v}" for k, v in src.tags().items()]
            for namespace in src.tag_namespaces():
                if namespace in _SKIPPED_DOMAINS:
                    continue
                metadata += [f"{k}={v}" for k, v in src.tags(ns=namespace).items()]
            for band in range(1, src.count + 1):
                metadata += [f"{k}={v}" for k, v in src.tags(band).items()]
            if not src.count:
                raise raster_checks.RasterUnreadable(f"{label} has no bands")
            raster_checks.check_blocks(src, label)
            rows, cols = src.block_shapes[0]
            return RasterHeader(
                path=str(path),
                name=label,
                width=src.width,
                height=src.height,
                count=src.count,
                dtype=str(src.dtypes[0]),
                block_shape=(int(rows), int(cols)),
                nodatavals=tuple(None if v is None else float(v) for v in src.nodatavals),
                colorinterp=tuple(ci.name for ci in src.colorinterp),
                descriptions=tuple(d or None for d in src.descriptions),
                metadata=tuple(metadata),
            )


def header_of(da: xr.DataArray) -> RasterHeader:
    """The header of a DataArray from :func:`open_raster`, or one made from its attrs."""
    header = da.attrs.get("raster_header")
    if isinstance(header, RasterHeader):
        return header
    count = da.sizes.get("band", 1)
    fill = da.attrs.get("_FillValue", da.rio.nodata if hasattr(da, "rio") else None)
    return RasterHeader(
        path="",
        width=da.sizes["x"],
        height=da.sizes["y"],
        count=count,
        dtype=str(da.dtype),
        nodatavals=(None if fill is None else float(fill),) * count,
    )
