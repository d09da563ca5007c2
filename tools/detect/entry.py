"""Detect the type and properties of a dataset entry (run on every upload and by rescans).

``detect(path)`` returns a :class:`Detected` (``type`` is one of :data:`ENTRY_TYPES`,
``properties`` holds only JSON-serialisable values). It never raises for a file it cannot
read, and it reads headers only: rasterio ``open`` reads metadata, Pillow ``open`` is lazy,
and WebP files are walked chunk by chunk instead of being loaded whole.

Rules, first match wins:

1. A directory is ``"directory"`` (whatever its name).
2. The type comes from the file name, matched case-insensitively on the longest known
   suffix (``a.TAR.GZ`` is an archive): las/laz → pointcloud; geojson/gpkg/shp/kml/fgb →
   vector; zip/tar/tgz/tar.gz/tar.bz2/tar.xz/7z → archive; md → markdown; obj/gltf/glb/ply
   → model; mp4/mov/avi/mkv/webm → video. Only point clouds and vectors among these are
   opened, for their header properties (:mod:`tools.detect.geodata`). Unknown → generic.
3. A picture (jpg/jpeg/tif/tiff/png/dng/webp) is opened:

   - a ``.tif``/``.tiff`` whose dataset has a CRS (``rasterio`` ``src.crs``; GCP-only
     georeferencing does not count) is a ``"georaster"``; JPEG/PNG/WebP/DNG never are, even
     with a world file;
   - otherwise it is a picture: ``"panorama"`` when its width is exactly twice its height and
     at least 2000 px, or when its embedded XMP says ``ProjectionType`` is
     ``equirectangular`` (GPano; EXIF has no such tag, so only XMP is read); else
     ``"geoimage"`` when EXIF carries a valid GPS latitude and longitude; else ``"image"``.
     A panorama with GPS stays a panorama and keeps its ``gps`` property.

Properties:

- georaster: ``crs`` ("EPSG:n", or WKT when there is no EPSG code), ``width``, ``height``,
  ``bandCount``, ``dtype`` (of band 1), ``nodata`` (None, a number, or the string "nan" /
  "inf" / "-inf"), ``transform`` (GDAL order), ``bounds`` ([minx, miny, maxx, maxy] of the
  four corners, in the raster CRS), ``footprint`` (GeoJSON Polygon in EPSG:4326, edges
  densified, counter-clockwise; None when the CRS cannot be transformed to EPSG:4326),
  ``bandNames`` (None when no band has a description), ``blockSize`` ([w, h] of band 1),
  ``compression`` (GDAL's name, e.g. "LZW", or None).
- image, geoimage, panorama: ``width``, ``height``, ``make``, ``model``, ``captureTime``
  (ISO-8601 from EXIF DateTimeOriginal, with OffsetTimeOriginal when present, else None),
  plus ``gps`` = {latitude, longitude, altitude} (floats, S/W negative, altitude None when
  absent, negative below sea level) whenever GPS is present.

- pointcloud, vector: see :mod:`tools.detect.geodata`; a file its library cannot read keeps
  its type with ``properties = {"error": "<short message>"}``.

Failures: a picture Pillow cannot read (corrupt, truncated, wrong content, float or 4-band
uint16 TIFF, too many pixels for Pillow's bomb guard) falls back to rasterio for width and
height, without EXIF. If that fails too, the entry is ``"image"`` (a TIFF included: a TIFF
that cannot be read cannot be recognised as a georaster) with ``properties =
{"error": "<short message>"}``. The message never contains the file's directory.

Known limits: for DNG the size is that of the first IFD (often the preview); PNG EXIF is
read only from an ``eXIf`` chunk placed before the image data; footprints crossing the
antimeridian are not split.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from PIL import Image as PILImage
    from rasterio.crs import CRS
    from rasterio.io import DatasetReader

ENTRY_TYPES = (
    "directory",
    "generic",
    "image",
    "geoimage",
    "georaster",
    "pointcloud",
    "vector",
    "model",
    "markdown",
    "video",
    "panorama",
    "archive",
)

_SUFFIX_TYPES: dict[str, str] = {
    **dict.fromkeys((".jpg", ".jpeg", ".png", ".dng", ".webp", ".tif", ".tiff"), "image"),
    **dict.fromkeys((".las", ".laz"), "pointcloud"),
    **dict.fromkeys((".geojson", ".gpkg", ".shp", ".kml", ".fgb"), "vector"),
    **dict.fromkeys(
        (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz", ".7z"), "archive"
    ),
    ".md": "markdown",
    **dict.fromkeys((".obj", ".gltf", ".glb", ".ply"), "model"),
    **dict.fromkeys((".mp4", ".mov", ".avi", ".mkv", ".webm"), "video"),
}
_SUFFIXES_LONGEST_FIRST = sorted(_SUFFIX_TYPES, key=len, reverse=True)
_GEODATA_TYPES = frozenset(("pointcloud", "vector"))
_TIFF_SUFFIXES = frozenset((".tif", ".tiff"))

_PANORAMA_MIN_WIDTH = 2000
_FOOTPRINT_SEGMENTS_PER_EDGE = 8
_FOOTPRINT_DECIMALS = 8
_ERROR_MAX_CHARS = 200
_WEBP_METADATA_MAX_BYTES = 4 << 20  # larger EXIF/XMP chunks are skipped, not read
# Pillow formats tried (JPEG also yields MPO); WebP is read by _read_webp_header instead.
_PIL_FORMATS = ("JPEG", "PNG", "TIFF")
_EQUIRECTANGULAR = re.compile(rb"ProjectionType\s*(?:=\s*[\"']|>)\s*equirectangular", re.I)
_UTC_OFFSET = re.compile(r"^[+-]\d{2}:\d{2}$")

# EXIF / TIFF tags
_TAG_MAKE = 0x010F
_TAG_MODEL = 0x0110
_IFD_EXIF = 0x8769
_IFD_GPS = 0x8825
_TAG_DATETIME_ORIGINAL = 0x9003
_TAG_OFFSET_TIME_ORIGINAL = 0x9011
_GPS_LATITUDE_REF, _GPS_LATITUDE = 1, 2
_GPS_LONGITUDE_REF, _GPS_LONGITUDE = 3, 4
_GPS_ALTITUDE_REF, _GPS_ALTITUDE = 5, 6


@dataclass(frozen=True, kw_only=True)
class Detected:
    """The detected type of an entry and its JSON-serialisable properties."""

    type: str
    properties: dict[str, Any]

    def __post_init__(self) -> None:
        if self.type not in ENTRY_TYPES:
            raise ValueError(f"unknown entry type {self.type!r}")


@dataclass(frozen=True, kw_only=True)
class _Picture:
    """What was read from a picture's header."""

    width: int
    height: int
    make: str | None = None
    model: str | None = None
    capture_time: str | None = None
    gps: dict[str, float | None] | None = None
    equirectangular: bool = False


