"""Tests for ``tools.detect``: entry type and properties detection on real files.

Every file is generated in ``tmp_path``: GeoTIFFs with rasterio, JPEG/PNG/WebP with
Pillow (EXIF built with ``Image.Exif``), other types as arbitrary bytes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from PIL import Image
from PIL.TiffImagePlugin import IFDRational
from rasterio.errors import NotGeoreferencedWarning

from tests import harness
from tools.detect import ENTRY_TYPES, Detected, detect

REPO_ROOT = Path(__file__).resolve().parents[1]

UTM33_ORIGIN = (500_000.0, 5_000_000.0)  # on zone 33's central meridian (15°E), ~45.1°N
EQUIRECTANGULAR_XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
    b'xmlns:GPano="http://ns.google.com/photos/1.0/panorama/" '
    b'GPano:ProjectionType="equirectangular"/></rdf:RDF></x:xmpmeta>'
)


# --- file builders -------------------------------------------------------------------------


def write_geotiff(
    path: Path,
    *,
    crs: str | None = "EPSG:32633",
    count: int = 3,
    dtype: str = "uint8",
    nodata: float | None = 0,
    width: int = 40,
    height: int = 20,
    **profile: Any,
) -> Path:
    """Write a small GeoTIFF with 10 m pixels (no CRS, no transform when ``crs`` is None)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return harness.write_geotiff(path, np.ones((count, height, width), dtype=dtype), crs=crs,
                                     transform=harness.grid(10.0, UTM33_ORIGIN), nodata=nodata,
                                     **profile)


def dms(degrees: int, minutes: int, seconds: float) -> tuple[IFDRational, ...]:
    """EXIF degrees/minutes/seconds rationals."""
    seconds_rational = IFDRational(round(seconds * 100), 100)
    return (IFDRational(degrees, 1), IFDRational(minutes, 1), seconds_rational)


def gps_exif(
    lat_ref: str = "S",
    lon_ref: str = "W",
    *,
    altitude: float | None = 123.4,
    below_sea_level: bool = False,
) -> Image.Exif:
    """EXIF with make/model/capture time and GPS 33°52'36" lat, 70°30'0" lon."""
    exif = Image.Exif()
    exif[0x010F] = "TestMake"
    exif[0x0110] = "TestModel X"
    exif_ifd = exif.get_ifd(0x8769)
    exif_ifd[0x9003] = "2024:05:17 10:30:00"  # DateTimeOriginal
    exif_ifd[0x9011] = "+02:00"  # OffsetTimeOriginal
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = lat_ref, dms(33, 52, 36)
    gps[3], gps[4] = lon_ref, dms(70, 30, 0)
    if altitude is not None:
        gps[5] = b"\x01" if below_sea_level else b"\x00"
        gps[6] = IFDRational(round(altitude * 10), 10)
    return exif


def write_picture(
    path: Path, size: tuple[int, int] = (64, 48), fmt: str = "JPEG", **save: Any
) -> Path:
    Image.new("RGB", size, (120, 80, 40)).save(path, format=fmt, **save)
    return path


def assert_json_serialisable(detected: Detected) -> None:
    json.dumps(detected.properties, allow_nan=False)


# --- directories and names ------------------------------------------------------------------


def test_directory_is_a_directory_even_with_an_archive_name(tmp_path: Path) -> None:
    folder = tmp_path / "photos.zip"
    folder.mkdir()
    assert detect(folder) == Detected(type="directory", properties={})


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("notes.md", "markdown"),
        ("scan.laz", "pointcloud"),
        ("scan.LAS", "pointcloud"),
        ("bundle.tar.gz", "archive"),
        ("bundle.TAR.XZ", "archive"),
        ("bundle.tgz", "archive"),
        ("bundle.7z", "archive"),
        ("roads.GeoJSON", "vector"),
        ("roads.fgb", "vector"),
        ("mesh.glb", "model"),
        ("cloud.ply", "model"),
        ("flight.MP4", "video"),
        ("data.gz", "generic"),
        ("readme.txt", "generic"),
        ("no_extension", "generic"),
        (".md", "generic"),
    ],
)
def test_type_follows_the_extension_case_insensitively(
    tmp_path: Path, name: str, expected: str
) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x00not really a " + name.encode())
    detected = detect(path)
    assert detected.type == expected
    if expected in ("pointcloud", "vector"):  # opened for their headers: unreadable here
        assert set(detected.properties) == {"error"}
    else:
        assert detected.properties == {}


def test_detected_rejects_an_unknown_type() -> None:
    with pytest.raises(ValueError, match="unknown entry type"):
        Detected(type="spreadsheet", properties={})
    assert "panorama" in ENTRY_TYPES and len(ENTRY_TYPES) == 12


# --- georasters ----------------------------------------------------------------------------


