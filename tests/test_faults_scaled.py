"""Faults on the scaled path, with real processes: a PostgreSQL server of the module's own,
a ``dask scheduler`` with two ``dask worker`` processes and two API replicas (``procplat
serve``, one of them the supervisor) on one shared data folder, a small file system of its own
so that it can be filled. The requests go to the replicas in turn, as behind a load balancer.
The processes are shared by the module's scenarios; each fault is injected once, into its own
dataset, and afterwards nothing is lost (the files that were there keep their hashes, the
index equals the disk), nothing is half-written and no task is left active.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import rasterio
from distributed import Client
from rasterio.transform import from_origin

from procplat.index.lease import CHECK_INTERVAL, PostgresLease
from tests.conftest import small_filesystem, worker_running
from tests.processes import (
    PostgresServer,
    ScaledDeployment,
    SupervisorWatch,
    assert_nothing_lost,
    files_on_disk,
    start_postgres,
    start_scaled,
    wait_state,
)
from tests.test_raster_export_service import write_rgbn

FINAL = ("Succeeded", "Failed", "Deleted")
# identical requests make distinct tasks, so a disturbed run can be compared with an
# undisturbed one of the same parameters
SCALED_ENV = {"PROCPLAT_DEDUP_ENABLED": "false", "PROCPLAT_SWEEP_INTERVAL_SECONDS": "1"}
DATA_DISK = "320m"  # the shared data folder: room for every scenario, small enough to fill
_slugs = itertools.count(1)

# the module's processes start within its first test's time
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory,
           postgres: PostgresServer) -> Iterator[ScaledDeployment]:
    base = tmp_path_factory.mktemp("scaled")
    with small_filesystem(base / "data", DATA_DISK) as data:
        deployment = start_scaled(data, postgres.new_database(), env=SCALED_ENV)
        try:
            yield deployment
        finally:
            deployment.stop()


@pytest.fixture(scope="module")
def token(scaled: ScaledDeployment) -> str:
    """A user's token; the user owns the org ``acme``."""
    with scaled.replicas[0].client() as admin:
        token = str(admin.post("/users", json={"username": "surveyor"}).json()["token"])
    with scaled.balanced(token) as user:
        assert user.post("/orgs", json={"slug": "acme"}).status_code == 201
    return token


@dataclass(frozen=True, kw_only=True)
class Site:
    """A scenario's own dataset and the user's client (spread over the replicas)."""

    user: httpx.Client
    url: str
    root: Path

    @property
    def tasks(self) -> str:
        return f"{self.url}/tasks"


@pytest.fixture
def site(scaled: ScaledDeployment, token: str) -> Iterator[Site]:
    slug = f"survey{next(_slugs)}"
    with scaled.balanced(token) as user:
        assert user.post("/orgs/acme/ds", json={"slug": slug}).status_code == 201
        yield Site(user=user, url=f"/orgs/acme/ds/{slug}",
                   root=scaled.data / "datasets" / "acme" / slug)


def _upload(site: Site, rel: str, content: bytes) -> None:
    response = site.user.put(f"{site.url}/files/{rel}", content=content)
    assert response.status_code in (200, 201), response.text


def _submit(site: Site, tool: str, params: dict[str, Any]) -> str:
    response = site.user.post(site.tasks, json={"toolId": tool, "params": params})
    assert response.status_code == 202, response.text
    return str(response.json()["taskId"])


def _result_sha(site: Site, status: dict[str, Any]) -> str:
    result = site.user.get(f"{site.tasks}/{status['taskId']}/result")
    assert result.status_code == 200, result.text
    digest = hashlib.sha256(result.content).hexdigest()
    assert digest == status["artifact"]["sha256"]
    return digest


def _assert_nothing_lost(deployment: ScaledDeployment, site: Site,
                         before: dict[str, tuple[int, str]]) -> None:
    assert_nothing_lost(deployment, site.user, site.url, site.root, before)


def _worker_running(deployment: ScaledDeployment, task_id: str, timeout: float = 30) -> str:
    """The address of the worker running the task's attempt."""
    deadline = time.monotonic() + timeout
    with Client(deployment.dask.address, timeout="30s") as client:
        while time.monotonic() < deadline:
            if address := worker_running(client, task_id):
                return address
            time.sleep(0.05)
    raise AssertionError(f"task {task_id} never ran on a worker")