@dataclass(frozen=True, kw_only=True)
class _RasterHeader:
    """What rasterio read: the size, and the georaster properties when there is a CRS."""

    width: int
    height: int
    georaster: dict[str, Any] | None


def detect(path: Path) -> Detected:
    """Detect the type and properties of the entry at ``path`` (see the module rules)."""
    path = Path(path)
    if path.is_dir():
        return Detected(type="directory", properties={})
    suffix = _matching_suffix(path.name)
    entry_type = _SUFFIX_TYPES.get(suffix or "", "generic")
    if entry_type in _GEODATA_TYPES:
        return _detect_geodata(path, entry_type)
    if entry_type != "image":
        return Detected(type=entry_type, properties={})
    if suffix in _TIFF_SUFFIXES:
        return _detect_tiff(path)
    return _detect_picture(path)


def _detect_geodata(path: Path, entry_type: str) -> Detected:
    """A point cloud or vector file: its header properties, or an ``error`` property."""
    from tools.detect import geodata

    read = (
        geodata.pointcloud_properties if entry_type == "pointcloud"
        else geodata.vector_properties
    )
    try:
        properties = read(path)
    except Exception as exc:  # any read failure becomes an error property
        properties = {"error": _short_error(path, exc)}
    return Detected(type=entry_type, properties=properties)


def _matching_suffix(name: str) -> str | None:
    """Return the longest known suffix of ``name`` (lower case), or None."""
    lower = name.lower()
    for suffix in _SUFFIXES_LONGEST_FIRST:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return suffix
    return None


# --- picture detection -----------------------------------------------------------------


