"""A shared Dask scheduler dies mid-task and a new one takes its place, with real processes
(``procplat serve``, ``dask scheduler``, ``dask worker``): reads never wait on Dask, the
health check says the scheduler is gone, submissions meanwhile are queued, and once a
scheduler answers again the service reconnects by itself, renews its event subscription and
re-queues what the old scheduler lost, whose progress and log reach the index."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import httpx

from tests.processes import DaskProcesses, ServiceProcess, start_dask, start_service, wait_state
from tests.test_restart import _setup
from tests.test_tasks_api import big_text

BIG = 100_000_000  # ~3 s of deflate: long enough to be killed mid-run
FAST_READ_SECONDS = 1.0


def _timed_get(user: httpx.Client, url: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = user.get(url)
    return response, time.monotonic() - started


def _check_reads_answer_fast(user: httpx.Client, tasks: str, task_id: str) -> None:
    for url in (f"{tasks}/{task_id}", tasks, "/sys/features", f"{tasks}/{task_id}/log"):
        response, took = _timed_get(user, url)
        assert response.status_code == 200, (url, response.text)
        assert took < FAST_READ_SECONDS, f"{url} took {took:.1f}s while the scheduler was down"


def _wait_health(service: ServiceProcess, code: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=service.url, timeout=10) as client:
        while (got := client.get("/sys/health").status_code) != code:
            assert time.monotonic() < deadline, f"/sys/health still {got}, expected {code}"
            time.sleep(0.2)


def _start_running_task(tmp_path: Path, replicas: int = 1) -> tuple[
        DaskProcesses, list[ServiceProcess], httpx.Client, str, str]:
    """A scheduler, two workers, ``replicas`` services (the first supervises) and a task
    running on them."""
    dask = start_dask(tmp_path)
    env = {"PROCPLAT_DASK_ADDRESS": dask.address,
           "PROCPLAT_MAX_CONCURRENT_BULK_DOWNLOADS_PER_USER": "4"}
    services = [start_service(tmp_path / "data", env=env) for _ in range(replicas)]
    user, tasks = _setup(services[0].client())
    user.put("/orgs/acme/ds/survey/files/big/text.txt", content=big_text(BIG, seed=3))
    task_id = user.post(tasks, json={"toolId": "bulk-download", "params": {"paths": ["big"]}}).json()["taskId"]
    wait_state(user, f"{tasks}/{task_id}", ("Processing",))
    return dask, services, user, tasks, task_id


def _assert_rerun_reported(user: httpx.Client, tasks: str, task_id: str) -> dict[str, Any]:
    """The task succeeded after the outage with its progress and log lines in the index."""
    status = wait_state(user, f"{tasks}/{task_id}", ("Succeeded", "Failed", "Deleted"), timeout=60)
    assert status["state"] == "Succeeded", status
    assert status["progress"]["percent"] == 100, status
    lines = user.get(f"{tasks}/{task_id}/log").json()["lines"]
    assert any("Archive complete" in line for line in lines), lines
    result = user.get(f"{tasks}/{task_id}/result")
    assert hashlib.sha256(result.content).hexdigest() == status["artifact"]["sha256"]
    return status


def test_new_scheduler_soon_after_a_dead_one_gets_progress_and_log(tmp_path: Path) -> None:
    dask, (service,), user, tasks, task_id = _start_running_task(tmp_path)
    new_dask = None
    try:
        seen_progress = user.get(f"{tasks}/{task_id}").json()["progress"]["percent"]
        dask.kill_scheduler()
        _wait_health(service, 503, timeout=10)
        _check_reads_answer_fast(user, tasks, task_id)
        dask.stop()
        new_dask = start_dask(tmp_path, port=dask.port)  # well within the client's 30 s
        _wait_health(service, 200, timeout=30)
        # the re-run reports progress while it runs, not only at the end
        deadline = time.monotonic() + 30
        percents = set()
        while (status := user.get(f"{tasks}/{task_id}").json())["state"] != "Succeeded":
            assert time.monotonic() < deadline, status
            if status["attempts"] == 2 and status["state"] == "Processing":
                percents.add(status["progress"]["percent"])
            time.sleep(0.1)
        assert any(0 < p < 100 for p in percents), (seen_progress, percents)
        status = _assert_rerun_reported(user, tasks, task_id)
        assert status["attempts"] == 2, status
        # a task submitted after the reconnect has its log too
        later = user.post(tasks, json={"toolId": "bulk-download", "params": {"paths": ["big"]},
                                       "force": True}).json()["taskId"]
        _assert_rerun_reported(user, tasks, later)
    finally:
        service.kill()
        dask.stop()
        if new_dask is not None:
            new_dask.stop()


def test_scheduler_outage_longer_than_the_client_timeout_is_survived(tmp_path: Path) -> None:
    """With two replicas: the supervisor's client gives up after 30 s; the service does not."""
    dask, (service, other), user, tasks, task_id = _start_running_task(tmp_path, replicas=2)
    new_dask = None
    try:
        on_other = httpx.Client(base_url=other.url, headers=user.headers, timeout=60)
        dask.kill_scheduler()
        dask.stop()
        for replica, client in ((service, user), (other, on_other)):
            _wait_health(replica, 503, timeout=10)
            _check_reads_answer_fast(client, tasks, task_id)
        submitted = on_other.post(tasks, json={"toolId": "bulk-download",
                                               "params": {"paths": ["big"]}, "force": True})
        assert submitted.status_code in (202, 503), submitted.text
        time.sleep(33)  # past the Dask client's own 30 s of reconnecting
        _check_reads_answer_fast(user, tasks, task_id)
        assert user.get("/sys/health").status_code == 503
        new_dask = start_dask(tmp_path, port=dask.port)
        _wait_health(service, 200, timeout=30)
        _wait_health(other, 200, timeout=30)
        status = _assert_rerun_reported(user, tasks, task_id)
        assert status["attempts"] == 2, status
        if submitted.status_code == 202:
            _assert_rerun_reported(on_other, tasks, submitted.json()["taskId"])
        after = user.post(tasks, json={"toolId": "bulk-download", "params": {"paths": ["big"]},
                                       "force": True})
        assert after.status_code == 202, after.text
        _assert_rerun_reported(user, tasks, after.json()["taskId"])
        assert "ClosedClientError" not in service.log_text() + other.log_text()
    finally:
        service.kill()
        other.kill()
        dask.stop()
        if new_dask is not None:
            new_dask.stop()
