"""A user with an org and a private dataset on a live service, and what tests do with it
over HTTP: upload, submit, wait, cancel, kill the worker that runs a task."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.harness.server import LiveServer

if TYPE_CHECKING:
    import httpx

ENDED = ("Succeeded", "Failed", "Deleted")


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
        return response.json()  # type: ignore[no-any-return]

    def submit(self, tool: str, params: dict[str, Any] | None = None, **extra: Any) -> httpx.Response:
        return self.user.post(self.tasks_url, json={"toolId": tool, "params": params or {}, **extra})

    def wait(self, task_id: str, timeout: float = 60, states: tuple[str, ...] = ENDED) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status: dict[str, Any] = self.user.get(f"{self.tasks_url}/{task_id}").json()
            if status["state"] in states:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"task stuck in {status['state']}: {status}")
            time.sleep(0.05)

    def cancel_until_stopped(self, task_id: str, *, within: float, what: str) -> None:
        """DELETE the task (it answers Deleted) and wait until its work folder is gone, which
        must take less than ``within`` seconds (``what`` did not stop, says the failure)."""
        started = time.monotonic()
        assert self.user.delete(f"{self.tasks_url}/{task_id}").json()["state"] == "Deleted"
        work_dir = self.server.settings.work_dir
        while any(p.name.startswith(task_id) for p in work_dir.iterdir()):
            assert time.monotonic() - started < within, f"{what} did not stop within {within:g} s"
            time.sleep(0.1)


def new_world(live: LiveServer, *, visibility: str = "private") -> World:
    """A new user (made by the admin) with a new org and its dataset ``ds``."""
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


def worker_running(client: Any, task_id: str) -> str | None:
    """The address of the worker running the task's attempt right now (its Dask key is
    ``<task id>-<attempt>``), or None. ``client``: a ``distributed.Client``."""

    def running_on(dask_scheduler: Any, job_key: str = rf"{task_id}-\d+") -> str | None:
        import re

        for key, ts in dask_scheduler.tasks.items():
            if re.fullmatch(job_key, str(key)) and ts.processing_on is not None:
                return str(ts.processing_on.address)
        return None

    return client.run_on_scheduler(running_on)  # type: ignore[no-any-return]


def kill_worker_running(client: Any, task_id: str, *, what: str, within: float = 0) -> None:
    """SIGKILL the Dask worker process running the task's attempt, looked for during
    ``within`` seconds (it must be found: ``what`` is not running on a worker, says the
    failure). ``client``: a ``distributed.Client`` of the service's cluster."""
    import os
    import signal

    address = worker_running(client, task_id)
    deadline = time.monotonic() + within
    while address is None and time.monotonic() < deadline:
        time.sleep(0.05)
        address = worker_running(client, task_id)
    assert address, f"{what} is not running on a worker"
    os.kill(client.run(os.getpid, workers=[address])[address], signal.SIGKILL)
