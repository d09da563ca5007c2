"""Faults on the scaled path, with real processes: a PostgreSQL server of the module's own,
a ``dask scheduler`` with two ``dask worker`` processes and the API (``procplat serve``)
on one shared data folder. Each fault is injected once, and afterwards nothing is lost (the
files that were there keep their hashes, the index equals the disk), nothing is half-written
and no task is left active.

The API is one replica for now: two are safe once one supervisor is chosen by a lease
(``start_scaled(..., replicas=2)`` or :meth:`ScaledDeployment.add_replica` add one).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from tests.conftest import small_filesystem
from tests.processes import (
    PostgresServer,
    ScaledDeployment,
    assert_index_is_disk,
    assert_no_active_task,
    files_on_disk,
    start_postgres,
    start_scaled,
    wait_state,
)
from tests.test_raster_export_service import write_rgbn

DATASET = "/orgs/acme/ds/survey"
TASKS = f"{DATASET}/tasks"
FINAL = ("Succeeded", "Failed", "Deleted")
# identical requests make distinct tasks, so a disturbed run can be compared with an
# undisturbed one of the same parameters
SCALED_ENV = {"PROCPLAT_DEDUP_ENABLED": "false", "PROCPLAT_SWEEP_INTERVAL_SECONDS": "1"}


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def scaled(tmp_path: Path, postgres: PostgresServer) -> Iterator[ScaledDeployment]:
    deployment = start_scaled(tmp_path / "data", postgres.new_database(), env=SCALED_ENV)
    try:
        yield deployment
    finally:
        deployment.stop()


def _user(deployment: ScaledDeployment) -> httpx.Client:
    """A user owning the dataset ``acme/survey``, on the first replica."""
    with deployment.replicas[0].client() as admin:
        token = admin.post("/users", json={"username": "surveyor"}).json()["token"]
    user = httpx.Client(base_url=deployment.replicas[0].url, timeout=60,
                        headers={"Authorization": f"Bearer {token}"})
    assert user.post("/orgs", json={"slug": "acme"}).status_code == 201
    assert user.post("/orgs/acme/ds", json={"slug": "survey"}).status_code == 201
    return user


def _upload(user: httpx.Client, rel: str, content: bytes) -> None:
    response = user.put(f"{DATASET}/files/{rel}", content=content)
    assert response.status_code in (200, 201), response.text


def _dataset_root(deployment: ScaledDeployment) -> Path:
    return deployment.data / "datasets" / "acme" / "survey"


def _submit(user: httpx.Client, tool: str, params: dict[str, Any]) -> str:
    response = user.post(TASKS, json={"toolId": tool, "params": params})
    assert response.status_code == 202, response.text
    return str(response.json()["taskId"])


def _result_sha(user: httpx.Client, status: dict[str, Any]) -> str:
    result = user.get(f"{TASKS}/{status['taskId']}/result")
    assert result.status_code == 200, result.text
    digest = hashlib.sha256(result.content).hexdigest()
    assert digest == status["artifact"]["sha256"]
    return digest


def _assert_nothing_lost(deployment: ScaledDeployment, user: httpx.Client,
                         before: dict[str, tuple[int, str]]) -> None:
    """The files that were there are unchanged, the index equals the disk, no task is active,
    and no work or staging folder is left."""
    root = _dataset_root(deployment)
    on_disk = files_on_disk(root)
    assert {rel: on_disk.get(rel) for rel in before} == before
    assert_index_is_disk(user, DATASET, root)
    with deployment.replicas[0].client() as admin:
        assert_no_active_task(admin)
    work = deployment.data / "work"
    assert not (work.is_dir() and any(work.iterdir())), list(work.iterdir())
    tmp = root / ".ddb" / "tmp"
    assert not (tmp.is_dir() and any(tmp.iterdir())), list(tmp.iterdir())


def _worker_running(deployment: ScaledDeployment, task_id: str, timeout: float = 30) -> str:
    """The address of the worker running the task's attempt."""
    from distributed import Client

    def running_on(dask_scheduler: Any, task_id: str = task_id) -> str | None:
        for key, ts in dask_scheduler.tasks.items():
            if task_id in str(key) and ts.processing_on is not None:
                return str(ts.processing_on.address)
        return None

    deadline = time.monotonic() + timeout
    with Client(deployment.dask.address, timeout="30s") as client:
        while time.monotonic() < deadline:
            address = client.run_on_scheduler(running_on)
            if address:
                return str(address)
            time.sleep(0.05)
    raise AssertionError(f"task {task_id} never ran on a worker")


