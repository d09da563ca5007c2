"""Shared fixtures: a real Dask cluster, real services on real sockets, real HTTP clients."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from distributed import LocalCluster

from procplat.api.app import create_app
from procplat.settings import Settings

ADMIN_TOKEN = "test-admin-token"


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


@dataclass
class LiveServer:
    url: str
    settings: Settings
    server: uvicorn.Server
    thread: threading.Thread
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, token: str | None = ADMIN_TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=60)
        self.clients.append(client)
        return client

    @property
    def app_state(self) -> Any:
        return self.server.config.app.state  # type: ignore[union-attr]

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        self.server.should_exit = True
        self.thread.join(timeout=60)


def start_server(settings: Settings) -> LiveServer:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY works
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(settings), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    return LiveServer(url=f"http://127.0.0.1:{port}", settings=settings, server=server, thread=thread)


def worker_running(client: Any, task_id: str) -> str | None:
    """The address of the worker running the task's attempt right now (its Dask key is
    ``<task id>-<attempt>``), or None."""

    def running_on(dask_scheduler: Any, job_key: str = rf"{task_id}-\d+") -> str | None:
        import re

        for key, ts in dask_scheduler.tasks.items():
            if re.fullmatch(job_key, str(key)) and ts.processing_on is not None:
                return str(ts.processing_on.address)
        return None

    return client.run_on_scheduler(running_on)  # type: ignore[no-any-return]


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


def settings_for(data: Path, dask_address: str | None, **overrides: Any) -> Settings:
    return Settings(
        data=data,
        dask_address=dask_address,
        admin_token=ADMIN_TOKEN,
        progress_update_throttle_seconds=0.2,
        dashboard_address=":0",
        **overrides,
    )


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
def make_server(request: pytest.FixtureRequest, dask_address: str, tmp_path: Path) -> Iterator[Any]:
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


@dataclass
class World:
    """A user with an org and a private dataset on a live server."""

    server: LiveServer
    admin: httpx.Client
    user: httpx.Client
    username: str
    token: str
    org: str
    ds: str

    @property
    def ds_url(self) -> str:
        return f"/orgs/{self.org}/ds/{self.ds}"

    @property
    def tasks_url(self) -> str:
        return f"{self.ds_url}/tasks"

    @property
    def root(self) -> Path:
        return self.server.settings.datasets_dir / self.org / self.ds

    def upload(self, path: str, content: bytes) -> dict[str, Any]:
        response = self.user.put(f"{self.ds_url}/files/{path}", content=content)
        assert response.status_code in (200, 201), response.text
        return response.json()

    def submit(self, tool: str, params: dict[str, Any] | None = None, **extra: Any) -> httpx.Response:
        return self.user.post(self.tasks_url, json={"toolId": tool, "params": params or {}, **extra})

    def wait(self, task_id: str, timeout: float = 60, states: tuple[str, ...] = ("Succeeded", "Failed", "Deleted")) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.user.get(f"{self.tasks_url}/{task_id}").json()
            if status["state"] in states:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"task stuck in {status['state']}: {status}")
            time.sleep(0.05)


def new_world(live: LiveServer, *, visibility: str = "private") -> World:
    admin = live.client()
    name = f"u{uuid.uuid4().hex[:10]}"
    created = admin.post("/users", json={"username": name})
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    user = live.client(token)
    org = f"org-{uuid.uuid4().hex[:8]}"
    assert user.post("/orgs", json={"slug": org}).status_code == 201
    assert user.post(f"/orgs/{org}/ds", json={"slug": "ds", "visibility": visibility}).status_code == 201
    return World(server=live, admin=admin, user=user, username=name, token=token, org=org, ds="ds")


@pytest.fixture
def world(server: LiveServer) -> World:
    return new_world(server)


@pytest.fixture(autouse=True)
def _quiet_gdal() -> None:
    os.environ.setdefault("CPL_LOG", "/dev/null")