def test_georeferenced_tiff_is_a_georaster_with_its_header_properties(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "ortho.tif", compress="lzw", tiled=True,
                         blockxsize=16, blockysize=16)
    detected = detect(path)
    props = detected.properties
    assert detected.type == "georaster"
    assert props["crs"] == "EPSG:32633"
    assert (props["width"], props["height"], props["bandCount"]) == (40, 20, 3)
    assert props["dtype"] == "uint8"
    assert props["nodata"] == 0
    assert props["transform"] == [500000.0, 10.0, 0.0, 5000000.0, 0.0, -10.0]
    assert props["bounds"] == [500000.0, 4999800.0, 500400.0, 5000000.0]
    assert props["blockSize"] == [16, 16]
    assert props["compression"] == "LZW"
    assert props["bandNames"] is None
    assert_json_serialisable(detected)


def test_georaster_footprint_is_a_lonlat_polygon_at_the_raster_location(tmp_path: Path) -> None:
    footprint = detect(write_geotiff(tmp_path / "ortho.TIFF")).properties["footprint"]
    assert footprint["type"] == "Polygon"
    (ring,) = footprint["coordinates"]
    assert ring[0] == ring[-1] and len(ring) > 5
    for lon, lat in ring:
        assert -180 <= lon <= 180 and -90 <= lat <= 90
        assert lon == pytest.approx(15.0, abs=0.01)  # 400 m east of the central meridian
        assert lat == pytest.approx(45.15, abs=0.02)
    signed_area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:]))
    assert signed_area > 0, "exterior ring must be counter-clockwise (RFC 7946)"


def test_georaster_reports_nan_nodata_as_a_string_and_band_names(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "dem.tif", count=2, dtype="float32", nodata=float("nan"))
    with rasterio.open(path, "r+") as dst:
        dst.set_band_description(1, "elevation")
    detected = detect(path)
    assert detected.type == "georaster"
    assert detected.properties["nodata"] == "nan"
    assert detected.properties["dtype"] == "float32"
    assert detected.properties["bandNames"] == ["elevation", None]
    assert detected.properties["compression"] is None
    assert_json_serialisable(detected)


def test_georaster_without_epsg_code_reports_wkt(tmp_path: Path) -> None:
    custom = "+proj=tmerc +lat_0=0 +lon_0=15.1 +k=0.9995 +x_0=500000 +y_0=0 +ellps=GRS80"
    detected = detect(write_geotiff(tmp_path / "local.tif", crs=custom))
    assert detected.type == "georaster"
    assert detected.properties["crs"].startswith(("PROJCS[", "PROJCRS["))
    assert detected.properties["footprint"]["type"] == "Polygon"


# --- images without CRS ---------------------------------------------------------------------


def test_tiff_without_crs_is_an_image(tmp_path: Path) -> None:
    detected = detect(write_geotiff(tmp_path / "scan.tif", crs=None, nodata=None))
    assert detected.type == "image"
    assert detected.properties == {
        "width": 40, "height": 20, "make": None, "model": None, "captureTime": None,
    }


def test_tiff_pillow_cannot_open_falls_back_to_rasterio_for_its_size(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "multi.tif", crs=None, count=4, dtype="uint16", nodata=None)
    with pytest.raises(Exception):  # noqa: B017 - guard: this file really defeats Pillow
        Image.open(path)
    detected = detect(path)
    assert detected.type == "image"
    assert (detected.properties["width"], detected.properties["height"]) == (40, 20)
    assert "error" not in detected.properties


def test_jpeg_without_exif_is_an_image_with_empty_camera_fields(tmp_path: Path) -> None:
    detected = detect(write_picture(tmp_path / "plain.jpg"))
    assert detected == Detected(
        type="image",
        properties={"width": 64, "height": 48, "make": None, "model": None, "captureTime": None},
    )


def test_png_is_an_image(tmp_path: Path) -> None:
    detected = detect(write_picture(tmp_path / "chart.PNG", (30, 10), "PNG"))
    assert detected.type == "image"
    assert (detected.properties["width"], detected.properties["height"]) == (30, 10)


def test_readable_picture_with_the_wrong_extension_is_still_read(tmp_path: Path) -> None:
    detected = detect(write_picture(tmp_path / "really_a_png.jpg", (12, 7), "PNG"))
    assert detected.type == "image"
    assert detected.properties["width"] == 12


# --- geoimages ------------------------------------------------------------------------------


def test_jpeg_with_gps_is_a_geoimage_with_south_west_coordinates_negative(
    tmp_path: Path,
) -> None:
    detected = detect(write_picture(tmp_path / "dji.JPG", exif=gps_exif("S", "W")))
    props = detected.properties
    assert detected.type == "geoimage"
    assert props["gps"]["latitude"] == pytest.approx(-(33 + 52 / 60 + 36 / 3600))
    assert props["gps"]["longitude"] == pytest.approx(-70.5)
    assert props["gps"]["altitude"] == pytest.approx(123.4)
    assert (props["make"], props["model"]) == ("TestMake", "TestModel X")
    assert props["captureTime"] == "2024-05-17T10:30:00+02:00"
    assert (props["width"], props["height"]) == (64, 48)
    assert_json_serialisable(detected)


def test_gps_north_east_is_positive_and_altitude_below_sea_level_negative(
    tmp_path: Path,
) -> None:
    exif = gps_exif("N", "E", altitude=12.5, below_sea_level=True)
    gps = detect(write_picture(tmp_path / "dead_sea.jpeg", exif=exif)).properties["gps"]
    assert gps["latitude"] == pytest.approx(33.876666, abs=1e-5)
    assert gps["longitude"] == pytest.approx(70.5)
    assert gps["altitude"] == pytest.approx(-12.5)


