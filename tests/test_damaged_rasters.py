"""Damaged rasters over real HTTP: every tool that opens a raster names it by its dataset
path and says what is wrong (never the server's path), at validation when the header shows
it (truncated: tiles past the end of the file; not a raster at all) and otherwise when the
read fails (a tile whose bytes do not decode)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.harness import World, noise, write_geotiff

SIZE, TILE = 512, 128  # 4 × 4 tiles


def tiled_geotiff(path: Path, *, count: int = 4, seed: int = 0) -> Path:
    """A tiled DEFLATE GeoTIFF of noise (every tile holds real bytes)."""
    return write_geotiff(path, noise(count, SIZE, seed=seed), tile=TILE, compress="deflate")


def truncated(path: Path, fraction: float = 0.6) -> bytes:
    data = path.read_bytes()
    return data[: int(len(data) * fraction)]


def with_a_corrupt_tile(path: Path, x: int, y: int) -> bytes:
    """The file with tile (x, y)'s bytes replaced by noise: same size, header intact."""
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=1))
        size = int(src.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=1))
    data = bytearray(path.read_bytes())
    data[offset:offset + size] = np.random.default_rng(7).integers(0, 256, size, np.uint8).tobytes()
    return bytes(data)


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("damaged")
    return {"rgbn": tiled_geotiff(folder / "rgbn.tif"),
            "band": tiled_geotiff(folder / "band.tif", count=1, seed=1),
            "band2": tiled_geotiff(folder / "band2.tif", count=1, seed=2)}


def assert_no_server_path(world: World, text: str) -> None:
    data = world.server.settings.data
    assert str(data) not in text and str(data.resolve()) not in text, text


def test_a_truncated_geotiff_is_400_at_validation_in_every_tool_naming_its_dataset_path(
    world: World, good: dict[str, Path]
) -> None:
    world.upload("flight1/ortho.tif", truncated(good["rgbn"]))
    world.upload("flight1/nir.tif", truncated(good["band"]))
    world.upload("flight1/red.tif", good["band2"].read_bytes())
    world.upload("base/reference.tif", good["rgbn"].read_bytes())
    submissions = {
        "flight1/ortho.tif": [
            ("raster-export", {"path": "flight1/ortho.tif", "formula": "NDVI", "bandFilter": "RGBN"}),
            ("raster-export", {"path": "flight1/ortho.tif"}),
            ("align-raster", {"sourcePath": "flight1/ortho.tif",
                              "referencePath": "base/reference.tif", "outputPath": "out.tif"}),
            ("align-raster", {"sourcePath": "base/reference.tif",
                              "referencePath": "flight1/ortho.tif", "outputPath": "out.tif"}),
            ("build", {"path": "flight1/ortho.tif"}),
        ],
        "flight1/nir.tif": [
            ("merge-multispectral", {"paths": ["flight1/red.tif", "flight1/nir.tif"],
                                     "outputPath": "stack.tif"}),
        ],
    }
    for name, requests in submissions.items():
        for tool, params in requests:
            response = world.submit(tool, params)
            assert response.status_code == 400, (tool, response.text)
            error = response.json()["error"]
            assert error.startswith(f"{name} is truncated or damaged: block "), (tool, error)
            assert "cannot be read" in error, (tool, error)
            assert_no_server_path(world, response.text)
    assert world.user.get(world.tasks_url).json() == []


def test_a_tile_that_does_not_decode_fails_the_task_naming_the_path_and_the_block(
    world: World, good: dict[str, Path]
) -> None:
    world.upload("flight1/ortho.tif", with_a_corrupt_tile(good["rgbn"], 3, 2))
    response = world.submit("raster-export", {"path": "flight1/ortho.tif", "formula": "NDVI",
                                              "bandFilter": "RGBN"})
    assert response.status_code == 202, response.text  # the header is fine
    status = world.wait(response.json()["taskId"])
    assert status["state"] == "Failed", status
    assert status["error"].startswith(
        "flight1/ortho.tif is truncated or damaged: block 3,2 cannot be read"), status["error"]
    log = world.user.get(f"{world.tasks_url}/{status['taskId']}/log").json()["lines"]
    assert any("block 3,2 cannot be read" in line for line in log), log
    assert_no_server_path(world, status["error"] + "\n".join(log))


def test_random_bytes_named_tif_are_400_without_the_server_path(world: World) -> None:
    world.upload("flight1/noise.tif", np.random.default_rng(3).bytes(5000))
    world.upload("flight1/other.tif", np.random.default_rng(4).bytes(5000))
    for tool, params in [
        ("raster-export", {"path": "flight1/noise.tif"}),
        ("align-raster", {"sourcePath": "flight1/noise.tif", "referencePath": "flight1/other.tif",
                          "outputPath": "out.tif"}),
        ("merge-multispectral", {"paths": ["flight1/noise.tif", "flight1/other.tif"],
                                 "outputPath": "stack.tif"}),
    ]:
        response = world.submit(tool, params)
        assert response.status_code == 400, (tool, response.text)
        assert response.json()["error"] == "flight1/noise.tif is not a raster GDAL can read", tool
        assert_no_server_path(world, response.text)
