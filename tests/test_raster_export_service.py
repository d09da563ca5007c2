"""raster-export as a service task: validation before queueing, a COG artifact, progress
phases, cancellation, over real HTTP on a real Dask cluster."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from tests.harness import World, kill_worker_running, rgbn_gradient, write_geotiff
from tools.raster_export import export


def write_rgbn(path: Path, size: int, *, tile: int = 256) -> Path:
    """A smooth 4-band uint8 RGBN raster (compresses well) with a nodata corner."""
    bands = rgbn_gradient(size)
    bands[:, : size // 8, : size // 8] = 0
    return write_geotiff(path, bands, tile=tile, nodata=0, compress="deflate",
                         photometric="MINISBLACK")


@pytest.fixture(scope="module")
def small_raster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rgbn(tmp_path_factory.mktemp("rx") / "field.tif", 1000)


def test_ndvi_export_is_a_valid_cog_equal_to_the_notebook_api(
    world: World, small_raster: Path, tmp_path: Path
) -> None:
    world.upload("ortho/field.tif", small_raster.read_bytes())
    response = world.submit("raster-export", {"formula": "NDVI", "bandFilter": "RGBN",
                                              "colormap": "rdylgn"}, path="ortho/field.tif")
    assert response.status_code == 202, response.text
    assert response.json()["estimatedOutputBytes"] == 1000 * 1000 * 4 * 4 // 3
    status = world.wait(response.json()["taskId"])
    assert status["state"] == "Succeeded", status
    assert status["artifact"]["fileName"] == "field_export.tif"
    out = tmp_path / "served.tif"
    out.write_bytes(world.user.get(status["artifact"]["resultUrl"]).content)
    valid, errors, _warnings = cog_validate(str(out))
    assert valid, errors
    expected = export(small_raster, tmp_path / "local.tif", formula="NDVI", bandFilter="RGBN",
                      colormap="rdylgn").path
    with rasterio.open(out) as served, rasterio.open(expected) as local:
        assert served.count == 4 and served.crs.to_epsg() == 32633
        assert served.transform == local.transform
        assert np.array_equal(served.read(), local.read())
        assert served.read(4)[10, 10] == 0  # nodata corner is transparent
        assert served.overviews(1)
    log = world.user.get(f"{world.tasks_url}/{status['taskId']}/log").json()["lines"]
    assert any("NDVI with rdylgn" in line for line in log), log


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"formula": "NOPE"}, "formula: 'NOPE' is not one of: VARI, EXG"),
        ({"colormap": "sparkles", "formula": "NDVI", "bandFilter": "RGBN"}, "colormap"),
        ({"preset": "no-such-preset"}, "preset"),
        ({"bands": "1,2,9"}, "band"),
        ({"formula": "NDVI", "bandFilter": "RGBN", "rescale": "1,x"}, "rescale"),
        ({"formula": "NDRE", "bandFilter": "RGBN"}, "Re"),
        ({"fileName": "../evil.tif"}, "fileName"),
        ({"fileName": "a/b.tif"}, "fileName"),
    ],
)
def test_bad_parameters_are_400_before_queueing(
    world: World, small_raster: Path, params: dict, message: str
) -> None:
    world.upload("field.tif", small_raster.read_bytes())
    response = world.submit("raster-export", {"path": "field.tif", **params})
    assert response.status_code == 400, response.text
    assert message.lower() in response.json()["error"].lower()
    assert world.user.get(world.tasks_url).json() == []


def test_missing_or_unreadable_raster_is_400(world: World) -> None:
    world.upload("notes.txt", b"not a raster")
    assert "does not exist" in world.submit("raster-export", {"path": "nope.tif"}).json()["error"]
    assert "notes.txt is not a raster GDAL can read" in world.submit(
        "raster-export", {"path": "notes.txt"}).json()["error"]


def test_export_reports_phases_and_cancel_leaves_no_output(world: World, tmp_path: Path) -> None:
    big = write_rgbn(tmp_path / "big.tif", 8192, tile=512)
    world.upload("big.tif", big.read_bytes())
    task_id = world.submit("raster-export", {"path": "big.tif", "formula": "VARI",
                                             "fileName": "vari"}).json()["taskId"]
    phases = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = world.user.get(f"{world.tasks_url}/{task_id}").json()
        phases.add(status["progress"]["phase"])
        if status["state"] == "Processing" and status["progress"]["phase"] == "rendering" \
                and status["progress"]["percent"] > 0:
            break
        time.sleep(0.1)
    assert "rendering" in phases
    world.cancel_until_stopped(task_id, within=10, what="the export")
    assert not (world.server.settings.artifacts_dir / task_id).exists()


def test_worker_killed_mid_export_does_not_corrupt_the_artifact(
    world: World, tmp_path: Path
) -> None:
    from distributed import Client

    big = write_rgbn(tmp_path / "kill.tif", 6144, tile=512)
    world.upload("kill.tif", big.read_bytes())
    task_id = world.submit("raster-export", {"path": "kill.tif", "formula": "NDVI",
                                             "bandFilter": "RGBN"}).json()["taskId"]
    world.wait(task_id, states=("Processing",))
    with Client(world.server.settings.dask_address, timeout="30s") as client:
        kill_worker_running(client, task_id, what="the export", within=30)
        status = world.wait(task_id, timeout=180)
        client.wait_for_workers(2, timeout=60)
    # Dask re-runs the attempt elsewhere (its allowed-failures); the artifact comes from a
    # complete run, never from the interrupted one
    assert status["state"] == "Succeeded", status
    out = tmp_path / "after-kill.tif"
    out.write_bytes(world.user.get(status["artifact"]["resultUrl"]).content)
    valid, errors, _ = cog_validate(str(out))
    assert valid, errors
    expected = export(big, tmp_path / "expected.tif", formula="NDVI", bandFilter="RGBN").path
    with rasterio.open(out) as served, rasterio.open(expected) as local:
        assert np.array_equal(served.read(window=((0, 2048), (0, 2048))),
                              local.read(window=((0, 2048), (0, 2048))))
    assert not any(p.name.startswith(task_id) for p in world.server.settings.work_dir.iterdir())


def test_cogs_use_the_operators_tile_size(make_server, small_raster: Path, tmp_path: Path) -> None:
    from tests.harness import new_world

    live = make_server(default_raster_tile_size=256)
    w = new_world(live)
    w.upload("t.tif", small_raster.read_bytes())
    task_id = w.submit("raster-export", {"formula": "NDVI", "bandFilter": "RGBN"},
                       path="t.tif").json()["taskId"]
    status = w.wait(task_id)
    assert status["state"] == "Succeeded", status
    out = tmp_path / "t.tif"
    out.write_bytes(w.user.get(status["artifact"]["resultUrl"]).content)
    with rasterio.open(out) as cog:
        assert cog.block_shapes[0] == (256, 256)


def test_a_tile_size_that_is_not_a_power_of_two_is_refused() -> None:
    from procplat.settings import Settings

    with pytest.raises(ValueError, match="power of two"):
        Settings(default_raster_tile_size=500)
