"""How task endings show in the logs, over real HTTP with real processes: a user's cancel and a
tool's clean failure (``ToolError``) are outcomes, one INFO / WARNING line each in the
service's log and nothing in the Dask workers' logs; only a bug logs a traceback, once."""

from __future__ import annotations

import io
import logging
import re
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from distributed import Client
from rasterio.windows import Window

from tests import broken_tool
from tests.harness import World, big_text, new_world, write_geotiff_by_windows
from tests.processes import ServiceProcess, start_dask, start_service, wait_state

PROCPLAT_LINE = re.compile(r" procplat\.\S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def busy_raster(path: Path, size: int = 4096) -> Path:
    """A 4-band raster of noise (slow to render and encode), written in a second."""
    tile = np.random.default_rng(1).integers(1, 255, (4, 512, 512), dtype=np.uint8)
    tiles = ((Window(col, row, 512, 512), tile)
             for row in range(0, size, 512) for col in range(0, size, 512))
    return write_geotiff_by_windows(path, tiles, count=4, height=size, width=size,
                                    dtype="uint8", nodata=0, tile=512, compress="deflate",
                                    zlevel=1, photometric="MINISBLACK")


@pytest.fixture(params=["local-cluster", "dask-processes"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ServiceProcess, list[Path]]]:
    """``procplat serve`` as a process, its log file and the Dask workers' log files: the
    in-process LocalCluster's worker processes write into the service's log; ``dask worker``
    processes into their own."""
    dask = start_dask(tmp_path) if request.param == "dask-processes" else None
    env = {"PROCPLAT_DASK_ADDRESS": dask.address} if dask is not None else {}
    service = start_service(tmp_path / "data", env=env)
    try:
        yield service, [service.log_path] + ([tmp_path / "dask.log"] if dask else [])
    finally:
        service.kill()
        if dask is not None:
            dask.stop()


def procplat_lines_about(text: str, task_id: str) -> list[str]:
    return [line for line in text.splitlines() if task_id in line and PROCPLAT_LINE.search(line)]


def cancel_while_running(user: httpx.Client, tasks: str, task_id: str, work: Path,
                         phase: str) -> None:
    deadline = time.monotonic() + 60
    while user.get(f"{tasks}/{task_id}").json()["progress"]["phase"] != phase:
        assert time.monotonic() < deadline, f"{task_id} never reached {phase}"
        time.sleep(0.05)
    time.sleep(0.3)  # the pieces fanned out over the cluster are running
    assert user.delete(f"{tasks}/{task_id}").json()["state"] == "Deleted"
    deadline = time.monotonic() + 20
    while any(p.name.startswith(task_id) for p in work.iterdir()):
        assert time.monotonic() < deadline, f"{task_id} did not stop"
        time.sleep(0.05)


def test_cancel_and_tool_error_are_one_line_each_without_tracebacks(
    service: tuple[ServiceProcess, list[Path]], tmp_path: Path
) -> None:
    svc, logs = service
    admin = svc.client()
    token = admin.post("/users", json={"username": "surveyor"}).json()["token"]
    user = httpx.Client(base_url=svc.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert user.post("/orgs", json={"slug": "acme"}).status_code == 201
    assert user.post("/orgs/acme/ds", json={"slug": "survey"}).status_code == 201
    ds = "/orgs/acme/ds/survey"
    tasks = f"{ds}/tasks"
    work = tmp_path / "data" / "work"

    # a cancel of a bulk-download deflating pieces on the cluster (tools.runtime.fanout)
    user.put(f"{ds}/files/big/text.txt", content=big_text(120_000_000, seed=4))
    archive = user.post(tasks, json={"toolId": "bulk-download", "params": {"paths": ["big"]}})
    archive_id = archive.json()["taskId"]
    wait_state(user, f"{tasks}/{archive_id}", ("Processing",))
    cancel_while_running(user, tasks, archive_id, work, "archiving")

    # a cancel of a raster-export rendering COG pieces on the cluster (tools.raster.cog)
    user.put(f"{ds}/files/noise.tif", content=busy_raster(tmp_path / "noise.tif").read_bytes())
    export = user.post(tasks, json={"toolId": "raster-export",
                                    "params": {"path": "noise.tif", "formula": "VARI"}})
    export_id = export.json()["taskId"]
    cancel_while_running(user, tasks, export_id, work, "rendering")

    # a tool's clean failure at run time: an archive with an unsafe member
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as zf:
        zf.writestr("../evil.txt", "x")
    user.put(f"{ds}/files/evil.zip", content=packed.getvalue())
    extract = user.post(tasks, json={"toolId": "archive-extract",
                                     "params": {"sourcePath": "evil.zip"}})
    extract_id = extract.json()["taskId"]
    failed = wait_state(user, f"{tasks}/{extract_id}", ("Failed", "Succeeded"))
    assert failed["state"] == "Failed" and "unsafe archive member" in failed["error"], failed

    time.sleep(1.5)  # anything the workers would still log about the stopped pieces
    text = "\n".join(path.read_text(errors="replace") for path in logs)
    assert "Compute Failed" not in text, text
    assert "Traceback" not in text, text
    for task_id, tool in ((archive_id, "bulk-download"), (export_id, "raster-export")):
        lines = procplat_lines_about(text, task_id)
        assert len(lines) == 1 and " INFO " in lines[0], lines
        assert f"task {task_id} ({tool}) cancelled by surveyor" in lines[0]
    lines = procplat_lines_about(text, extract_id)
    assert len(lines) == 1 and " WARNING " in lines[0], lines
    assert "(archive-extract) failed: unsafe archive member '../evil.txt'" in lines[0]


def compute_failures(dask_address: str, task_id: str) -> int:
    with Client(dask_address, timeout="30s") as client:
        logs = client.get_worker_logs()
    return sum("Compute Failed" in msg and task_id in msg for lines in logs.values()
               for _level, msg in lines)


@pytest.mark.parametrize(("in_piece", "where"), [
    (False, "value = 1 / files"), (True, "return 1 / files"),
])
def test_a_bug_in_a_tool_fails_the_task_and_logs_its_traceback_once(
    make_server, dask_address: str, caplog: pytest.LogCaptureFixture, in_piece: bool, where: str
) -> None:
    """In the tool's run or in a piece it fans out over the cluster: one ERROR in the
    service's log with the traceback of where it happened, no "Compute Failed" on a worker."""
    live = make_server()
    live.app_state.supervisor.registry.register(broken_tool)
    world: World = new_world(live)
    caplog.set_level(logging.INFO, logger="procplat")
    response = world.submit("broken-tool", {"inPiece": in_piece})
    assert response.status_code == 202, response.text
    task_id = response.json()["taskId"]
    status = world.wait(task_id)
    assert status["state"] == "Failed"
    assert status["error"] == "ZeroDivisionError: division by zero"
    def about() -> list[logging.LogRecord]:
        return [r for r in caplog.records
                if r.name.startswith("procplat") and task_id in r.getMessage()]

    deadline = time.monotonic() + 5
    while not about():
        assert time.monotonic() < deadline, "the failure was not logged"
        time.sleep(0.05)
    time.sleep(0.5)
    records = about()
    assert len(records) == 1 and records[0].levelno == logging.ERROR, records
    message = records[0].getMessage()
    assert "broken_tool.py" in message and where in message, message
    assert message.count("Traceback (most recent call last)") == 1, message
    assert compute_failures(dask_address, task_id) == 0
