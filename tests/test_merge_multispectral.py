"""merge-multispectral as a service task over real HTTP on a real Dask cluster: the stacked
COG and its index entry, overwriting, the checks made before queueing, cancellation."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine, from_origin
from rio_cogeo.cogeo import cog_validate

from tests.harness import World, kill_worker_running, new_world, write_geotiff

ORIGIN = (500000.0, 4500000.0)
PIXEL = 0.05
GRID = from_origin(*ORIGIN, PIXEL, PIXEL)
WIDTH, HEIGHT = 777, 555
BANDS = ("blue", "green", "red", "nir")


def write_band(
    path: Path, data: np.ndarray, *, transform: Affine = GRID, crs: str = "EPSG:32633",
    nodata: float | None = None, tile: int = 256,
) -> Path:
    return write_geotiff(path, data, crs=crs, transform=transform, nodata=nodata, tile=tile,
                         compress="deflate")


def noise(seed: int, shape: tuple[int, int] = (HEIGHT, WIDTH), dtype: Any = np.uint16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, shape).astype(dtype)


@pytest.fixture(scope="module")
def bands(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four 777×555 uint16 single-band rasters on one grid."""
    folder = tmp_path_factory.mktemp("mm")
    return {name: write_band(folder / f"{name}.tif", noise(i)) for i, name in enumerate(BANDS)}


def upload_bands(world: World, bands: dict[str, Path], folder: str = "raw") -> list[str]:
    for name, path in bands.items():
        world.upload(f"{folder}/{name}.tif", path.read_bytes())
    return [f"{folder}/{name}.tif" for name in bands]


def merge(world: World, paths: Sequence[str], output: str) -> dict[str, Any]:
    response = world.submit("merge-multispectral", {"paths": list(paths), "outputPath": output})
    assert response.status_code == 202, response.text
    status = world.wait(response.json()["taskId"])
    assert status["state"] == "Succeeded", status
    return status


def entry(world: World, path: str) -> dict[str, Any]:
    listing = world.user.get(f"{world.ds_url}/entries", params={"recursive": "true"}).json()
    found = [e for e in listing if e["path"] == path]
    assert len(found) == 1, listing
    return found[0]