def test_gps_without_altitude_reports_none(tmp_path: Path) -> None:
    exif = gps_exif(altitude=None)
    detected = detect(write_picture(tmp_path / "a.jpg", exif=exif))
    assert detected.type == "geoimage"
    assert detected.properties["gps"]["altitude"] is None


def test_gps_with_zero_denominators_is_ignored(tmp_path: Path) -> None:
    exif = gps_exif()
    exif.get_ifd(0x8825)[2] = (IFDRational(0, 0), IFDRational(0, 0), IFDRational(0, 0))
    assert detect(write_picture(tmp_path / "nofix.jpg", exif=exif)).type == "image"


def test_tiff_without_crs_but_with_exif_gps_is_a_geoimage(tmp_path: Path) -> None:
    exif = gps_exif()  # Pillow's TIFF writer drops Exif sub-IFDs: pass GPS as a nested IFD
    tags = {0x010F: exif[0x010F], 0x8825: dict(exif.get_ifd(0x8825))}
    detected = detect(write_picture(tmp_path / "photo.tif", fmt="TIFF", tiffinfo=tags))
    assert detected.type == "geoimage"
    assert detected.properties["gps"]["latitude"] < 0
    assert detected.properties["make"] == "TestMake"


@pytest.mark.parametrize(
    ("name", "save"),
    [("lossy.webp", {}), ("lossless.webp", {"lossless": True})],
)
def test_webp_size_is_read_from_its_header(tmp_path: Path, name: str, save: Any) -> None:
    detected = detect(write_picture(tmp_path / name, (50, 21), "WEBP", **save))
    assert detected.type == "image"
    assert (detected.properties["width"], detected.properties["height"]) == (50, 21)


def test_webp_with_gps_is_a_geoimage(tmp_path: Path) -> None:
    path = write_picture(tmp_path / "drone.webp", (50, 21), "WEBP", exif=gps_exif("N", "W"))
    detected = detect(path)
    assert detected.type == "geoimage"
    assert (detected.properties["width"], detected.properties["height"]) == (50, 21)
    assert detected.properties["gps"]["longitude"] == pytest.approx(-70.5)
    assert detected.properties["make"] == "TestMake"


# --- panoramas ------------------------------------------------------------------------------


def test_two_to_one_image_at_least_2000_wide_is_a_panorama(tmp_path: Path) -> None:
    detected = detect(write_picture(tmp_path / "pano.jpg", (2000, 1000), exif=gps_exif()))
    assert detected.type == "panorama"
    assert detected.properties["gps"]["latitude"] < 0  # a panorama keeps its GPS


@pytest.mark.parametrize("size", [(1998, 999), (2000, 1001)])
def test_small_or_not_exactly_two_to_one_image_is_not_a_panorama(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    assert detect(write_picture(tmp_path / "wide.jpg", size)).type == "image"


@pytest.mark.parametrize(("name", "fmt"), [("pano.jpg", "JPEG"), ("pano.webp", "WEBP")])
def test_xmp_equirectangular_projection_makes_a_panorama(
    tmp_path: Path, name: str, fmt: str
) -> None:
    path = write_picture(tmp_path / name, (300, 100), fmt, xmp=EQUIRECTANGULAR_XMP)
    assert detect(path).type == "panorama"


# --- unreadable files -----------------------------------------------------------------------


def test_corrupt_jpeg_is_an_image_with_an_error_and_does_not_raise(tmp_path: Path) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"this is not a jpeg at all")
    detected = detect(path)
    assert detected.type == "image"
    assert set(detected.properties) == {"error"}
    assert isinstance(detected.properties["error"], str) and detected.properties["error"]


def test_corrupt_tiff_is_an_image_with_an_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.tif"
    path.write_bytes(b"II*\x00" + b"\xff" * 64)
    detected = detect(path)
    assert detected.type == "image"
    assert set(detected.properties) == {"error"}


def test_truncated_geotiff_is_an_image_with_an_error(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "cut.tif")
    path.write_bytes(path.read_bytes()[:100])
    detected = detect(path)
    assert detected.type == "image"
    assert set(detected.properties) == {"error"}


def test_missing_picture_is_an_image_with_an_error(tmp_path: Path) -> None:
    assert set(detect(tmp_path / "gone.png").properties) == {"error"}


def test_error_message_is_short_and_hides_the_directory(tmp_path: Path) -> None:
    path = tmp_path / "secret_dir" / "broken.jpg"
    path.parent.mkdir()
    path.write_bytes(b"\xff\xd8garbage")
    message = detect(path).properties["error"]
    assert "secret_dir" not in message and len(message) <= 200


# --- import cost ----------------------------------------------------------------------------


def test_importing_detect_loads_neither_rasterio_pillow_nor_the_service() -> None:
    code = (
        "import sys, tools.detect\n"
        "loaded = [m for m in ('rasterio', 'PIL', 'procplat') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
