"""Restart safety with real processes: the service is killed (SIGKILL, SIGTERM) while a task
runs and started again on the same data folder."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.harness import big_text
from tests.processes import ServiceProcess, start_dask, start_service, wait_state
from tools import bulk_download
from tools.contract import PrintReporter, ToolContext

BIG = 300_000_000


def _setup(client: httpx.Client) -> tuple[httpx.Client, str]:
    token = client.post("/users", json={"username": "surveyor"}).json()["token"]
    user = httpx.Client(base_url=client.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=120)
    assert user.post("/orgs", json={"slug": "acme"}).status_code == 201
    assert user.post("/orgs/acme/ds", json={"slug": "survey"}).status_code == 201
    return user, "/orgs/acme/ds/survey/tasks"


def _big_download_processing(service: ServiceProcess, n_bytes: int, *,
                             seed: int) -> tuple[httpx.Client, str, str]:
    """A new user's bulk-download of ``n_bytes`` of big text, once it is Processing: the user's
    client, the tasks URL and the task id."""
    user, tasks = _setup(service.client())
    user.put("/orgs/acme/ds/survey/files/big/text.txt", content=big_text(n_bytes, seed=seed))
    task_id = user.post(tasks, json={"toolId": "bulk-download", "params": {"paths": ["big"]}}).json()["taskId"]
    wait_state(user, f"{tasks}/{task_id}", ("Processing",))
    return user, tasks, task_id


def _expected_sha(data: Path, tmp_path: Path, paths: list[str]) -> str:
    """The archive the tool writes for ``paths`` when nothing interrupts it."""
    work = tmp_path / "expected"
    work.mkdir()
    ctx = ToolContext(task_id="expected", dataset_root=data / "datasets" / "acme" / "survey",
                      work_dir=work, reporter=PrintReporter(quiet=True))
    artifact = bulk_download.run({"paths": paths}, ctx).artifact
    assert artifact is not None
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    shutil.rmtree(work)
    return digest


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_task_interrupted_by_service_stop_is_requeued_and_succeeds(tmp_path: Path, how: str) -> None:
    data = tmp_path / "data"
    # two attempts: the interrupted one and the re-run (a stop is not a failed attempt)
    env = {"PROCPLAT_ARTIFACT_TTL_HOURS": str(20 / 3600), "PROCPLAT_SWEEP_INTERVAL_SECONDS": "1",
           "PROCPLAT_MAX_TASK_ATTEMPTS": "2"}
    first = start_service(data, env=env)
    try:
        user, tasks = _setup(first.client())
        user.put("/orgs/acme/ds/survey/files/small.txt", content=b"small")
        user.put("/orgs/acme/ds/survey/files/big/text.txt", content=big_text(BIG, seed=7))
        done_id = user.post(tasks, json={"toolId": "bulk-download", "params": {"paths": ["small.txt"]}}).json()["taskId"]
        wait_state(user, f"{tasks}/{done_id}", ("Succeeded",))
        task_id = user.post(tasks, json={"toolId": "bulk-download", "params": {"paths": ["big"]}}).json()["taskId"]
        wait_state(user, f"{tasks}/{task_id}", ("Processing",))
        time.sleep(0.3)
    finally:
        first.kill() if how == "SIGKILL" else first.terminate()
    if how == "SIGKILL":
        assert not (data / "artifacts" / task_id).exists()

    second = start_service(data, env=env)
    try:
        user.close()
        user = httpx.Client(base_url=second.url, headers=user.headers, timeout=120)
        status = wait_state(user, f"{tasks}/{task_id}", ("Succeeded", "Failed", "Deleted"), timeout=180)
        assert status["state"] == "Succeeded", status
        # the interrupted attempt ran, so it counts, once: the stop itself is no attempt
        assert status["attempts"] == 2, status
        log = user.get(f"{tasks}/{task_id}/log").json()["lines"]
        assert [line for line in log if "starting attempt" in line] == [
            line for line in log if "service restarted; starting attempt 2 of 2" in line], log
        assert any("service restarted; starting attempt 2 of 2" in line for line in log), log
        result = user.get(f"{tasks}/{task_id}/result")
        assert result.status_code == 200
        assert hashlib.sha256(result.content).hexdigest() == status["artifact"]["sha256"]
        assert status["artifact"]["sha256"] == _expected_sha(data, tmp_path, ["big"])
        # the sweeper runs again after the restart: the first task's artifact expires and goes
        deadline = time.monotonic() + 60
        while (data / "artifacts" / done_id).exists():
            assert time.monotonic() < deadline, "artifact TTL sweeping did not resume"
            time.sleep(0.5)
        assert user.get(f"{tasks}/{done_id}/result").status_code == 410
        active = user.get(tasks, params={"state": "Processing"}).json()
        assert active == []
    finally:
        second.kill()


def test_task_gives_up_after_bounded_attempts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"PROCPLAT_MAX_TASK_ATTEMPTS": "1"}
    first = start_service(data, env=env)
    try:
        user, tasks, task_id = _big_download_processing(first, BIG // 2, seed=8)
    finally:
        first.kill()
    second = start_service(data, env=env)
    try:
        user = httpx.Client(base_url=second.url, headers=user.headers, timeout=60)
        status = wait_state(user, f"{tasks}/{task_id}", ("Failed",), timeout=60)
        assert "gave up after 1 attempts" in status["error"]
    finally:
        second.kill()


def test_external_scheduler_task_is_reattached_after_service_restart(tmp_path: Path) -> None:
    dask = start_dask(tmp_path)
    data = tmp_path / "data"
    env = {"PROCPLAT_DASK_ADDRESS": dask.address}
    try:
        first = start_service(data, env=env)
        try:
            user, tasks, task_id = _big_download_processing(first, BIG, seed=9)
        finally:
            first.terminate()
        second = start_service(data, env=env)
        try:
            user = httpx.Client(base_url=second.url, headers=user.headers, timeout=60)
            status = wait_state(user, f"{tasks}/{task_id}", ("Succeeded", "Failed"), timeout=120)
            assert status["state"] == "Succeeded", status
            assert status["attempts"] == 1, "the running future should be re-attached, not re-run"
            assert "re-attaching task" in second.log_text()
            result = user.get(f"{tasks}/{task_id}/result")
            assert hashlib.sha256(result.content).hexdigest() == status["artifact"]["sha256"]
        finally:
            second.kill()
    finally:
        dask.stop()