def test_worker_killed_mid_export_reruns_to_the_same_sha256(
    scaled: ScaledDeployment, tmp_path: Path
) -> None:
    user = _user(scaled)
    _upload(user, "notes/readme.txt", b"field notes\n")
    _upload(user, "ortho.tif", write_rgbn(tmp_path / "ortho.tif", 4096, tile=512).read_bytes())
    before = files_on_disk(_dataset_root(scaled))
    params = {"path": "ortho.tif", "formula": "NDVI", "bandFilter": "RGBN", "colormap": "rdylgn"}

    undisturbed = wait_state(user, f"{TASKS}/{_submit(user, 'raster-export', params)}", FINAL)
    assert undisturbed["state"] == "Succeeded", undisturbed
    expected = _result_sha(user, undisturbed)

    task_id = _submit(user, "raster-export", params)
    wait_state(user, f"{TASKS}/{task_id}", ("Processing",))
    deadline = time.monotonic() + 30
    while user.get(f"{TASKS}/{task_id}").json().get("progress", {}).get("phase") != "rendering":
        assert time.monotonic() < deadline, "the export never reached its rendering phase"
        time.sleep(0.05)
    scaled.dask.kill_worker_at(_worker_running(scaled, task_id))
    assert user.get(f"{TASKS}/{task_id}").json()["state"] == "Processing"  # killed mid-export

    status = wait_state(user, f"{TASKS}/{task_id}", FINAL, timeout=90)
    assert status["state"] == "Succeeded", status
    assert _result_sha(user, status) == expected
    _assert_nothing_lost(scaled, user, before)


def _attempt_finished_on_cluster(deployment: ScaledDeployment, task_id: str,
                                 timeout: float = 60) -> None:
    """Wait until the attempt (seen running) is done on the cluster: its result is held or
    already handed to the service and forgotten, whatever the service recorded of it."""
    from distributed import Client

    def finished(dask_scheduler: Any, task_id: str = task_id) -> bool:
        states = [ts.state for key, ts in dask_scheduler.tasks.items() if task_id in str(key)]
        return all(state in ("memory", "erred", "released", "forgotten") for state in states)

    deadline = time.monotonic() + timeout
    with Client(deployment.dask.address, timeout="30s") as client:
        while not client.run_on_scheduler(finished):
            assert time.monotonic() < deadline, f"task {task_id} did not finish on the cluster"
            time.sleep(0.1)