def _detect_tiff(path: Path) -> Detected:
    try:
        header = _read_raster_header(path)
    except Exception as exc:  # any read failure becomes an error property
        return _unreadable(path, exc)
    if header.georaster is not None:
        return Detected(type="georaster", properties=header.georaster)
    try:
        picture = _read_picture(path)
    except Exception:  # e.g. float or 4-band uint16 TIFF: Pillow cannot
        picture = _Picture(width=header.width, height=header.height)
    return _picture_detected(picture)


def _detect_picture(path: Path) -> Detected:
    try:
        picture = _read_picture(path)
    except Exception as pillow_error:
        try:
            header = _read_raster_header(path)
        except Exception:  # report Pillow's error, the more telling one
            return _unreadable(path, pillow_error)
        picture = _Picture(width=header.width, height=header.height)
    return _picture_detected(picture)


def _picture_detected(picture: _Picture) -> Detected:
    properties: dict[str, Any] = {
        "width": picture.width,
        "height": picture.height,
        "make": picture.make,
        "model": picture.model,
        "captureTime": picture.capture_time,
    }
    if picture.gps is not None:
        properties["gps"] = picture.gps
    if _is_panorama(picture.width, picture.height, equirectangular=picture.equirectangular):
        entry_type = "panorama"
    elif picture.gps is not None:
        entry_type = "geoimage"
    else:
        entry_type = "image"
    return Detected(type=entry_type, properties=properties)


def _is_panorama(width: int, height: int, *, equirectangular: bool = False) -> bool:
    """The panorama rule: XMP says equirectangular, or exactly 2:1 and >= 2000 px wide."""
    return equirectangular or (width == 2 * height and width >= _PANORAMA_MIN_WIDTH)


def _unreadable(path: Path, exc: Exception) -> Detected:
    return Detected(type="image", properties={"error": _short_error(path, exc)})


def _short_error(path: Path, exc: Exception) -> str:
    """A one-line message without the file's directory (it may be exposed to users)."""
    message = str(exc).replace(str(path), path.name) or type(exc).__name__
    message = " ".join(message.split())
    if len(message) > _ERROR_MAX_CHARS:
        message = message[: _ERROR_MAX_CHARS - 1] + "…"
    return message


# --- Pillow: size, EXIF, XMP --------------------------------------------------------------


def _read_picture(path: Path) -> _Picture:
    """Read size, EXIF and XMP of a picture; raises when it cannot be read."""
    # Importing the three plugins registers them, so Pillow never loads all the others.
    from PIL import Image, JpegImagePlugin, PngImagePlugin, TiffImagePlugin  # noqa: F401

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.simplefilter("ignore", UserWarning)  # Pillow's "corrupt EXIF" warnings
        if _is_webp(path):
            return _read_webp(path)
        with Image.open(path, formats=_PIL_FORMATS) as image:
            width, height = image.size
            return _picture_from(width, height, _header_exif(image), image.info.get("xmp"))


def _header_exif(image: PILImage.Image) -> PILImage.Exif:
    """The image's EXIF, without decoding pixels (PNG ``getexif`` would load the image)."""
    from PIL import Image

    if image.format == "PNG" and "exif" not in image.info:
        return Image.Exif()
    return image.getexif()


def _picture_from(width: int, height: int, exif: PILImage.Exif, xmp: Any) -> _Picture:
    exif_ifd = exif.get_ifd(_IFD_EXIF)
    return _Picture(
        width=int(width),
        height=int(height),
        make=_text(exif.get(_TAG_MAKE)),
        model=_text(exif.get(_TAG_MODEL)),
        capture_time=_capture_time(
            exif_ifd.get(_TAG_DATETIME_ORIGINAL), exif_ifd.get(_TAG_OFFSET_TIME_ORIGINAL)
        ),
        gps=_gps_from_ifd(exif.get_ifd(_IFD_GPS)),
        equirectangular=_is_equirectangular(xmp),
    )


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    return value.strip("\x00 \t\r\n") or None


