"""The ``build`` tool over the real service: COGs under ``.ddb/build/<hash>/``, build states in
the entries listing, pending point clouds and vectors without their programs, stale builds
after a new upload, and cancellation that leaves nothing half-written."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import laspy
import numpy as np
import rasterio
from rio_cogeo.cogeo import cog_validate

from tests.harness import World, kill_worker_running, write_geotiff


def raster_bytes(tmp_path: Path, size: int = 512, *, seed: int = 0, dtype: str = "uint8",
                 noise: bool = False) -> bytes:
    """A small 3-band GeoTIFF (EPSG:32633); ``noise`` makes it slow to compress."""
    rng = np.random.default_rng(seed)
    if noise:
        data = rng.random((3, size, size)).astype(dtype)
    else:
        y, x = np.mgrid[0:size, 0:size]
        data = np.stack([(x + seed) % 251, (y + seed) % 241, (x + y) % 239]).astype(dtype)
    return write_geotiff(tmp_path / f"r-{seed}-{size}.tif", data, pixel=0.1).read_bytes()


def las_bytes(tmp_path: Path) -> bytes:
    header = laspy.LasHeader(point_format=3, version="1.4")
    header.scales = [0.01, 0.01, 0.01]
    las = laspy.LasData(header)
    las.x = np.array([500000.0, 500010.0, 500020.0])
    las.y = np.array([4500000.0, 4500010.0, 4500020.0])
    las.z = np.array([1.0, 2.0, 3.0])
    path = tmp_path / "cloud.las"
    las.write(path)
    return path.read_bytes()


GEOJSON = json.dumps({"type": "FeatureCollection", "features": [
    {"type": "Feature", "properties": {"name": "a"},
     "geometry": {"type": "Point", "coordinates": [15.0, 45.0]}},
]}).encode()


def entries(world: World) -> dict[str, dict[str, Any]]:
    listed = world.user.get(f"{world.ds_url}/entries", params={"recursive": "true"}).json()
    return {e["path"]: e for e in listed}


def run_build(world: World, params: dict[str, Any] | None = None) -> dict[str, Any]:
    response = world.submit("build", params or {}, force=True)
    assert response.status_code == 202, response.text
    status = world.wait(response.json()["taskId"])
    assert status["state"] == "Succeeded", status
    return status


def temporaries(world: World) -> list[Path]:
    build_dir = world.root / ".ddb" / "build"
    return [p for p in build_dir.rglob(".*")] if build_dir.exists() else []


def test_georaster_build_is_a_valid_cog_under_the_entry_hash(world: World, tmp_path: Path) -> None:
    uploaded = world.upload("ortho/field.tif", raster_bytes(tmp_path))
    assert uploaded["build"] == {"state": "missing"}
    status = run_build(world, {"path": "ortho"})
    assert status["progress"] == {"percent": 100, "phase": "building"}
    assert status["result"]["built"] == 1
    cog = world.root / ".ddb" / "build" / uploaded["hash"] / "cog.tif"
    valid, errors, _ = cog_validate(str(cog))
    assert valid, errors
    with rasterio.open(cog) as out:
        assert (out.width, out.count, out.crs.to_epsg()) == (512, 3, 32633)
    build = entries(world)["ortho/field.tif"]["build"]
    assert build == {"state": "built", "hash": uploaded["hash"],
                     "outputs": [f".ddb/build/{uploaded['hash']}/cog.tif"]}
    one = world.user.get(f"{world.ds_url}/entries/ortho/field.tif").json()
    assert one["build"]["state"] == "built"
    assert entries(world)["ortho"]["build"] is None  # folders have no build
    assert temporaries(world) == []


def test_pointcloud_and_vector_are_pending_with_the_missing_program_named(
    world: World, tmp_path: Path
) -> None:
    """Without PDAL / ogr2ogr (as here and in CI) the entries are pending with the program
    named; where a program is installed its entry is built by it instead (never pending)."""
    world.upload("scan.las", las_bytes(tmp_path))
    world.upload("roads.geojson", GEOJSON)
    status = run_build(world)
    listed = entries(world)
    expected = {"scan.las": "pdal", "roads.geojson": "ogr2ogr"}
    missing = sorted(program for program in expected.values() if shutil.which(program) is None)
    assert status["result"]["pending"] == len(missing)
    for path, program in expected.items():
        build = listed[path]["build"]
        if program in missing:
            assert build["state"] == "pending" and build["missing"] == program, build
        else:
            assert build["state"] in ("built", "failed") and "missing" not in build, build
    if missing:
        log = world.user.get(f"{world.tasks_url}/{status['taskId']}/log").json()["lines"]
        assert f"pending (missing {', '.join(missing)})" in log[-1], log[-1]


def test_build_without_path_builds_only_missing_stale_or_pending(
    world: World, tmp_path: Path
) -> None:
    first = world.upload("a.tif", raster_bytes(tmp_path, seed=1))
    world.upload("b.tif", raster_bytes(tmp_path, seed=2))
    world.upload("scan.las", las_bytes(tmp_path))
    world.upload("notes.md", b"# not buildable")
    status = run_build(world)
    assert status["result"]["built"] == 2
    cog = world.root / ".ddb" / "build" / first["hash"] / "cog.tif"
    built_at = cog.stat().st_mtime_ns
    again = run_build(world)
    # nothing new: the built rasters are skipped, only the pending point cloud is retried
    assert again["result"]["built"] == 0
    assert set(again["result"]["entries"]) == {"scan.las"}
    assert cog.stat().st_mtime_ns == built_at
    assert entries(world)["notes.md"]["build"] is None


def test_new_upload_makes_the_build_stale_and_a_rebuild_fixes_it(
    world: World, tmp_path: Path
) -> None:
    old = world.upload("dem.tif", raster_bytes(tmp_path, seed=3))
    run_build(world)
    new = world.upload("dem.tif", raster_bytes(tmp_path, seed=4))
    assert new["hash"] != old["hash"]
    stale = entries(world)["dem.tif"]["build"]
    assert stale["state"] == "stale" and stale["hash"] == old["hash"]
    status = run_build(world)
    assert status["result"]["built"] == 1
    assert entries(world)["dem.tif"]["build"]["state"] == "built"
    valid, errors, _ = cog_validate(str(world.root / ".ddb/build" / new["hash"] / "cog.tif"))
    assert valid, errors


def test_cancel_mid_build_leaves_no_partial_files_and_the_index_unchanged(
    world: World, tmp_path: Path
) -> None:
    for i in range(12):
        world.upload(f"tiles/t{i:02}.tif", raster_bytes(tmp_path, 1024, seed=i, dtype="float32",
                                                        noise=True))
    task_id = world.submit("build", {}).json()["taskId"]
    deadline = time.monotonic() + 60
    while True:
        status = world.user.get(f"{world.tasks_url}/{task_id}").json()
        if status["progress"]["phase"] == "building" and status["progress"]["percent"] > 0:
            break
        assert status["state"] in ("Created", "Enqueued", "Processing"), status
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert world.user.delete(f"{world.tasks_url}/{task_id}").json()["state"] == "Deleted"
    work_dir = world.server.settings.work_dir
    started = time.monotonic()
    while any(p.name.startswith(task_id) for p in work_dir.iterdir()):
        assert time.monotonic() - started < 10, "the build did not stop within 10 s"
        time.sleep(0.1)
    time.sleep(0.5)
    assert temporaries(world) == []
    finished = list((world.root / ".ddb" / "build").rglob("*.tif"))
    assert len(finished) < 12, "the build finished before it was cancelled"
    for cog in finished:  # what is there is complete, never half-written
        assert cog_validate(str(cog))[0]
    assert {e["build"]["state"] for e in entries(world).values() if e["type"] == "georaster"} \
        == {"missing"}
    status = run_build(world)  # a new run reuses the complete outputs
    assert status["result"]["built"] == 12
    log = world.user.get(f"{world.tasks_url}/{status['taskId']}/log").json()["lines"]
    assert sum("already in place" in line for line in log) == len(finished)


def test_worker_killed_mid_build_leaves_nothing_half_written(world: World, tmp_path: Path) -> None:
    from distributed import Client

    for i in range(8):
        world.upload(f"k/t{i}.tif", raster_bytes(tmp_path, 1024, seed=20 + i, dtype="float32",
                                                 noise=True))
    task_id = world.submit("build", {"path": "k"}).json()["taskId"]
    with Client(world.server.settings.dask_address, timeout="30s") as client:
        deadline = time.monotonic() + 60
        while True:
            status = world.user.get(f"{world.tasks_url}/{task_id}").json()
            if status["progress"]["phase"] == "building" and status["progress"]["percent"] > 0:
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
        kill_worker_running(client, task_id, what="the build")
        status = world.wait(task_id, timeout=180)
        client.wait_for_workers(2, timeout=60)
    # Dask runs the attempt again; it reuses what the killed one completed
    assert status["state"] == "Succeeded", status
    assert status["result"]["built"] == 8
    assert temporaries(world) == []
    listed = entries(world)
    for i in range(8):
        entry = listed[f"k/t{i}.tif"]
        assert entry["build"]["state"] == "built"
        assert cog_validate(str(world.root / entry["build"]["outputs"][0]))[0]