def test_postgres_restarted_mid_task_is_503_then_the_task_ends_with_its_artifact(
    scaled: ScaledDeployment, postgres: PostgresServer, tmp_path: Path
) -> None:
    user = _user(scaled)
    _upload(user, "notes/readme.txt", b"field notes\n")
    _upload(user, "ortho.tif", write_rgbn(tmp_path / "ortho.tif", 3072, tile=512).read_bytes())
    before = files_on_disk(_dataset_root(scaled))
    params = {"path": "ortho.tif", "formula": "NDVI", "bandFilter": "RGBN"}
    task_id = _submit(user, "raster-export", params)
    wait_state(user, f"{TASKS}/{task_id}", ("Processing",))

    postgres.stop()
    try:
        _worker_running(scaled, task_id, timeout=5)  # the index went down mid-attempt
        # the attempt's progress, its log lines and its outcome all reach the service while
        # the index is down
        during: list[httpx.Response] = []
        done = False
        while not done or len(during) < 12:
            during += [user.get(f"{TASKS}/{task_id}"), user.get(f"{TASKS}/{task_id}/log"),
                       user.get(f"{DATASET}/entries"), user.post(TASKS, json={
                           "toolId": "raster-export", "params": params})]
            if not done:
                _attempt_finished_on_cluster(scaled, task_id)
                done = True
        health = httpx.get(f"{scaled.replicas[0].url}/sys/health", timeout=30)
    finally:
        postgres.start()
    assert [r.status_code for r in during] == [503] * len(during), [r.text for r in during]
    assert all("index" in r.json()["error"] and r.headers.get("retry-after") for r in during)
    assert health.status_code == 503 and health.json()["index"] is False

    status = wait_state(user, f"{TASKS}/{task_id}", FINAL, timeout=60)
    assert status["state"] == "Succeeded", status
    assert status["progress"]["percent"] == 100
    _result_sha(user, status)
    log = user.get(f"{TASKS}/{task_id}/log").json()["lines"]
    assert any("Wrote ortho_export.tif" in line for line in log), log
    assert httpx.get(f"{scaled.replicas[0].url}/sys/health", timeout=30).status_code == 200
    again = wait_state(user, f"{TASKS}/{_submit(user, 'raster-export', params)}", FINAL)
    assert again["state"] == "Succeeded", again
    assert _result_sha(user, again) == status["artifact"]["sha256"]
    _assert_nothing_lost(scaled, user, before)


def _noise_raster(path: Path, size: int) -> Path:
    """A 4-band uint8 raster of noise: its export cannot compress, so it needs its size."""
    bands = np.random.default_rng(7).integers(1, 255, (4, size, size), dtype=np.uint8)
    with rasterio.open(
        path, "w", driver="GTiff", width=size, height=size, count=4, dtype="uint8",
        crs="EPSG:32633", transform=from_origin(500000, 4500000, 0.05, 0.05), tiled=True,
        blockxsize=256, blockysize=256, photometric="MINISBLACK",
    ) as dst:
        dst.write(bands)
    return path


@pytest.fixture
def small_data_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB file system (tmpfs) as the shared data folder."""
    with small_filesystem(tmp_path / "data", "48m") as data:
        yield data


def test_data_disk_full_during_an_export_fails_cleanly_and_the_service_recovers(
    small_data_disk: Path, postgres: PostgresServer, tmp_path: Path
) -> None:
    scaled = start_scaled(small_data_disk, postgres.new_database(), env=SCALED_ENV)
    try:
        user = _user(scaled)
        _upload(user, "notes/readme.txt", b"field notes\n")
        _upload(user, "noise.tif", _noise_raster(tmp_path / "noise.tif", 1024).read_bytes())
        root = _dataset_root(scaled)
        before = files_on_disk(root)
        params = {"path": "noise.tif", "bands": [1, 2, 3]}  # a ~4 MB COG

        filler = small_data_disk / "filler"
        free = os.statvfs(small_data_disk)
        with open(filler, "wb") as out:  # leave 1 MiB
            os.posix_fallocate(out.fileno(), 0, free.f_bavail * free.f_frsize - 2**20)
        full = user.put(f"{DATASET}/files/notes/big.bin", content=bytes(2 * 2**20))
        assert full.status_code == 507, full.text
        status = wait_state(user, f"{TASKS}/{_submit(user, 'raster-export', params)}", FINAL)
        assert status["state"] == "Failed", status
        assert "disk is full" in status["error"], status
        log = user.get(f"{TASKS}/{status['taskId']}/log").json()["lines"]
        assert not any(str(small_data_disk) in text for text in [status["error"], *log]), log
        assert not (small_data_disk / "artifacts" / status["taskId"]).exists()
        _assert_nothing_lost(scaled, user, before)

        filler.unlink()
        _upload(user, "notes/after.txt", b"written once space was freed\n")
        again = wait_state(user, f"{TASKS}/{_submit(user, 'raster-export', params)}", FINAL)
        assert again["state"] == "Succeeded", again
        _result_sha(user, again)
        assert httpx.get(f"{scaled.replicas[0].url}/sys/health", timeout=30).status_code == 200
        _assert_nothing_lost(scaled, user, before)
    finally:
        scaled.stop()