def _capture_time(original: Any, offset: Any) -> str | None:
    """ISO-8601 from EXIF ``YYYY:MM:DD HH:MM:SS`` (plus ``+HH:MM`` offset when valid)."""
    text = _text(original)
    if text is None:
        return None
    try:
        moment = datetime.strptime(text[:19].replace("-", ":"), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    iso = moment.isoformat()
    offset_text = _text(offset)
    if offset_text is not None and _UTC_OFFSET.match(offset_text):
        iso += offset_text
    return iso


def _gps_from_ifd(gps: dict[int, Any]) -> dict[str, float | None] | None:
    """Decode an EXIF GPS IFD to ``{latitude, longitude, altitude}``, or None if unusable."""
    latitude = _degrees(gps.get(_GPS_LATITUDE))
    longitude = _degrees(gps.get(_GPS_LONGITUDE))
    if latitude is None or longitude is None:
        return None
    if _ref(gps.get(_GPS_LATITUDE_REF)) == "S":
        latitude = -abs(latitude)
    if _ref(gps.get(_GPS_LONGITUDE_REF)) == "W":
        longitude = -abs(longitude)
    if not (-90.0 <= latitude <= 90.0 and -180.0 <= longitude <= 180.0):
        return None
    altitude = _number(gps.get(_GPS_ALTITUDE))
    if altitude is not None and _below_sea_level(gps.get(_GPS_ALTITUDE_REF)):
        altitude = -abs(altitude)
    return {"latitude": latitude, "longitude": longitude, "altitude": altitude}


def _degrees(value: Any) -> float | None:
    """Degrees from EXIF (degrees, minutes, seconds) rationals, or a single value."""
    parts = value if isinstance(value, tuple | list) else (value,)
    numbers = [_number(part) for part in parts[:3]]
    if not numbers or any(number is None for number in numbers):
        return None
    return sum(number / 60**index for index, number in enumerate(numbers))  # type: ignore[operator]


def _number(value: Any) -> float | None:
    """A finite float from a rational/number, else None (0/0 rationals are NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if math.isfinite(number) else None


def _ref(value: Any) -> str:
    return (_text(value) or "")[:1].upper()


def _below_sea_level(value: Any) -> bool:
    if isinstance(value, bytes):
        return value[:1] == b"\x01"
    return value == 1


def _is_equirectangular(xmp: Any) -> bool:
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8", "replace")
    return isinstance(xmp, bytes) and _EQUIRECTANGULAR.search(xmp) is not None


# --- WebP: walk the RIFF chunks, seeking over image data -----------------------------------


def _is_webp(path: Path) -> bool:
    with path.open("rb") as fp:
        head = fp.read(12)
    return len(head) == 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def _read_webp(path: Path) -> _Picture:
    from PIL import Image

    with path.open("rb") as fp:
        width, height, exif_bytes, xmp = _read_webp_header(fp)
    exif = Image.Exif()
    if exif_bytes:
        exif.load(exif_bytes)
    return _picture_from(width, height, exif, xmp)


def _read_webp_header(fp: BinaryIO) -> tuple[int, int, bytes | None, bytes | None]:
    """Return (width, height, EXIF bytes, XMP bytes) of a WebP without reading the bitmap."""
    fp.seek(12)
    size: tuple[int, int] | None = None
    exif: bytes | None = None
    xmp: bytes | None = None
    while chunk_header := fp.read(8):
        if len(chunk_header) < 8:
            break
        fourcc, length = chunk_header[:4], int.from_bytes(chunk_header[4:], "little")
        start = fp.tell()
        if fourcc in (b"VP8X", b"VP8 ", b"VP8L") and size is None:
            size = _webp_size(fourcc, fp.read(min(length, 10)))
        elif fourcc == b"EXIF" and length <= _WEBP_METADATA_MAX_BYTES:
            exif = fp.read(length)
        elif fourcc == b"XMP " and length <= _WEBP_METADATA_MAX_BYTES:
            xmp = fp.read(length)
        fp.seek(start + length + (length & 1))
    if size is None:
        raise ValueError("WebP without a readable image size")
    return size[0], size[1], exif, xmp


def _webp_size(fourcc: bytes, payload: bytes) -> tuple[int, int] | None:
    if fourcc == b"VP8X" and len(payload) >= 10:
        return (
            int.from_bytes(payload[4:7], "little") + 1,
            int.from_bytes(payload[7:10], "little") + 1,
        )
    if fourcc == b"VP8 " and len(payload) >= 10 and payload[3:6] == b"\x9d\x01\x2a":
        return (
            int.from_bytes(payload[6:8], "little") & 0x3FFF,
            int.from_bytes(payload[8:10], "little") & 0x3FFF,
        )
    if fourcc == b"VP8L" and len(payload) >= 5 and payload[0] == 0x2F:
        bits = int.from_bytes(payload[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


# --- rasterio: georaster properties ---------------------------------------------------------


def _read_raster_header(path: Path) -> _RasterHeader:
    """Open ``path`` with rasterio (metadata only); raises when GDAL cannot open it."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    # TRUE: probe sidecars (.aux.xml, .tfw) by name instead of listing big dataset folders.
    with warnings.catch_warnings(), rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="TRUE"):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            georaster = _georaster_properties(src) if src.crs else None
            return _RasterHeader(width=src.width, height=src.height, georaster=georaster)