def test_worker_killed_mid_export_reruns_to_the_same_sha256(
    scaled: ScaledDeployment, site: Site, tmp_path: Path
) -> None:
    _upload(site, "notes/readme.txt", b"field notes\n")
    _upload(site, "ortho.tif", write_rgbn(tmp_path / "ortho.tif", 4096, tile=512).read_bytes())
    before = files_on_disk(site.root)
    params = {"path": "ortho.tif", "formula": "NDVI", "bandFilter": "RGBN", "colormap": "rdylgn"}

    undisturbed = wait_state(site.user, f"{site.tasks}/{_submit(site, 'raster-export', params)}",
                             FINAL)
    assert undisturbed["state"] == "Succeeded", undisturbed
    expected = _result_sha(site, undisturbed)

    task_id = _submit(site, "raster-export", params)
    wait_state(site.user, f"{site.tasks}/{task_id}", ("Processing",))
    deadline = time.monotonic() + 30
    while site.user.get(f"{site.tasks}/{task_id}").json()["progress"]["phase"] != "rendering":
        assert time.monotonic() < deadline, "the export never reached its rendering phase"
        time.sleep(0.05)
    scaled.dask.kill_worker_at(_worker_running(scaled, task_id))
    assert site.user.get(f"{site.tasks}/{task_id}").json()["state"] == "Processing"  # mid-export

    status = wait_state(site.user, f"{site.tasks}/{task_id}", FINAL, timeout=180)
    assert status["state"] == "Succeeded", status
    assert _result_sha(site, status) == expected
    _assert_nothing_lost(scaled, site, before)
    scaled.dask.add_worker()  # the next scenario has two workers again


def _attempt_finished_on_cluster(deployment: ScaledDeployment, task_id: str,
                                 timeout: float = 120) -> None:
    """Wait until the attempt (seen running) is done on the cluster: its result is held or
    already handed to the service and forgotten, whatever the service recorded of it."""

    def finished(dask_scheduler: Any, task_id: str = task_id) -> bool:
        states = [ts.state for key, ts in dask_scheduler.tasks.items() if task_id in str(key)]
        return all(state in ("memory", "erred", "released", "forgotten") for state in states)

    deadline = time.monotonic() + timeout
    with Client(deployment.dask.address, timeout="30s") as client:
        while not client.run_on_scheduler(finished):
            assert time.monotonic() < deadline, f"task {task_id} did not finish on the cluster"
            time.sleep(0.1)


def test_postgres_restarted_mid_task_is_503_then_one_supervisor_ends_the_task(
    scaled: ScaledDeployment, site: Site, postgres: PostgresServer, tmp_path: Path
) -> None:
    """Both replicas answer 503 while the index is down, the supervisor's lease goes with its
    connection, and afterwards exactly one replica supervises and ends the task, with its
    progress, log lines (each once) and artifact."""
    _upload(site, "notes/readme.txt", b"field notes\n")
    _upload(site, "ortho.tif", write_rgbn(tmp_path / "ortho.tif", 3072, tile=512).read_bytes())
    before = files_on_disk(site.root)
    params = {"path": "ortho.tif", "formula": "NDVI", "bandFilter": "RGBN"}
    task_id = _submit(site, "raster-export", params)
    wait_state(site.user, f"{site.tasks}/{task_id}", ("Processing",))
    on_each = [httpx.Client(base_url=r.url, headers=site.user.headers, timeout=60)
               for r in scaled.replicas]

    with SupervisorWatch(scaled.replicas) as watch:
        scaled.supervisor()
        postgres.stop()
        stopped = time.monotonic()
        try:
            _worker_running(scaled, task_id, timeout=5)  # the index went down mid-attempt
            # the attempt's progress, its log lines and its outcome all reach the service
            # while the index is down
            during: list[httpx.Response] = []
            done = False
            while not done or time.monotonic() < stopped + PostgresLease.takeover_grace + 2:
                for client in on_each:
                    during += [client.get(f"{site.tasks}/{task_id}"),
                               client.get(f"{site.tasks}/{task_id}/log"),
                               client.get(f"{site.url}/entries"),
                               client.post(site.tasks, json={"toolId": "raster-export",
                                                             "params": params})]
                if not done:
                    _attempt_finished_on_cluster(scaled, task_id)
                    done = True
                time.sleep(0.2)
            health = [httpx.get(f"{r.url}/sys/health", timeout=30) for r in scaled.replicas]
        finally:
            restarted = time.monotonic()
            postgres.start()
        assert [r.status_code for r in during] == [503] * len(during), [r.text for r in during]
        assert all("index" in r.json()["error"] and r.headers.get("retry-after") for r in during)
        assert [(h.status_code, h.json()["index"]) for h in health] == [(503, False)] * 2

        status = wait_state(site.user, f"{site.tasks}/{task_id}", FINAL, timeout=60)
        supervisor = scaled.supervisor()
        time.sleep(3 * CHECK_INTERVAL)  # a replica that still thought it supervised would say so
    # never two supervisors; none while the lease could not be held (the index was down)
    assert all(len(leading) <= 1 for leading in watch.supervising()), watch.supervising()
    # (the one whose lease went stopped at once: before another could have taken it)
    assert watch.supervising(stopped + CHECK_INTERVAL, restarted) == {()}, watch.rounds
    assert watch.supervising(time.monotonic() - 2 * CHECK_INTERVAL) == {(supervisor.url,)}

    assert status["state"] == "Succeeded", status
    assert status["progress"]["percent"] == 100
    _result_sha(site, status)
    log = site.user.get(f"{site.tasks}/{task_id}/log").json()["lines"]
    assert any("Wrote ortho_export.tif" in line for line in log), log
    assert len(log) == len(set(log)), log  # nothing written twice by two supervisors
    for client in on_each:
        assert client.get("/sys/health").status_code == 200
    again = wait_state(site.user, f"{site.tasks}/{_submit(site, 'raster-export', params)}",
                       FINAL)
    assert again["state"] == "Succeeded", again
    assert _result_sha(site, again) == status["artifact"]["sha256"]
    _assert_nothing_lost(scaled, site, before)


