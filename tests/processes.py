"""Helpers for tests that run the service and Dask as real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ADMIN_TOKEN


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServiceProcess:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def client(self, token: str | None = ADMIN_TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def health(self) -> dict[str, Any]:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            return client.get("/sys/health").json()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the service and everything it started (its Dask cluster included)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def terminate(self) -> None:
        """SIGTERM the service alone and wait for its graceful shutdown."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        finally:
            self.kill()


def start_service(data: Path, *, env: dict[str, str] | None = None, timeout: float = 120,
                  args: tuple[str, ...] = ()) -> ServiceProcess:
    """Run ``procplat serve`` (with ``args``) in its own process group and wait until it is
    healthy."""
    port = free_port()
    log_path = data.parent / f"{data.name}-service-{port}.log"
    full_env = {
        **os.environ,
        "PROCPLAT_DATA": str(data),
        "PROCPLAT_ADMIN_TOKEN": ADMIN_TOKEN,
        "PROCPLAT_DASHBOARD_ADDRESS": ":0",
        "PROCPLAT_PROGRESS_UPDATE_THROTTLE_SECONDS": "0.2",
        **(env or {}),
    }
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "procplat.cli", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "info", *args],
            env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    service = ServiceProcess(proc=proc, url=f"http://127.0.0.1:{port}", log_path=log_path)
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=service.url, timeout=5) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"service exited early:\n{service.log_text()}")
            try:
                if client.get("/sys/health").status_code == 200:
                    return service
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    service.kill()
    raise RuntimeError(f"service did not become healthy:\n{service.log_text()}")


def wait_state(client: httpx.Client, url: str, states: tuple[str, ...], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = client.get(url).json()
        if status["state"] in states:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"still {status['state']} after {timeout}s: {status}")
        time.sleep(0.1)


@dataclass
class DaskProcesses:
    """A real ``dask scheduler`` and ``dask worker`` processes on loopback."""

    address: str
    procs: list[subprocess.Popen[bytes]]

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def kill_scheduler(self) -> None:
        """SIGKILL the scheduler (the first process); the workers are left to themselves."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.procs[0].pid, signal.SIGKILL)
        self.procs[0].wait(timeout=30)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def start_dask(log_dir: Path, n_workers: int = 2, *, port: int | None = None) -> DaskProcesses:
    """A scheduler (on ``port``, or a free one) and ``n_workers`` workers, all connected."""
    port = port or free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    procs: list[subprocess.Popen[bytes]] = []
    log = open(log_dir / "dask.log", "ab")
    procs.append(subprocess.Popen(
        [*dask, "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    ))
    for _ in range(n_workers):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "2",
             "--host", "127.0.0.1", "--dashboard-address", ":0"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        ))
    from distributed import Client

    with Client(address, timeout="60s") as client:
        client.wait_for_workers(n_workers, timeout=60)
    return DaskProcesses(address=address, procs=procs)