def _georaster_properties(src: DatasetReader) -> dict[str, Any]:
    corners = _map_points(src, [(0, 0), (src.width, 0), (src.width, src.height), (0, src.height)])
    xs = [x for x, _ in corners]
    ys = [y for _, y in corners]
    block_rows, block_cols = src.block_shapes[0]
    return {
        "crs": _crs_string(src.crs),
        "width": src.width,
        "height": src.height,
        "bandCount": src.count,
        "dtype": str(src.dtypes[0]),
        "nodata": _json_nodata(src.nodata, integer=src.dtypes[0].startswith(("int", "uint"))),
        "transform": [float(value) for value in src.transform.to_gdal()],
        "bounds": [min(xs), min(ys), max(xs), max(ys)],
        "footprint": _footprint(src),
        "bandNames": _band_names(src.descriptions),
        "blockSize": [int(block_cols), int(block_rows)],
        "compression": src.tags(ns="IMAGE_STRUCTURE").get("COMPRESSION"),
    }


def _crs_string(crs: CRS) -> str:
    """``EPSG:<code>`` when the CRS has one, else its WKT."""
    try:
        epsg = crs.to_epsg()
    except Exception:  # no EPSG lookup possible: fall back to WKT
        epsg = None
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def _json_nodata(value: float | None, *, integer: bool = False) -> float | int | str | None:
    """Nodata as JSON: None, an int (integer bands), a float, or "nan"/"inf"/"-inf"."""
    if value is None:
        return None
    number = float(value)
    if not math.isfinite(number):
        return str(number)  # "nan", "inf", "-inf"
    return int(number) if integer and number.is_integer() else number


def _band_names(descriptions: tuple[str | None, ...]) -> list[str | None] | None:
    names = [description or None for description in descriptions]
    return names if any(names) else None


def _map_points(src: DatasetReader, pixels: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Apply the geotransform to (column, row) pixel corners (rotation included)."""
    t = src.transform
    return [(t.c + t.a * col + t.b * row, t.f + t.d * col + t.e * row) for col, row in pixels]


def _footprint(src: DatasetReader) -> dict[str, Any] | None:
    """The raster outline, densified, as a counter-clockwise GeoJSON Polygon in EPSG:4326."""
    from rasterio.warp import transform as warp_transform

    xs, ys = zip(*_map_points(src, _pixel_ring(src.width, src.height)), strict=True)
    try:
        lons, lats = warp_transform(src.crs, "EPSG:4326", list(xs), list(ys))
    except Exception:  # a CRS that cannot reach WGS 84: no footprint
        return None
    if not all(math.isfinite(v) for v in (*lons, *lats)):
        return None
    ring = [
        [round(lon, _FOOTPRINT_DECIMALS), round(lat, _FOOTPRINT_DECIMALS)]
        for lon, lat in zip(lons, lats, strict=True)
    ]
    if _signed_area(ring) < 0:
        ring.reverse()
    return {"type": "Polygon", "coordinates": [ring]}


def _pixel_ring(width: int, height: int) -> list[tuple[float, float]]:
    """A closed ring around the pixel grid, ``_FOOTPRINT_SEGMENTS_PER_EDGE`` per edge."""
    n = _FOOTPRINT_SEGMENTS_PER_EDGE
    corners = [(0, 0), (width, 0), (width, height), (0, height), (0, 0)]
    ring: list[tuple[float, float]] = []
    for (c0, r0), (c1, r1) in zip(corners, corners[1:]):
        ring.extend((c0 + (c1 - c0) * i / n, r0 + (r1 - r0) * i / n) for i in range(n))
    ring.append(corners[0])
    return ring


def _signed_area(ring: list[list[float]]) -> float:
    """Shoelace area: positive for a counter-clockwise ring."""
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:])) / 2