def files_in(root: Path) -> dict[str, str]:
    """Every file under the dataset (``.ddb`` included) with its sha256."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_stack(out: Path, inputs: Sequence[Path]) -> None:
    """``out`` is a valid COG whose bands are ``inputs``, pixel for pixel, on their grid."""
    valid, errors, _warnings = cog_validate(str(out))
    assert valid, errors
    with rasterio.open(out) as merged:
        assert merged.count == len(inputs)
        assert merged.descriptions == tuple(p.stem for p in inputs)
        assert bool(merged.overviews(1)) == (max(merged.shape) > 512)
        for band, path in enumerate(inputs, start=1):
            with rasterio.open(path) as src:
                assert merged.crs == src.crs and merged.dtypes[0] == src.dtypes[0]
                if band == 1:
                    assert merged.transform == src.transform
                assert np.array_equal(merged.read(band), src.read(1)), band


def test_merge_writes_a_cog_of_the_inputs_and_indexes_it_then_overwrites_it(
    world: World, bands: dict[str, Path]
) -> None:
    paths = upload_bands(world, bands)
    status = merge(world, paths, "stack/field.tif")
    assert status["progress"]["percent"] == 100
    assert status["result"]["bands"] == 4
    out = world.root / "stack" / "field.tif"
    assert_stack(out, list(bands.values()))
    first = entry(world, "stack/field.tif")
    assert first["type"] == "georaster"
    assert first["properties"]["bandCount"] == 4
    assert first["properties"]["bandNames"] == list(BANDS)
    assert first["properties"]["crs"] == "EPSG:32633"
    assert first["size"] == out.stat().st_size
    assert first["hash"] == hashlib.sha256(out.read_bytes()).hexdigest()
    log = world.user.get(f"{world.tasks_url}/{status['taskId']}/log").json()["lines"]
    assert any("Merging 4 bands (blue, green, red, nir)" in line for line in log), log

    # a second merge onto the same output replaces the file and its index entry
    again = [paths[3], paths[2], paths[1]]
    merge(world, again, "stack/field.tif")
    assert_stack(out, [bands["nir"], bands["red"], bands["green"]])
    second = entry(world, "stack/field.tif")
    assert second["properties"]["bandCount"] == 3
    assert second["properties"]["bandNames"] == ["nir", "red", "green"]
    assert second["size"] == out.stat().st_size
    assert second["hash"] == hashlib.sha256(out.read_bytes()).hexdigest() != first["hash"]
    assert list((world.root / ".ddb" / "tmp").iterdir()) == []
    assert sorted(p.name for p in (world.root / "stack").iterdir()) == ["field.tif"]


def shifted(dx_px: float = 0.0, dy_px: float = 0.0, scale: float = 1.0) -> Affine:
    return from_origin(ORIGIN[0] + dx_px * PIXEL, ORIGIN[1] - dy_px * PIXEL,
                       PIXEL * scale, PIXEL * scale)


# (a file to add, how it is written, the inputs, the output, a fragment of the 400)
SMALL = (48, 64)
MISMATCHES: list[tuple[str, dict[str, Any], list[str], str, str]] = [
    ("utm34.tif", {"crs": "EPSG:32634"}, ["a.tif", "utm34.tif"], "out.tif", "CRS differs"),
    ("wide.tif", {"shape": (48, 65)}, ["a.tif", "wide.tif"], "out.tif", "width×height"),
    ("tall.tif", {"shape": (49, 64)}, ["a.tif", "b.tif", "tall.tif"], "out.tif", "width×height"),
    ("float.tif", {"dtype": np.float32}, ["a.tif", "float.tif"], "out.tif", "dtype"),
    ("east.tif", {"transform": shifted(dx_px=1.5)}, ["a.tif", "east.tif"], "out.tif", "origin"),
    ("south.tif", {"transform": shifted(dy_px=-1.25)}, ["a.tif", "south.tif"], "out.tif",
     "origin"),
    ("coarse.tif", {"transform": shifted(scale=1.02)}, ["a.tif", "coarse.tif"], "out.tif",
     "pixel size"),
    ("nodata.tif", {"nodata": 0}, ["a.tif", "nodata.tif"], "out.tif", "nodata"),
    ("rgb.tif", {"count": 3}, ["rgb.tif", "a.tif"], "out.tif", "single-band"),
    ("-", {}, ["a.tif"], "out.tif", "at least 2"),
    ("-", {}, [], "out.tif", "at least 2"),
    ("-", {}, ["a.tif", "missing.tif"], "out.tif", "'missing.tif' does not exist"),
    ("-", {}, ["a.tif", "a.tif"], "out.tif", "listed twice"),
    ("-", {}, ["a.tif", "../b.tif"], "out.tif", "'..'"),
    ("-", {}, ["a.tif", "b.tif"], "../out.tif", "'..'"),
    ("-", {}, ["a.tif", "b.tif"], "/tmp/out.tif", "absolute"),
    ("-", {}, ["a.tif", "b.tif"], ".ddb/tmp/out.tif", ".ddb"),
    ("-", {}, ["a.tif", "b.tif"], "out.png", ".tif"),
    ("-", {}, ["a.tif", "b.tif"], "b.tif", "one of the inputs"),
    ("-", {}, ["a.tif", "b.tif"], "a.tif/out.tif", "is a file"),
]


def write_variant(path: Path, options: dict[str, Any]) -> None:
    options = dict(options)
    shape = options.pop("shape", SMALL)
    dtype = options.pop("dtype", np.uint16)
    if options.pop("count", 1) == 3:
        write_geotiff(path, np.stack([noise(s, shape, dtype) for s in range(3)]), transform=GRID)
        return
    write_band(path, noise(9, shape, dtype), **options)


@pytest.mark.parametrize(
    ("name", "options", "paths", "output", "message"), MISMATCHES,
    ids=[f"{m[4]}-{i}" for i, m in enumerate(MISMATCHES)],
)
def test_mismatches_are_400_naming_them_before_queueing(
    world: World, tmp_path: Path, name: str, options: dict[str, Any], paths: list[str],
    output: str, message: str,
) -> None:
    for upload in ("a.tif", "b.tif"):
        world.upload(upload, write_band(tmp_path / upload, noise(len(upload), SMALL)).read_bytes())
    if name != "-":
        write_variant(tmp_path / name, options)
        world.upload(name, (tmp_path / name).read_bytes())
    before = files_in(world.root)
    response = world.submit("merge-multispectral", {"paths": paths, "outputPath": output})
    assert response.status_code == 400, response.text
    assert message.lower() in response.json()["error"].lower(), response.json()
    assert world.user.get(world.tasks_url).json() == []
    assert files_in(world.root) == before


def test_nearly_aligned_inputs_are_accepted_on_the_first_grid(world: World, tmp_path: Path) -> None:
    grids = {"a.tif": GRID, "half.tif": shifted(dx_px=0.4, dy_px=-0.6),
             "scaled.tif": shifted(scale=1.005)}
    files = [write_band(tmp_path / name, noise(i, SMALL), transform=t, nodata=0)
             for i, (name, t) in enumerate(grids.items())]
    for path in files:
        world.upload(path.name, path.read_bytes())
    merge(world, list(grids), "aligned.tiff")
    assert_stack(world.root / "aligned.tiff", files)
    with rasterio.open(world.root / "aligned.tiff") as merged:
        assert merged.nodata == 0
    assert entry(world, "aligned.tiff")["properties"]["nodata"] == 0


BIG = 8192  # big enough to be cancelled or killed mid-write, yet quick to make and upload


@pytest.fixture(scope="module")
def big_bands(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three 8192² uint16 single-band rasters (patterns: they compress well)."""
    folder = tmp_path_factory.mktemp("mm-big")
    x, y = np.arange(BIG, dtype=np.uint16)[None, :], np.arange(BIG, dtype=np.uint16)[:, None]
    return [
        write_band(folder / f"b{i}.tif",
                   (x * np.uint16(i + 1) + y * np.uint16(3)) % np.uint16(4000), tile=512)
        for i in range(3)
    ]


