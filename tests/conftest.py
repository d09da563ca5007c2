"""Shared fixtures: a real Dask cluster, real services on real sockets, real HTTP clients
(built from :mod:`tests.harness`)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from distributed import LocalCluster

# the harness's names, as the tests have imported them from here:
from tests.harness import ADMIN_TOKEN as ADMIN_TOKEN
from tests.harness import LiveServer as LiveServer
from tests.harness import World as World
from tests.harness import new_world as new_world
from tests.harness import settings_for as settings_for
from tests.harness import start_server as start_server
from tests.harness import worker_running as worker_running


@pytest.fixture(scope="session")
def dask_address() -> Iterator[str]:
    """One LocalCluster (worker processes) shared by the services of the test session."""
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=2, processes=True, dashboard_address=":0",
        env={"GDAL_CACHEMAX": "128"},
    )
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


@contextmanager
def small_filesystem(mount_point: Path, size: str) -> Iterator[Path]:
    """A real file system of ``size`` (tmpfs, e.g. ``"16m"``) at ``mount_point``, to fill up;
    unmounted at the end (lazily: a server being stopped may still hold a file)."""
    mount_point.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                   check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=False)


POSTGRES_URL = os.environ.get("PROCPLAT_TEST_POSTGRES_URL")
DATABASES = ["sqlite", "postgres"] if POSTGRES_URL else ["sqlite"]


def fresh_database_url(kind: str) -> str | None:
    """None (SQLite in the data folder) or a new, empty PostgreSQL database."""
    if kind == "sqlite":
        return None
    import sqlalchemy

    assert POSTGRES_URL is not None
    name = f"procplat_test_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"


SERVER_KINDS = ["local-cluster", "dask-processes"] + (["postgres"] if POSTGRES_URL else [])


@pytest.fixture(scope="session", params=SERVER_KINDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The service most tests share: on a LocalCluster; on real ``dask scheduler`` + two
    ``dask worker`` processes on loopback; and (when PROCPLAT_TEST_POSTGRES_URL is set, as in
    CI) on a LocalCluster with a PostgreSQL index."""
    dask = None
    database_url = None
    if request.param == "dask-processes":
        from tests.processes import start_dask

        dask = start_dask(tmp_path_factory.mktemp("dask"))
        address = dask.address
    else:
        address = request.getfixturevalue("dask_address")
        if request.param == "postgres":
            database_url = fresh_database_url("postgres")
    live = start_server(settings_for(
        tmp_path_factory.mktemp("data"), address, database_url=database_url
    ))
    try:
        yield live
    finally:
        live.stop()
        if dask is not None:
            dask.stop()


@pytest.fixture(params=DATABASES)
def make_server(
    request: pytest.FixtureRequest, dask_address: str, tmp_path: Path
) -> Iterator[Callable[..., LiveServer]]:
    """Start a service with custom settings (on each index database); stopped at the end."""
    started: list[LiveServer] = []

    def make(**overrides: Any) -> LiveServer:
        data = tmp_path / f"data-{len(started)}"
        overrides.setdefault("database_url", fresh_database_url(request.param))
        live = start_server(settings_for(data, dask_address, **overrides))
        started.append(live)
        return live

    yield make
    for live in started:
        live.stop()


@pytest.fixture
def world(server: LiveServer) -> World:
    return new_world(server)


@pytest.fixture(autouse=True)
def _quiet_gdal() -> None:
    os.environ.setdefault("CPL_LOG", "/dev/null")
