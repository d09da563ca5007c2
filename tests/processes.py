"""Helpers for tests that run the service and Dask as real processes."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.harness import ADMIN_TOKEN
from tests.harness import free_port as free_port  # the tests import it from here too


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
    procs: list[subprocess.Popen[bytes]]  # the scheduler, then the workers
    log: Path  # the file their output goes to

    def add_worker(self) -> None:
        """Start one more worker (after one was killed) and wait until every live one is
        connected."""
        self.procs = [self.procs[0], *(p for p in self.procs[1:] if p.poll() is None)]
        self.procs.append(_start_worker(self.address, self.log))
        _wait_for_workers(self.address, len(self.procs) - 1)

    def kill_worker_at(self, address: str) -> None:
        """SIGKILL the ``dask worker`` (nanny and worker process) serving ``address``, for
        good: it is not restarted."""
        from distributed import Client

        with Client(self.address, timeout="30s") as client:
            pid = client.run(os.getpid, workers=[address])[address]
        group = os.getpgid(pid)
        worker = next(p for p in self.procs[1:] if p.pid == group)
        os.killpg(group, signal.SIGKILL)
        worker.wait(timeout=30)

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def kill_scheduler(self) -> None:
        """SIGKILL the scheduler (the first process); the workers are left to themselves."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.procs[0].pid, signal.SIGKILL)
        self.procs[0].wait(timeout=30)

    def kill(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs:
            proc.wait(timeout=30)

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


def _start_worker(address: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:  # the worker keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "2",
             "--host", "127.0.0.1", "--dashboard-address", ":0"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )


def _wait_for_workers(address: str, n_workers: int) -> None:
    from distributed import Client

    with Client(address, timeout="60s") as client:
        client.wait_for_workers(n_workers, timeout=60)


def start_dask(log_dir: Path, n_workers: int = 2, *, port: int | None = None) -> DaskProcesses:
    """A scheduler (on ``port``, or a free one) and ``n_workers`` workers, all connected."""
    port = port or free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = log_dir / "dask.log"
    with open(log, "ab") as out:  # the scheduler keeps its own descriptor
        procs = [subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
             "--port", str(port), "--dashboard-address", ":0"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )]
    procs += [_start_worker(address, log) for _ in range(n_workers)]
    _wait_for_workers(address, n_workers)
    return DaskProcesses(address=address, procs=procs, log=log)


# --- PostgreSQL of its own -------------------------------------------------------------------

def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name))
    if not found:
        raise RuntimeError("PostgreSQL's programs are not installed (see .ci/run)")
    return found[-1].parent


def _as_postgres(*args: str) -> list[str]:
    """Run a PostgreSQL program as the ``postgres`` user when we are root (it refuses root)."""
    if os.geteuid() != 0:
        return list(args)
    return ["su", "postgres", "-c", " ".join(f"'{a}'" for a in args)]


