"""The ``rescan-index`` tool over the real service: files changed behind the index and a
corrupted index are detected again, the ``types`` filter, ``stopOnError`` against counting
errors, and the detection uploads share (EXIF geoimages, point clouds, vectors)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import update

from procplat.index.models import Entry
from tests.harness import World, grid, write_geotiff
from tests.test_build_tool import GEOJSON, las_bytes
from tests.test_detect import gps_exif, write_picture


def geotiff_bytes(tmp_path: Path, crs: str, *, name: str = "r.tif") -> bytes:
    path = tmp_path / name
    origin = (500000, 4500000) if crs != "EPSG:4326" else (15.0, 45.0)
    step = 0.1 if crs != "EPSG:4326" else 1e-6
    return write_geotiff(path, np.ones((1, 32, 64), dtype="uint16"), crs=crs,
                         transform=grid(step, origin), nodata=0).read_bytes()


def jpeg_bytes(tmp_path: Path, *, gps: bool, name: str = "p.jpg") -> bytes:
    save: dict[str, Any] = {"exif": gps_exif("N", "E")} if gps else {}
    return write_picture(tmp_path / name, **save).read_bytes()


def entries(world: World) -> dict[str, dict[str, Any]]:
    listed = world.user.get(f"{world.ds_url}/entries", params={"recursive": "true"}).json()
    return {e["path"]: e for e in listed}


def rescan(world: World, params: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    response = world.submit("rescan-index", params or {}, force=True)
    assert response.status_code == 202, response.text
    status = world.wait(response.json()["taskId"])
    log = world.user.get(f"{world.tasks_url}/{status['taskId']}/log").json()["lines"]
    return status, log


def test_rescan_redetects_files_replaced_behind_the_index(world: World, tmp_path: Path) -> None:
    world.upload("a.tif", geotiff_bytes(tmp_path, "EPSG:32633"))
    world.upload("b.jpg", jpeg_bytes(tmp_path, gps=False))
    new_tif = geotiff_bytes(tmp_path, "EPSG:4326", name="new.tif")
    (world.root / "a.tif").write_bytes(new_tif)
    (world.root / "b.jpg").write_bytes(jpeg_bytes(tmp_path, gps=True, name="gps.jpg"))
    status, log = rescan(world)
    assert status["state"] == "Succeeded", status
    assert status["progress"] == {"percent": 100, "phase": "scanning"}
    assert log[-1].endswith("Rescan: 2/2 ok, 0 errors")
    assert status["result"]["changed"] == 2
    listed = entries(world)
    assert listed["a.tif"]["properties"]["crs"] == "EPSG:4326"
    assert listed["a.tif"]["hash"] == hashlib.sha256(new_tif).hexdigest()
    assert listed["a.tif"]["size"] == len(new_tif)
    assert listed["a.tif"]["properties"]["footprint"]["type"] == "Polygon"
    assert listed["b.jpg"]["type"] == "geoimage"
    assert listed["b.jpg"]["properties"]["gps"]["latitude"] == pytest.approx(33.8766667)


def test_rescan_repairs_properties_corrupted_in_the_index(world: World, tmp_path: Path) -> None:
    good = world.upload("dem.tif", geotiff_bytes(tmp_path, "EPSG:32633"))
    with world.server.app_state.db.write() as s:
        s.execute(update(Entry).where(Entry.path == "dem.tif", Entry.hash == good["hash"])
                  .values(type="generic", properties={"bogus": True}))
    assert entries(world)["dem.tif"]["type"] == "generic"
    status, log = rescan(world)
    assert log[-1].endswith("Rescan: 1/1 ok, 0 errors")
    repaired = entries(world)["dem.tif"]
    assert repaired["type"] == "georaster"
    assert repaired["properties"] == good["properties"]
    assert repaired["hash"] == good["hash"]  # unchanged file: not hashed again
    _, log = rescan(world)
    assert "Rescan: 1/1 ok, 0 errors" in log[-1]


def test_types_filter_rescans_only_entries_of_those_types(world: World, tmp_path: Path) -> None:
    world.upload("a.tif", geotiff_bytes(tmp_path, "EPSG:32633"))
    world.upload("b.jpg", jpeg_bytes(tmp_path, gps=False))
    (world.root / "a.tif").write_bytes(geotiff_bytes(tmp_path, "EPSG:4326", name="n.tif"))
    (world.root / "b.jpg").write_bytes(jpeg_bytes(tmp_path, gps=True, name="gps.jpg"))
    status, log = rescan(world, {"types": "image, panorama"})
    assert status["state"] == "Succeeded", status
    assert log[-1].endswith("Rescan: 1/1 ok, 0 errors")
    listed = entries(world)
    assert listed["b.jpg"]["type"] == "geoimage"
    assert listed["a.tif"]["properties"]["crs"] == "EPSG:32633"  # not rescanned


def test_unknown_type_in_the_filter_is_a_400(world: World) -> None:
    response = world.submit("rescan-index", {"types": "image,spreadsheet"})
    assert response.status_code == 400
    assert "spreadsheet" in response.json()["error"]


def test_stop_on_error_fails_at_the_first_unreadable_file_and_changes_nothing(
    world: World, tmp_path: Path
) -> None:
    world.upload("a.tif", geotiff_bytes(tmp_path, "EPSG:32633"))
    world.upload("b.tif", geotiff_bytes(tmp_path, "EPSG:32633"))
    world.upload("c.tif", geotiff_bytes(tmp_path, "EPSG:32633"))
    (world.root / "b.tif").write_bytes(b"II*\x00 this is no longer a TIFF")
    (world.root / "c.tif").write_bytes(geotiff_bytes(tmp_path, "EPSG:4326", name="n.tif"))
    before = entries(world)
    status, log = rescan(world, {"stopOnError": True})
    assert status["state"] == "Failed", status
    assert "b.tif" in status["error"] and "nothing was changed" in status["error"]
    assert any("Rescan: 1/3 ok, 1 error (stopped)" in line for line in log), log
    assert entries(world) == before

    status, log = rescan(world)
    assert status["state"] == "Succeeded", status
    assert log[-1].endswith("Rescan: 2/3 ok, 1 errors")
    assert status["result"]["errorPaths"] == ["b.tif"]
    after = entries(world)
    assert after["c.tif"]["properties"]["crs"] == "EPSG:4326"
    assert "error" in after["b.tif"]["properties"]  # recorded like an upload would


def test_upload_and_rescan_share_detection_of_geoimages_clouds_and_vectors(
    world: World, tmp_path: Path
) -> None:
    photo = world.upload("photos/dji.jpg", jpeg_bytes(tmp_path, gps=True))
    assert photo["type"] == "geoimage"
    props = photo["properties"]
    assert (props["make"], props["model"]) == ("TestMake", "TestModel X")
    assert props["captureTime"] == "2024-05-17T10:30:00+02:00"
    assert props["gps"]["longitude"] == pytest.approx(70.5)
    cloud = world.upload("scan.las", las_bytes(tmp_path))
    assert cloud["type"] == "pointcloud"
    assert cloud["properties"]["pointCount"] == 3
    assert cloud["properties"]["bounds"] == [500000.0, 4500000.0, 500020.0, 4500020.0]
    roads = world.upload("roads.geojson", GEOJSON)
    assert roads["type"] == "vector"
    assert (roads["properties"]["featureCount"], roads["properties"]["crs"]) == (1, "EPSG:4326")
    assert roads["properties"]["footprint"]["type"] == "Polygon"
    json.dumps([photo, cloud, roads], allow_nan=False)
    status, log = rescan(world, {"types": "geoimage,pointcloud,vector"})
    assert log[-1].endswith("Rescan: 3/3 ok, 0 errors")
    assert status["result"]["changed"] == 0
