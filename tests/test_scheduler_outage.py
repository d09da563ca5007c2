"""A shared Dask scheduler SIGKILLed mid-task and a new one started in its place, with real
processes: two API replicas (``procplat serve``, one of them the supervisor) on PostgreSQL
(when the suite has one), a ``dask scheduler`` and two ``dask worker`` processes, the requests
going to the replicas in turn. While no scheduler answers, reads never wait on Dask, both
replicas' health checks say the scheduler is gone, and a submission is queued (202) or refused
with a clear 503, never a 500. Once a scheduler answers again the service reconnects by itself
(the Dask client reconnecting within its connect timeout, or, after a longer outage, a new
client made in place of the one that gave up), renews its event subscription and re-queues
what the old scheduler lost, whose progress and log reach the index; an attempt interrupted on
the task's last attempt fails it, with an error naming the limit. Nothing is lost.

The Dask connect timeout is short here (``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT``), so
the outage that outlasts it is short too.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import DATABASES, fresh_database_url
from tests.processes import (
    ScaledDeployment,
    ServiceProcess,
    assert_nothing_lost,
    files_on_disk,
    start_scaled,
    wait_state,
)
from tests.test_tasks_api import big_text

BIG = 100_000_000  # ~3 s of deflate: long enough to be killed mid-run
LONG = 200_000_000  # ~6 s: killed in its first attempt, and again in its second
FAST_READ_SECONDS = 1.0
MAX_ATTEMPTS = 2
CONNECT_TIMEOUT = 20  # seconds the Dask client reconnects by itself before it gives up
DATASET = "/orgs/acme/ds/survey"
TASKS = f"{DATASET}/tasks"
FINAL = ("Succeeded", "Failed", "Deleted")

# the module's processes start within its first test's time
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScaledDeployment]:
    deployment = start_scaled(
        tmp_path_factory.mktemp("outage") / "data", fresh_database_url(DATABASES[-1]), env={
            "PROCPLAT_MAX_TASK_ATTEMPTS": str(MAX_ATTEMPTS),
            "PROCPLAT_MAX_CONCURRENT_BULK_DOWNLOADS_PER_USER": "8",
            "PROCPLAT_SWEEP_INTERVAL_SECONDS": "1",
            "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": f"{CONNECT_TIMEOUT}s",
        })
    try:
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture(scope="module")
def user(scaled: ScaledDeployment) -> Iterator[httpx.Client]:
    """The owner of ``acme/survey``, its requests spread over the replicas."""
    with scaled.replicas[0].client() as admin:
        token = str(admin.post("/users", json={"username": "surveyor"}).json()["token"])
    with scaled.balanced(token) as user:
        assert user.post("/orgs", json={"slug": "acme"}).status_code == 201
        assert user.post("/orgs/acme/ds", json={"slug": "survey"}).status_code == 201
        yield user


def _timed_get(client: httpx.Client, url: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = client.get(url)
    return response, time.monotonic() - started


def _check_reads_answer_fast(client: httpx.Client, task_id: str) -> None:
    for url in (f"{TASKS}/{task_id}", TASKS, "/sys/features", f"{TASKS}/{task_id}/log"):
        response, took = _timed_get(client, url)
        assert response.status_code == 200, (url, response.text)
        assert took < FAST_READ_SECONDS, f"{url} took {took:.1f}s while the scheduler was down"


def _wait_health(service: ServiceProcess, code: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=service.url, timeout=10) as client:
        while (got := client.get("/sys/health").status_code) != code:
            assert time.monotonic() < deadline, f"/sys/health still {got}, expected {code}"
            time.sleep(0.2)


def _on_each(scaled: ScaledDeployment, user: httpx.Client) -> list[httpx.Client]:
    return [httpx.Client(base_url=r.url, headers=user.headers, timeout=60)
            for r in scaled.replicas]


def _submit(client: httpx.Client, folder: str) -> httpx.Response:
    return client.post(TASKS, json={"toolId": "bulk-download", "params": {"paths": [folder]},
                                    "force": True})


def _task(client: httpx.Client, folder: str) -> str:
    response = _submit(client, folder)
    assert response.status_code == 202, response.text
    return str(response.json()["taskId"])


def _while_no_scheduler(scaled: ScaledDeployment, user: httpx.Client,
                        task_id: str) -> list[httpx.Response]:
    """Both replicas' health is 503 and their reads answer at once; a submission on each is
    queued or refused clearly (their responses)."""
    submitted = []
    for replica, client in zip(scaled.replicas, _on_each(scaled, user), strict=True):
        _wait_health(replica, 503, timeout=10)
        assert replica.health()["dask"] is False
        _check_reads_answer_fast(client, task_id)
        response = _submit(client, "small")
        assert response.status_code in (202, 503), response.text  # never a 500
        if response.status_code == 503:
            assert response.json()["error"], response.text
        submitted.append(response)
    return submitted


def _wait_until_logged(replica: ServiceProcess, pattern: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, replica.log_text()):
        assert time.monotonic() < deadline, f"{pattern!r} not in the log of {replica.url}"
        time.sleep(0.2)


def _assert_rerun_reported(user: httpx.Client, task_id: str, attempts: int) -> dict[str, Any]:
    """The task succeeded, on its ``attempts``-th attempt, with its progress and log lines in
    the index and its artifact whole."""
    status = wait_state(user, f"{TASKS}/{task_id}", FINAL, timeout=90)
    assert status["state"] == "Succeeded", status
    assert (status["attempts"], status["progress"]["percent"]) == (attempts, 100), status
    lines = user.get(f"{TASKS}/{task_id}/log").json()["lines"]
    assert any("Archive complete" in line for line in lines), lines
    result = user.get(f"{TASKS}/{task_id}/result")
    assert hashlib.sha256(result.content).hexdigest() == status["artifact"]["sha256"]
    return status


def _running(user: httpx.Client, task_id: str, attempt: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (status := user.get(f"{TASKS}/{task_id}").json())["state"] != "Processing" \
            or status["attempts"] != attempt:
        assert status["state"] not in FINAL and time.monotonic() < deadline, status
        time.sleep(0.1)


def _log(user: httpx.Client, task_id: str) -> list[str]:
    return list(user.get(f"{TASKS}/{task_id}/log").json()["lines"])


def test_scheduler_killed_mid_task_requeues_it_until_the_attempt_limit(
    scaled: ScaledDeployment, user: httpx.Client
) -> None:
    """Two outages: a new scheduler soon after the first (the client reconnects by itself),
    a longer second one (the client gives up and a new one is made). The long task both
    interrupt is re-queued after the first, reports its re-run, and fails at the attempt limit
    after the second; the task the second one interrupts on its first attempt is re-queued
    and succeeds."""
    user.put(f"{DATASET}/files/small/text.txt", content=b"small\n")
    user.put(f"{DATASET}/files/big/text.txt", content=big_text(BIG, seed=3))
    user.put(f"{DATASET}/files/long/text.txt", content=big_text(LONG, seed=4))
    root = scaled.data / "datasets" / "acme" / "survey"
    before = files_on_disk(root)
    long_id = _task(user, "long")
    _running(user, long_id, 1)
    supervisor = scaled.supervisor()

    # 1. killed, and a new scheduler well within the client's connect timeout
    scaled.dask.kill_scheduler()
    meanwhile = _while_no_scheduler(scaled, user, long_id)
    scaled.replace_dask()
    for replica in scaled.replicas:
        _wait_health(replica, 200, timeout=30)
    _wait_until_logged(supervisor, "reconnected to the Dask scheduler", timeout=5)
    # the re-run reports progress and log lines while it runs (the subscription was renewed)
    _running(user, long_id, 2)
    deadline = time.monotonic() + 60
    while not 0 < (status := user.get(f"{TASKS}/{long_id}").json())["progress"]["percent"] < 100:
        assert status["state"] == "Processing" and time.monotonic() < deadline, status
        time.sleep(0.1)
    lines = _log(user, long_id)
    assert any("starting attempt 2 of 2" in line for line in lines), lines
    assert sum("Archiving 1 files" in line for line in lines) == 2, lines
    for response in meanwhile:  # queued while no scheduler answered: run once one does
        if response.status_code == 202:
            _assert_rerun_reported(user, response.json()["taskId"], attempts=1)

    # 2. killed again, for longer than the client's connect timeout, while the long task runs
    # its last attempt and one submitted after the reconnect its first
    later_id = _task(user, "big")
    _running(user, later_id, 1)
    assert user.get(f"{TASKS}/{long_id}").json()["state"] == "Processing"
    scaled.dask.kill_scheduler()
    meanwhile = _while_no_scheduler(scaled, user, long_id)
    for replica in scaled.replicas:  # the Dask client gave up
        _wait_until_logged(replica, "Failed to reconnect to scheduler after",
                           timeout=CONNECT_TIMEOUT + 10)
    _check_reads_answer_fast(user, long_id)
    assert all(r.health()["dask"] is False for r in scaled.replicas)
    scaled.replace_dask()
    for replica in scaled.replicas:  # ... and a new one was made
        _wait_health(replica, 200, timeout=30)
        _wait_until_logged(replica, "connected to a new Dask scheduler", timeout=5)
    _assert_rerun_reported(user, later_id, attempts=2)
    failed = wait_state(user, f"{TASKS}/{long_id}", FINAL, timeout=60)
    assert (failed["state"], failed["attempts"], failed["artifact"]) == (
        "Failed", MAX_ATTEMPTS, None), failed
    assert f"gave up after {MAX_ATTEMPTS} attempts" in failed["error"], failed
    assert f"MaxTaskAttempts is {MAX_ATTEMPTS}" in failed["error"], failed
    for response in meanwhile:
        if response.status_code == 202:
            _assert_rerun_reported(user, response.json()["taskId"], attempts=1)
    _assert_rerun_reported(user, _task(user, "small"), attempts=1)

    logs = "".join(r.log_text() for r in scaled.replicas)
    assert "ClosedClientError" not in logs and "internal error" not in logs
    assert_nothing_lost(scaled, user, DATASET, root, before, settle=10)