@dataclass
class PostgresServer:
    """A PostgreSQL server of its own (initdb in a temporary folder), which a test may stop
    and start without disturbing any other test."""

    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(_as_postgres(str(_pg_bin() / "pg_ctl"), "-D", str(self.folder / "data"),
                                    *args), check=True, stdout=subprocess.DEVNULL)

    def start(self) -> None:
        self._ctl("-l", str(self.folder / "log"), "-w", "start", "-o",
                  f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                  "-c max_connections=200 -c fsync=off")

    def stop(self) -> None:
        """A fast shutdown: connected clients are disconnected, as in a restart or failover."""
        self._ctl("-m", "fast", "-w", "stop")

    def remove(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def new_database(self) -> str:
        """A fresh, empty database; its SQLAlchemy URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres",
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"


def start_postgres() -> PostgresServer:
    """initdb into a fresh folder under the system's temporary folder (one the ``postgres``
    user can reach, unlike pytest's private ones) and start the server; :meth:`~PostgresServer.
    remove` stops it and deletes the folder."""
    folder = Path(tempfile.mkdtemp(prefix="procplat-test-pg."))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    subprocess.run(_as_postgres(str(_pg_bin() / "initdb"), "-D", str(folder / "data"), "-A",
                                "trust", "-U", "postgres"), check=True, stdout=subprocess.DEVNULL)
    server = PostgresServer(folder=folder, port=free_port())
    server.start()
    return server


# --- the scaled deployment -----------------------------------------------------------------

@dataclass
class ScaledDeployment:
    """API replicas (``procplat serve`` processes) on one PostgreSQL index, one ``dask
    scheduler`` with its workers and one shared data folder."""

    data: Path
    database_url: str | None  # None: SQLite in the data folder
    dask: DaskProcesses
    replicas: list[ServiceProcess] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def add_replica(self) -> ServiceProcess:
        replica = start_service(self.data, env={
            **({"PROCPLAT_DATABASE_URL": self.database_url} if self.database_url else {}),
            "PROCPLAT_DASK_ADDRESS": self.dask.address,
            **self.env,
        })
        self.replicas.append(replica)
        return replica

    def stop(self) -> None:
        for replica in self.replicas:
            replica.terminate()
        self.dask.stop()

    def replace_dask(self, n_workers: int = 2) -> DaskProcesses:
        """A new scheduler (on the same address, as after a failover) and new workers, for
        the scheduler killed by a test (:meth:`DaskProcesses.kill_scheduler`): the old workers
        are SIGKILLed, the work they ran is lost with the old scheduler."""
        self.dask.kill()
        self.dask = start_dask(self.data.parent, n_workers=n_workers, port=self.dask.port)
        return self.dask

    def balanced(self, token: str) -> httpx.Client:
        """A client whose requests go to the replicas in turn, as behind a load balancer."""
        return httpx.Client(base_url="http://replicas", timeout=60,
                            headers={"Authorization": f"Bearer {token}"},
                            transport=RoundRobin([r.url for r in self.replicas]))

    def supervisor(self, timeout: float = 15) -> ServiceProcess:
        """The replica that supervises (waiting until one does)."""
        deadline = time.monotonic() + timeout
        while True:
            leading = [r for r in self.replicas if r.health()["supervisor"]["isThisProcess"]]
            if len(leading) == 1:
                return leading[0]
            assert len(leading) < 2, "two replicas supervise"
            assert time.monotonic() < deadline, "no replica supervises"
            time.sleep(0.1)


class RoundRobin(httpx.BaseTransport):
    """Sends each request to the next of ``urls`` in turn."""

    def __init__(self, urls: list[str]) -> None:
        self._targets = itertools.cycle([httpx.URL(url) for url in urls])
        self._transport = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        target = next(self._targets)
        request.url = request.url.copy_with(host=target.host, port=target.port)
        request.headers["Host"] = target.netloc.decode()
        return self._transport.handle_request(request)

    def close(self) -> None:
        self._transport.close()


class SupervisorWatch:
    """Asks every replica's ``/sys/health`` in turn, again and again in a thread, which ones
    say they supervise: a record of (time, the replicas that did) per round."""

    def __init__(self, replicas: list[ServiceProcess], interval: float = 0.05) -> None:
        self.replicas = replicas
        self.interval = interval
        self.rounds: list[tuple[float, tuple[str, ...]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> SupervisorWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _watch(self) -> None:
        clients = [httpx.Client(base_url=r.url, timeout=10) for r in self.replicas]
        try:
            while not self._stop.is_set():
                leading = []
                for client in clients:
                    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                        if client.get("/sys/health").json()["supervisor"]["isThisProcess"]:
                            leading.append(str(client.base_url))
                self.rounds.append((time.monotonic(), tuple(leading)))
                self._stop.wait(self.interval)
        finally:
            for client in clients:
                client.close()

    def supervising(self, start: float = 0.0, end: float = float("inf")) -> set[tuple[str, ...]]:
        """Every distinct set of replicas that said they supervise, in rounds between ``start``
        and ``end`` (``time.monotonic()`` values)."""
        return {leading for at, leading in self.rounds if start <= at <= end}


def start_scaled(data: Path, database_url: str | None, *, replicas: int = 2, workers: int = 2,
                 env: dict[str, str] | None = None) -> ScaledDeployment:
    data.mkdir(parents=True, exist_ok=True)
    deployment = ScaledDeployment(data=data, database_url=database_url,
                                  dask=start_dask(data.parent, n_workers=workers), env=env or {})
    try:
        for _ in range(replicas):
            deployment.add_replica()
    except BaseException:
        deployment.stop()
        raise
    return deployment


# --- what must hold after a fault ----------------------------------------------------------

ACTIVE_STATES = ("Created", "Enqueued", "Scheduled", "Processing")


def files_on_disk(dataset_root: Path) -> dict[str, tuple[int, str]]:
    """Every file of a dataset (its service folder excluded): path → (size, sha256)."""
    found: dict[str, tuple[int, str]] = {}
    for path in sorted(dataset_root.rglob("*")):
        rel = path.relative_to(dataset_root).as_posix()
        if rel.split("/")[0] == ".ddb" or not path.is_file():
            continue
        found[rel] = (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def files_in_index(client: httpx.Client, dataset_url: str) -> dict[str, tuple[int, str]]:
    response = client.get(f"{dataset_url}/entries", params={"recursive": "true"})
    assert response.status_code == 200, response.text
    return {e["path"]: (e["size"], e["hash"]) for e in response.json() if e["type"] != "directory"}


def assert_index_is_disk(client: httpx.Client, dataset_url: str, dataset_root: Path) -> None:
    assert files_in_index(client, dataset_url) == files_on_disk(dataset_root)


def assert_no_active_task(admin: httpx.Client) -> None:
    response = admin.get("/sys/tasks", params={"take": "200"})
    assert response.status_code == 200, response.text
    active = [(t["taskId"], t["state"]) for t in response.json()["items"]
              if t["state"] in ACTIVE_STATES]
    assert not active, active


def assert_nothing_lost(deployment: ScaledDeployment, client: httpx.Client, dataset_url: str,
                        dataset_root: Path, before: dict[str, tuple[int, str]],
                        *, settle: float = 0) -> None:
    """The files that were there are unchanged, the index equals the disk, no task is active,
    and no work or staging folder is left (after up to ``settle`` seconds: the sweeper removes
    what killed workers left)."""
    on_disk = files_on_disk(dataset_root)
    assert {rel: on_disk.get(rel) for rel in before} == before
    assert_index_is_disk(client, dataset_url, dataset_root)
    with deployment.replicas[0].client() as admin:
        assert_no_active_task(admin)
    work = deployment.data / "work"
    tmp = dataset_root / ".ddb" / "tmp"
    deadline = time.monotonic() + settle
    while left := [p for folder in (work, tmp) if folder.is_dir() for p in folder.iterdir()]:
        assert time.monotonic() < deadline, left
        time.sleep(0.2)