def test_lease_session_ended_by_the_server_is_reported_lost_at_once(
    postgres: PostgresServer
) -> None:
    """The supervisor lease's holder learns the moment the index ends the lease's session
    (before the index could take another holder), and can take the lease again after."""
    import psycopg

    url = postgres.new_database()
    # the lease's connection gets a descriptor above select()'s FD_SETSIZE (1024), as in a
    # busy process: the watch must not depend on select.select
    spare = [os.open(os.devnull, os.O_RDONLY) for _ in range(1030)]
    lease = PostgresLease(url, "holder")
    lost = threading.Event()
    lease.on_lost = lost.set
    try:
        assert lease.try_acquire() and lease.still_held()
        assert not lost.wait(2 * CHECK_INTERVAL)  # an idle session says nothing
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
            ended = time.monotonic()
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                         " WHERE application_name = 'procplat supervisor holder'")
        assert lost.wait(5)
        assert time.monotonic() - ended < CHECK_INTERVAL
        assert not lease.still_held()
        assert lease.try_acquire() and lease.holder() == "holder"
    finally:
        lease.release()
        for fd in spare:
            os.close(fd)


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


def test_data_disk_full_during_an_export_fails_cleanly_and_the_service_recovers(
    scaled: ScaledDeployment, site: Site, tmp_path: Path
) -> None:
    _upload(site, "notes/readme.txt", b"field notes\n")
    _upload(site, "noise.tif", _noise_raster(tmp_path / "noise.tif", 1024).read_bytes())
    before = files_on_disk(site.root)
    params = {"path": "noise.tif", "bands": [1, 2, 3]}  # a ~4 MB COG

    filler = scaled.data / "filler"
    try:
        free = os.statvfs(scaled.data)
        with open(filler, "wb") as out:  # leave 1 MiB
            os.posix_fallocate(out.fileno(), 0, free.f_bavail * free.f_frsize - 2**20)
        full = site.user.put(f"{site.url}/files/notes/big.bin", content=bytes(2 * 2**20))
        assert full.status_code == 507, full.text
        status = wait_state(site.user, f"{site.tasks}/{_submit(site, 'raster-export', params)}",
                            FINAL)
        assert status["state"] == "Failed", status
        assert "disk is full" in status["error"], status
        log = site.user.get(f"{site.tasks}/{status['taskId']}/log").json()["lines"]
        assert not any(str(scaled.data) in text for text in [status["error"], *log]), log
        assert not (scaled.data / "artifacts" / status["taskId"]).exists()
        _assert_nothing_lost(scaled, site, before)
    finally:
        filler.unlink(missing_ok=True)
    _upload(site, "notes/after.txt", b"written once space was freed\n")
    again = wait_state(site.user, f"{site.tasks}/{_submit(site, 'raster-export', params)}", FINAL)
    assert again["state"] == "Succeeded", again
    _result_sha(site, again)
    for replica in scaled.replicas:
        assert httpx.get(f"{replica.url}/sys/health", timeout=30).status_code == 200
    _assert_nothing_lost(scaled, site, before)