def submit_big(world: World, big_bands: list[Path]) -> str:
    for path in big_bands:
        world.upload(f"big/{path.name}", path.read_bytes())
    response = world.submit("merge-multispectral", {
        "paths": [f"big/{p.name}" for p in big_bands], "outputPath": "big/stack.tif"})
    assert response.status_code == 202, response.text
    task_id = response.json()["taskId"]
    phases = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = world.user.get(f"{world.tasks_url}/{task_id}").json()
        phases.add(status["progress"]["phase"])
        if status["progress"]["phase"] == "rendering" and status["progress"]["percent"] > 0:
            break
        assert status["state"] in ("Created", "Enqueued", "Scheduled", "Processing"), status
        time.sleep(0.05)
    assert "rendering" in phases, phases
    return str(task_id)


def test_cancel_stops_promptly_and_leaves_the_dataset_as_it_was(
    world: World, bands: dict[str, Path], big_bands: list[Path]
) -> None:
    upload_bands(world, {"old": bands["blue"], "new": bands["red"]}, folder="prev")
    merge(world, ["prev/old.tif", "prev/new.tif"], "big/stack.tif")  # the output to keep
    for path in big_bands:  # uploaded now so that ``before`` holds them
        world.upload(f"big/{path.name}", path.read_bytes())
    before = files_in(world.root)
    kept = entry(world, "big/stack.tif")

    task_id = submit_big(world, big_bands)
    started = time.monotonic()
    assert world.user.delete(f"{world.tasks_url}/{task_id}").json()["state"] == "Deleted"
    work_dir = world.server.settings.work_dir
    tmp_dir = world.root / ".ddb" / "tmp"
    while any(p.name.startswith(task_id) for p in work_dir.iterdir()) or any(tmp_dir.iterdir()):
        assert time.monotonic() - started < 10, "the merge did not stop within 10 s"
        time.sleep(0.05)
    time.sleep(0.5)  # a run that had not stopped would rename its output in by now
    assert files_in(world.root) == before
    assert entry(world, "big/stack.tif") == kept


def test_worker_killed_mid_write_leaves_no_partial_file_and_the_retry_completes(
    make_server: Any, big_bands: list[Path]
) -> None:
    """One service (LocalCluster) is enough: the kill is Dask's business, the same on both."""
    from distributed import Client

    world = new_world(make_server())
    task_id = submit_big(world, big_bands)
    with Client(world.server.settings.dask_address, timeout="30s") as client:
        kill_worker_running(client, task_id, what="the merge")
        status = world.wait(task_id, timeout=120)
        client.wait_for_workers(2, timeout=60)
    assert status["state"] == "Succeeded", status
    log = world.user.get(f"{world.tasks_url}/{task_id}/log").json()["lines"]
    assert sum("Merging 3 bands" in line for line in log) == 2, log  # killed, then re-run
    # only the inputs and the complete output: no partial file beside it, nothing in .ddb/tmp
    assert sorted(p.name for p in (world.root / "big").iterdir()) == ["b0.tif", "b1.tif",
                                                                     "b2.tif", "stack.tif"]
    assert list((world.root / ".ddb" / "tmp").iterdir()) == []
    out = world.root / "big" / "stack.tif"
    valid, errors, _warnings = cog_validate(str(out))
    assert valid, errors
    window = ((BIG - 700, BIG), (1000, 2200))
    with rasterio.open(out) as merged:
        for band, path in enumerate(big_bands, start=1):
            with rasterio.open(path) as src:
                assert np.array_equal(merged.read(band, window=window), src.read(1, window=window))
    assert entry(world, "big/stack.tif")["hash"] == hashlib.sha256(out.read_bytes()).hexdigest()
