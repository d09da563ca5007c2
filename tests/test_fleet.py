"""Several ``procplat serve`` replicas on one index, one Dask scheduler and one data folder,
as real processes: every replica answers for every task, a cancel crosses replicas, exactly
one process supervises, and when it is SIGKILLed another takes over its running task without
running it again or losing its last events."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import DATABASES, fresh_database_url
from tests.processes import DaskProcesses, ServiceProcess, start_dask, start_service, wait_state
from tests.test_restart import _setup
from tests.test_tasks_api import big_text

BIG = 150_000_000  # ~5 s of deflate
TAKEOVER_SECONDS = 15


@dataclass
class Fleet:
    dask: DaskProcesses
    replicas: list[ServiceProcess]
    env: dict[str, str]
    data: Path

    def add(self, *args: str) -> ServiceProcess:
        replica = start_service(self.data, env=self.env, args=args)
        self.replicas.append(replica)
        return replica

# the module's processes start within its first test's time
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def dask(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskProcesses]:
    """A scheduler and two workers, shared by the module's fleets (no test kills them)."""
    dask = start_dask(tmp_path_factory.mktemp("dask"))
    try:
        yield dask
    finally:
        dask.stop()


@pytest.fixture
def fleet(tmp_path: Path, dask: DaskProcesses) -> Iterator[Fleet]:
    """Two replicas (the first one supervises) on a new index and data folder of their own:
    PostgreSQL when this suite has one, else SQLite shared by the replicas."""
    url = fresh_database_url(DATABASES[-1])
    env = {"PROCPLAT_DASK_ADDRESS": dask.address,
           "PROCPLAT_MAX_CONCURRENT_BULK_DOWNLOADS_PER_USER": "4",
           **({"PROCPLAT_DATABASE_URL": url} if url else {})}
    fleet = Fleet(dask=dask, replicas=[], env=env, data=tmp_path / "data")
    try:
        fleet.add()
        fleet.add()
        yield fleet
    finally:
        for replica in fleet.replicas:
            replica.kill()


def _on(replica: ServiceProcess, user: httpx.Client) -> httpx.Client:
    return httpx.Client(base_url=replica.url, headers=user.headers, timeout=60)


def test_every_replica_answers_for_every_task_and_one_supervises(fleet: Fleet) -> None:
    a, b = fleet.replicas
    health_a, health_b = a.health(), b.health()
    assert health_a["supervisor"] == {"process": health_a["process"], "isThisProcess": True}
    assert health_b["supervisor"] == {"process": health_a["process"], "isThisProcess": False}
    user, tasks = _setup(a.client())
    on_b = _on(b, user)
    assert on_b.put("/orgs/acme/ds/survey/files/small.txt", content=b"small").status_code == 201
    # created on the replica that does not supervise: handed over through the index
    body = {"toolId": "bulk-download", "params": {"paths": ["small.txt"]}}
    submitted = on_b.post(tasks, json=body).json()
    assert user.post(tasks, json=body).json()["taskId"] == submitted["taskId"]  # dedup across
    status = wait_state(user, f"{tasks}/{submitted['taskId']}", ("Succeeded", "Failed"), timeout=30)
    assert status["state"] == "Succeeded", status
    for client in (user, on_b):
        result = client.get(f"{tasks}/{submitted['taskId']}/result")
        assert hashlib.sha256(result.content).hexdigest() == status["artifact"]["sha256"]
        assert client.get(f"{tasks}/{submitted['taskId']}/log").json()["lines"]
    # created on A, cancelled on B: the worker stops within seconds
    on_b.put("/orgs/acme/ds/survey/files/big/text.txt", content=big_text(BIG, seed=5))
    long_id = user.post(tasks, json={"toolId": "bulk-download", "params": {"paths": ["big"]}}).json()["taskId"]
    wait_state(on_b, f"{tasks}/{long_id}", ("Processing",), timeout=30)
    cancelled = on_b.delete(f"{tasks}/{long_id}")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "Deleted"
    deadline = time.monotonic() + 5
    while not any(line.endswith("] Cancelled") for line in
                  user.get(f"{tasks}/{long_id}/log").json()["lines"]):
        assert time.monotonic() < deadline, user.get(f"{tasks}/{long_id}/log").json()
        time.sleep(0.1)
    assert user.get(f"{tasks}/{long_id}").json()["artifact"] is None
    # an api-only replica takes submissions and never supervises; a supervisor-only one
    # answers its health only
    api_only = fleet.add("--role", "api")
    health = api_only.health()
    assert (health["role"], health["dask"], health["supervisor"]["process"]) == (
        "api", None, health_a["process"])
    on_api = _on(api_only, user)
    body = {"toolId": "bulk-download", "params": {"paths": ["small.txt"]}, "force": True}
    from_api = on_api.post(tasks, json=body).json()["taskId"]
    assert wait_state(on_api, f"{tasks}/{from_api}", ("Succeeded", "Failed"), timeout=30)[
        "state"] == "Succeeded"
    supervisor_only = fleet.add("--role", "supervisor")
    health = supervisor_only.health()
    assert (health["role"], health["supervisor"]["isThisProcess"]) == ("supervisor", False)
    assert _on(supervisor_only, user).get(tasks).status_code == 404


