"""Stored or deflated, decided by what each file is: over real HTTP through the bulk-download
tool and the direct ZIP route, and the TIFF header rule on its own."""

from __future__ import annotations

import io
import os
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from PIL import Image

from tests.harness import World, write_geotiff
from tools.archive.zip_policy import Member, compress_type

TRANSFORM = Affine(0.1, 0, 500000, 0, -0.1, 4500000)


def geotiff(path: Path, size: int, **options: object) -> Path:
    """A 3-band uint8 GeoTIFF of smooth ground with a few noisy pixels (deflates to ~12 %)."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:size, 0:size]
    ground = (np.sin(x / 37.0) * 40 + np.cos(y / 53.0) * 40 + 128).astype(np.int16)
    speckle = rng.random(ground.shape) < 0.05
    noise = speckle * rng.integers(-9, 10, ground.shape)
    bands = np.stack([ground + noise + k * 9 for k in range(3)])
    return write_geotiff(path, bands.clip(0, 255).astype(np.uint8), transform=TRANSFORM, **options)


def jpeg_bytes() -> bytes:
    out = io.BytesIO()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(out, "JPEG")
    return out.getvalue()


def text_like(n: int) -> bytes:
    lines = (f"{i:08d},{(i * 7919) % 1000:4d},point-{i % 97},ok\n" for i in range(n // 30 + 1))
    return "".join(lines).encode()[:n]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("zipped")
    return {
        "raw/ortho.tif": geotiff(folder / "raw.tif", 2048).read_bytes(),  # 12.6 MB, no codec
        "cog/ortho.tif": geotiff(folder / "deflate.tif", 1024, compress="deflate",
                                 tiled=True).read_bytes(),
        "photos/p.jpg": jpeg_bytes(),
        "misc/random.bin": os.urandom(300_000),
        "misc/table.bin": text_like(300_000),
    }


def unzip_test(archive: bytes, tmp_path: Path) -> None:
    path = tmp_path / "got.zip"
    path.write_bytes(archive)
    done = subprocess.run(["unzip", "-t", str(path)], capture_output=True, text=True)
    assert done.returncode == 0 and "No errors detected" in done.stdout, done.stdout + done.stderr


def check_archive(archive: bytes, files: dict[str, bytes], tmp_path: Path) -> None:
    unzip_test(archive, tmp_path)
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        kinds = {info.filename: info.compress_type for info in zf.infolist()}
        for name, data in files.items():
            assert zf.read(name) == data
        raw = zf.getinfo("raw/ortho.tif")
        assert raw.compress_size < raw.file_size / 2
    assert kinds == {
        "raw/ortho.tif": zipfile.ZIP_DEFLATED,
        "cog/ortho.tif": zipfile.ZIP_STORED,
        "photos/p.jpg": zipfile.ZIP_STORED,
        "misc/random.bin": zipfile.ZIP_STORED,
        "misc/table.bin": zipfile.ZIP_DEFLATED,
    }


def bulk_download(world: World, paths: list[str]) -> bytes:
    response = world.submit("bulk-download", {"paths": paths})
    assert response.status_code == 202, response.text
    status = world.wait(response.json()["taskId"])
    assert status["state"] == "Succeeded", status
    return world.user.get(status["artifact"]["resultUrl"]).content


def direct_download(world: World, paths: list[str]) -> bytes:
    response = world.user.get(f"{world.ds_url}/download", params={"path": paths})
    assert response.status_code == 200, response.text
    return response.content


@pytest.mark.parametrize("route", [bulk_download, direct_download])
def test_each_file_is_stored_or_deflated_by_what_it_is(
    world: World, files: dict[str, bytes], tmp_path: Path, route: object
) -> None:
    for name, data in files.items():
        world.upload(name, data)
    check_archive(route(world, sorted(files)), files, tmp_path)  # type: ignore[operator]
    alone = route(world, ["raw/ortho.tif"])  # type: ignore[operator]
    assert len(alone) < len(files["raw/ortho.tif"]) / 2
    unzip_test(alone, tmp_path)


@pytest.mark.parametrize(("options", "kind"), [
    ({}, zipfile.ZIP_DEFLATED),
    ({"tiled": True}, zipfile.ZIP_DEFLATED),
    ({"BIGTIFF": "YES"}, zipfile.ZIP_DEFLATED),
    ({"ENDIANNESS": "BIG"}, zipfile.ZIP_DEFLATED),
    ({"compress": "deflate"}, zipfile.ZIP_STORED),
    ({"compress": "lzw", "BIGTIFF": "YES", "ENDIANNESS": "BIG"}, zipfile.ZIP_STORED),
    ({"compress": "zstd", "tiled": True}, zipfile.ZIP_STORED),
    ({"compress": "jpeg"}, zipfile.ZIP_STORED),
])
def test_a_tiff_is_decided_by_its_compression_tag_whatever_its_name(
    tmp_path: Path, options: dict[str, object], kind: int
) -> None:
    path = geotiff(tmp_path / "r.tif", 256, **options)
    for name in ("r.tif", "r.TIFF", "no-extension", "r.dat"):
        assert compress_type(Member(name, path, path.stat().st_size)) == kind, name


def test_a_file_named_tif_that_is_no_tiff_is_tried_like_any_other(tmp_path: Path) -> None:
    noise = tmp_path / "noise.tif"
    noise.write_bytes(os.urandom(100_000))
    text = tmp_path / "text.tif"
    text.write_bytes(text_like(100_000))
    assert compress_type(Member("noise.tif", noise, 100_000)) == zipfile.ZIP_STORED
    assert compress_type(Member("text.tif", text, 100_000)) == zipfile.ZIP_DEFLATED