def test_supervisor_killed_mid_task_another_replica_takes_over(fleet: Fleet) -> None:
    a, b = fleet.replicas
    user, tasks = _setup(b.client())
    user.put("/orgs/acme/ds/survey/files/big/text.txt", content=big_text(BIG, seed=6))
    task_id = user.post(tasks, json={"toolId": "bulk-download", "params": {"paths": ["big"]}}).json()["taskId"]
    wait_state(user, f"{tasks}/{task_id}", ("Processing",), timeout=30)
    time.sleep(0.5)
    a.kill()
    killed = time.monotonic()
    while not b.health()["supervisor"]["isThisProcess"]:
        assert time.monotonic() - killed < TAKEOVER_SECONDS, b.health()
        time.sleep(0.2)
    print(f"takeover {time.monotonic() - killed:.1f} s after the SIGKILL")  # shown with -s
    status = wait_state(user, f"{tasks}/{task_id}", ("Succeeded", "Failed", "Deleted"), timeout=60)
    assert status["state"] == "Succeeded", status
    assert status["progress"]["percent"] == 100, status
    assert status["attempts"] == 1, "the running attempt is re-attached, not re-run"
    assert "re-attaching task" in b.log_text()
    lines = user.get(f"{tasks}/{task_id}/log").json()["lines"]
    assert sum("Archiving 1 files" in line for line in lines) == 1, lines  # ran once
    assert any("Archive complete" in line for line in lines), lines
    assert len(lines) == len(set(lines)), lines  # nothing written twice in the takeover
    result = user.get(f"{tasks}/{task_id}/result")
    assert hashlib.sha256(result.content).hexdigest() == status["artifact"]["sha256"]
    assert user.get(tasks, params={"state": "Processing"}).json() == []


def test_task_that_ended_while_no_supervisor_ran_is_concluded_not_rerun(fleet: Fleet) -> None:
    """Only an api replica is left while the task ends; the next supervisor finds its end and
    its log lines in the scheduler's event log."""
    a, b = fleet.replicas
    b.kill()
    user, tasks = _setup(a.client())
    api_only = fleet.add("--role", "api")
    on_api = _on(api_only, user)
    user.put("/orgs/acme/ds/survey/files/big/text.txt", content=big_text(BIG // 3, seed=7))
    task_id = user.post(tasks, json={"toolId": "bulk-download", "params": {"paths": ["big"]}}).json()["taskId"]
    wait_state(user, f"{tasks}/{task_id}", ("Processing",), timeout=30)
    a.kill()
    time.sleep(6)  # the run ends meanwhile; nobody writes it to the index
    assert on_api.get(f"{tasks}/{task_id}").json()["state"] == "Processing"
    assert api_only.health()["supervisor"]["process"] is None
    successor = fleet.add()
    status = wait_state(on_api, f"{tasks}/{task_id}", ("Succeeded", "Failed", "Deleted"), timeout=30)
    assert status["state"] == "Succeeded", status
    assert (status["attempts"], status["progress"]["percent"]) == (1, 100), status
    assert "ended while no supervisor listened" in successor.log_text()
    lines = on_api.get(f"{tasks}/{task_id}/log").json()["lines"]
    assert sum("Archiving 1 files" in line for line in lines) == 1, lines
    assert any("Archive complete" in line for line in lines), lines
    assert len(lines) == len(set(lines)), lines
    result = on_api.get(f"{tasks}/{task_id}/result")
    assert hashlib.sha256(result.content).hexdigest() == status["artifact"]["sha256"]
