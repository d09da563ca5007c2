"""Service latency and submission throughput of procplat against the raw Dask baseline.

Starts, in this process, a Dask cluster (a LocalCluster with 2 worker processes of 1 thread,
like the service's default on a 2-core machine; or ``--external``: ``dask scheduler`` +
2 ``dask worker`` processes) and the service (uvicorn on a thread, 127.0.0.1, free port,
data in a temporary folder) using that cluster, then measures:

1. latency: POST .../tasks of a tiny bulk-download (one small file, a distinct archiveName
   per run so dedup does not answer) → the first GET .../tasks/{id} that shows Succeeded
   (polled every ``--poll-ms``), sequentially, ``--runs`` runs after ``--warmup`` warm-ups;
2. baselines on the SAME cluster: ``Client.submit(trivial, pure=False).result()``, the
   worker-side ``run_job`` of the same bulk-download (what the service runs), and the bare
   ``tools.bulk_download.run`` with a no-op reporter;
3. throughput: ``--concurrency`` concurrent requests (asyncio in a separate load process,
   so the load generator does not share the service's GIL) for ``--seconds`` per
   phase: pure dedup hits, mixed (``--mix-distinct`` of distinct submissions), then all
   distinct submissions. Status codes are counted per phase. The load process uses a
   minimal keep-alive HTTP/1.1 client: httpx.AsyncClient tops out at ~190 requests/s on this
   machine, below the target being measured.

Run:  /work/venv/bin/python benchmarks/bench_service.py  [--runs 100 --seconds 10 ...]
``--phases`` also prints where the service latency goes (timestamps taken by wrapping the
service's methods in this process; workers report theirs through the task events).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.harness import LiveServer, free_port, start_server

ADMIN_TOKEN = "bench-admin-token"
TOOL = "bulk-download"
TINY_FILE = "tiny.txt"
TINY_CONTENT = b"procplat benchmark: a tiny file\n" * 4

# Quotas used by the benchmark service: generous, so the concurrency quotas do not throttle
# the throughput phases by default (dedup hits bypass quotas anyway).
GENEROUS_QUOTAS = {
    "max_concurrent_tasks_global": 2000,
    "max_concurrent_tasks_per_org": 2000,
    "max_queued_tasks_per_user": 2000,
    "max_concurrent_bulk_downloads_per_user": 2000,
}


# ------------------------------------------------------------------------------------------
# statistics and printing
# ------------------------------------------------------------------------------------------
def pct(values: list[float], p: float) -> float:
    """Percentile with linear interpolation (p in 0..100)."""
    if not values:
        return float("nan")
    data = sorted(values)
    k = (len(data) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f}"


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values) if values else float("nan"),
        "p95": pct(values, 95),
        "mean": statistics.fmean(values) if values else float("nan"),
        "min": min(values) if values else float("nan"),
        "max": max(values) if values else float("nan"),
        "n": len(values),
    }


# ------------------------------------------------------------------------------------------
# functions run on the Dask workers (module level: they are pickled by reference)
# ------------------------------------------------------------------------------------------
def trivial(x: int) -> int:
    return x + 1


def bare_bulk_download(params: dict[str, Any], dataset_root: str, work_root: str) -> int:
    """``tools.bulk_download.run`` alone: no events, no cancel Event, no artifact store."""
    from tools import bulk_download
    from tools.contract import PrintReporter, ToolContext

    work_dir = Path(work_root) / uuid.uuid4().hex
    work_dir.mkdir(parents=True)
    try:
        ctx = ToolContext(task_id="bare", dataset_root=Path(dataset_root), work_dir=work_dir,
                          reporter=PrintReporter(quiet=True))
        result = bulk_download.run(params, ctx)
        return result.artifact.stat().st_size if result.artifact else 0
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# the cluster and the service
# ------------------------------------------------------------------------------------------
class ExternalCluster:
    """``dask scheduler`` + 2 ``dask worker`` processes (1 thread each)."""

    def __init__(self, workdir: Path, pythonpath: Path | None = None) -> None:
        port = free_port()
        self.scheduler_address = f"tcp://127.0.0.1:{port}"
        dask = str(Path(sys.executable).with_name("dask"))
        env = {**os.environ, "GDAL_CACHEMAX": "256", "PYTHONPATH": str(pythonpath or Path.cwd())}
        logs = workdir / "dask-logs"
        logs.mkdir()
        self.procs = [subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--dashboard-address", ":0"],
            stdout=open(logs / "scheduler.log", "wb"), stderr=subprocess.STDOUT, env=env,
        )]
        for i in range(2):
            self.procs.append(subprocess.Popen(
                [dask, "worker", self.scheduler_address, "--nthreads", "1", "--nworkers", "1",
                 "--no-dashboard", "--local-directory", str(workdir / f"w{i}")],
                stdout=open(logs / f"worker{i}.log", "wb"), stderr=subprocess.STDOUT, env=env,
            ))

    def wait(self, client: Any, n: int = 2) -> None:
        client.wait_for_workers(n, timeout=60)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


# ------------------------------------------------------------------------------------------
# phase timestamps (--phases): wrap service methods of this process
# ------------------------------------------------------------------------------------------
_SUBMIT_MARKS: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar(
    "bench_submit_marks", default=None)
_CONCLUDE_MARKS: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar(
    "bench_conclude_marks", default=None)
MARKS: dict[str, dict[str, float]] = defaultdict(dict)


def _mark(var: contextvars.ContextVar[dict[str, float] | None], name: str) -> None:
    marks = var.get()
    if marks is not None and name not in marks:
        marks[name] = time.time()


def install_phase_marks() -> None:
    """Record wall-clock timestamps (time.time(), comparable with the workers') per task."""
    from procplat.core.datasets import Datasets
    from procplat.core.registry import RegisteredTool
    from procplat.core.supervisor import Supervisor
    from procplat.core.tasks import Tasks
    from procplat.engine.engine import Engine

    def around_sync(cls: Any, name: str, var: contextvars.ContextVar[Any], label: str) -> None:
        original = getattr(cls, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            _mark(var, f"{label}.start")
            try:
                return original(*args, **kwargs)
            finally:
                _mark(var, f"{label}.end")

        setattr(cls, name, wrapper)

    def around_async(cls: Any, name: str, var: contextvars.ContextVar[Any], label: str) -> None:
        original = getattr(cls, name)

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            _mark(var, f"{label}.start")
            try:
                return await original(*args, **kwargs)
            finally:
                _mark(var, f"{label}.end")

        setattr(cls, name, wrapper)

    # submit side
    original_submit = Tasks.submit

    async def submit(self: Any, *args: Any, **kwargs: Any) -> Any:
        marks = {"submit.start": time.time()}
        _SUBMIT_MARKS.set(marks)
        result = await original_submit(self, *args, **kwargs)
        marks["submit.end"] = time.time()
        if result.created:
            MARKS[result.task_id].update(marks)
        return result

    Tasks.submit = submit  # type: ignore[method-assign]
    around_sync(Datasets, "open", _SUBMIT_MARKS, "open")
    around_sync(RegisteredTool, "check_params", _SUBMIT_MARKS, "check")
    around_sync(Tasks, "_insert_or_dedup", _SUBMIT_MARKS, "insert")
    around_sync(Engine, "enqueue", _SUBMIT_MARKS, "enqueue")
    around_sync(Supervisor, "_mark_enqueued", _SUBMIT_MARKS, "markEnqueued")

    # worker events (timestamps from the workers' clocks) and their arrival
    original_event = Engine._on_worker_event

    def on_event(self: Any, event: Any) -> None:
        stamp, msg = event
        if isinstance(msg, dict) and isinstance(msg.get("t"), str):
            marks = MARKS[msg["t"]]
            if msg.get("k") == "start":
                marks.setdefault("worker.start", stamp)
                marks.setdefault("event.startArrived", time.time())
            elif msg.get("k") == "log" and "Archive complete" in str(msg.get("m")):
                marks.setdefault("worker.toolDone", stamp)
                marks.setdefault("event.doneArrived", time.time())
            elif msg.get("k") == "progress" and msg.get("f") == 1.0 and msg.get("p") != "archiving":
                marks.setdefault("worker.end", stamp)
        original_event(self, event)

    Engine._on_worker_event = on_event  # type: ignore[method-assign]

    # completion side
    original_finish = Engine._finish

    async def finish(self: Any, future: Any, job: Any) -> None:
        MARKS[job.task_id].setdefault("finish.start", time.time())
        await original_finish(self, future, job)

    Engine._finish = finish  # type: ignore[method-assign]
    original_outcome_of = Engine._outcome_of

    async def outcome_of(self: Any, future: Any, job: Any) -> Any:
        try:
            return await original_outcome_of(self, future, job)
        finally:
            MARKS[job.task_id].setdefault("gather.end", time.time())

    Engine._outcome_of = outcome_of  # type: ignore[method-assign]

    original_conclude = Supervisor._conclude

    async def conclude(self: Any, outcome: Any) -> None:
        marks = MARKS[outcome.task_id]
        marks["conclude.start"] = time.time()
        _CONCLUDE_MARKS.set(marks)
        try:
            await original_conclude(self, outcome)
        finally:
            marks["conclude.end"] = time.time()

    Supervisor._conclude = conclude  # type: ignore[method-assign]
    around_async(Supervisor, "flush", _CONCLUDE_MARKS, "flush")
    around_sync(Supervisor, "_record_outcome", _CONCLUDE_MARKS, "record")
    around_async(Engine, "forget_cancel_event", _CONCLUDE_MARKS, "forgetEvent")


# (label, from mark, to mark): consecutive steps of one task, as seen by the service
PHASE_STEPS = [
    ("client POST sent -> Tasks.submit entered (HTTP, JSON, auth)", "client.post", "submit.start"),
    ("  datasets.open (thread hop + DB read)", "submit.start", "open.end"),
    ("  check_params (schema + tool validate)", "open.end", "check.end"),
    ("  _insert_or_dedup (thread hop + write txn)", "check.end", "insert.end"),
    ("  start_task: DB read for the Job + client.submit", "insert.end", "enqueue.end"),
    ("  _mark_enqueued (thread hop + write txn)", "enqueue.end", "markEnqueued.end"),
    ("Tasks.submit total", "submit.start", "submit.end"),
    ("Tasks.submit returned -> client got 202", "submit.end", "client.posted"),
    ("client.submit -> worker run_job started (scheduler)", "enqueue.end", "worker.start"),
    ("worker: run_job start -> tool done", "worker.start", "worker.toolDone"),
    ("worker: tool done -> run_job returns (store artifact)", "worker.toolDone", "worker.end"),
    ("run_job returned -> done callback on the loop", "worker.end", "finish.start"),
    ("  result gathered from the worker (await future)", "finish.start", "gather.end"),
    ("  -> _conclude started", "gather.end", "conclude.start"),
    ("  _conclude: last log lines + outcome -> Succeeded committed", "conclude.start",
     "record.end"),
    ("  _conclude: forget_cancel_event (scheduler RPC)", "record.end", "conclude.end"),
    ("task Succeeded committed -> client saw it (polling)", "record.end", "client.seen"),
    ("TOTAL client POST -> client saw Succeeded", "client.post", "client.seen"),
]


def phase_table(task_ids: list[str]) -> list[tuple[str, float, float, int]]:
    rows = []
    for label, a, b in PHASE_STEPS:
        deltas = [MARKS[t][b] - MARKS[t][a] for t in task_ids if a in MARKS[t] and b in MARKS[t]]
        rows.append((label, statistics.median(deltas) if deltas else float("nan"),
                     pct(deltas, 95), len(deltas)))
    return rows


# ------------------------------------------------------------------------------------------
# the load generator (a separate process)
# ------------------------------------------------------------------------------------------
def load_process(url: str, token: str, tasks_url: str, mode: str, distinct_share: float,
                 seconds: float, concurrency: int, seed: str, out: Any) -> None:
    """``concurrency`` keep-alive connections, each POSTing back to back for ``seconds``.

    A minimal asyncio HTTP/1.1 client (fixed request, Content-Length framed responses, which
    is all the service sends for these routes): on this 2-core machine httpx.AsyncClient
    saturates a core at ~190 requests/s (measured on GET /sys/features) and would measure
    itself rather than the service.
    """
    host, port = url.removeprefix("http://").split(":")

    def request(name: str) -> bytes:
        body = json.dumps({"toolId": TOOL, "params": {"paths": [TINY_FILE], "archiveName": name}},
                          separators=(",", ":")).encode()
        head = (f"POST {tasks_url} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        return head + body

    dedup_request = request("dedup-target")

    async def main() -> dict[str, Any]:
        codes: Counter[str] = Counter()
        latencies: list[float] = []
        counter = 0
        start = time.perf_counter()
        deadline = start + seconds

        async def one_client() -> None:
            nonlocal counter
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                while time.perf_counter() < deadline:
                    counter += 1
                    distinct = mode == "distinct" or (
                        mode == "mixed" and (counter * distinct_share) % 1 < distinct_share)
                    raw = request(f"{seed}-{counter}") if distinct else dedup_request
                    t0 = time.perf_counter()
                    writer.write(raw)
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        if line[:15].lower() == b"content-length:":
                            length = int(line[15:])
                    if length:
                        await reader.readexactly(length)
                    latencies.append(time.perf_counter() - t0)
                    codes[head[9:12].decode()] += 1
            except (OSError, asyncio.IncompleteReadError) as exc:
                codes[type(exc).__name__] += 1
            finally:
                writer.close()

        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        return {"codes": dict(codes), "elapsed": elapsed, "latencies": latencies,
                "loadCpu": time.process_time()}

    out.put(asyncio.run(main()))


def run_load(server_url: str, token: str, tasks_url: str, mode: str, args: argparse.Namespace,
             profile: bool) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=load_process, args=(
        server_url, token, tasks_url, mode, args.mix_distinct, args.seconds, args.concurrency,
        f"{mode}-{uuid.uuid4().hex[:8]}", queue))
    proc.start()
    spy = None
    if profile and shutil.which("py-spy", path=str(Path(sys.executable).parent)):
        out = Path(args.profile_dir) / f"pyspy-{mode}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        spy = subprocess.Popen(
            [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(os.getpid()),
             "--duration", str(max(1, int(args.seconds) - 1)), "--rate", "100", "--format",
             "raw", "--output", str(out), "--gil"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cpu0 = sum(os.times()[:2])
    result = queue.get(timeout=args.seconds + 120)
    result["serviceCpu"] = sum(os.times()[:2]) - cpu0  # this process = the service (+ idle main)
    proc.join(timeout=30)
    if spy is not None:
        spy.wait(timeout=60)
    return result


def prefill_index(live: LiveServer, n: int) -> None:
    """``n`` Succeeded tasks (with artifact rows) in the benchmark's dataset, finished within
    the dedup look-back: an index after weeks of use (JobIndexRetentionDays is 60)."""
    from sqlalchemy import insert

    from procplat.index.db import utcnow
    from procplat.index.models import Artifact, Dataset, Task

    db = live.server.config.app.state.db  # type: ignore[union-attr]
    now = utcnow()
    with db.write() as s:
        ds = s.query(Dataset).one()
        user_id = s.execute(__import__("sqlalchemy").text(
            "SELECT id FROM users WHERE username = 'bench'")).scalar_one()
        ids = [str(uuid.uuid4()) for _ in range(n)]
        s.execute(insert(Task), [dict(
            id=t, dataset_id=ds.id, org_id=ds.org_id, user_id=user_id, tool_id=TOOL,
            version="1", params={"paths": [TINY_FILE], "archiveName": f"old-{i}"}, path=None,
            request_hash=uuid.uuid4().hex * 2, state="Succeeded", active=False, attempts=1,
            estimated_output_bytes=300, progress_percent=100, created_at=now, started_at=now,
            finished_at=now) for i, t in enumerate(ids)])
        s.execute(insert(Artifact), [dict(
            task_id=t, file_name="old.zip", storage_path=f"/nonexistent/{t}/old.zip",
            size_bytes=300, sha256="0" * 64, expires_at=now + __import__("datetime").timedelta(
                hours=24), expired=False) for t in ids])


# ------------------------------------------------------------------------------------------
# the measurements
# ------------------------------------------------------------------------------------------
def measure_service_latency(client: Any, tasks_url: str, runs: int, warmup: int, poll: float,
                            phases: bool, tag: str = "lat",
                            ) -> tuple[list[float], list[float], list[str], list[float]]:
    e2e: list[float] = []
    walls: list[float] = []
    post_times: list[float] = []
    measured_ids: list[str] = []
    for i in range(warmup + runs):
        body = {"toolId": TOOL, "params": {"paths": [TINY_FILE], "archiveName": f"{tag}-{i}"}}
        wall0 = time.time()
        t0 = time.perf_counter()
        response = client.post(tasks_url, json=body)
        t_posted = time.perf_counter()
        wall_posted = time.time()
        if response.status_code != 202:
            raise RuntimeError(f"submit returned {response.status_code}: {response.text}")
        task_id = response.json()["taskId"]
        status_url = response.json()["statusUrl"]
        while True:
            state = client.get(status_url).json()["state"]
            if state == "Succeeded":
                break
            if state in ("Failed", "Deleted"):
                raise RuntimeError(f"task {task_id} ended {state}")
            if time.perf_counter() - t0 > 60:
                raise RuntimeError(f"task {task_id} did not finish within 60 s")
            if poll:
                time.sleep(poll)
        t_seen = time.perf_counter()
        if i >= warmup:
            e2e.append(t_seen - t0)
            post_times.append(t_posted - t0)
            measured_ids.append(task_id)
            walls.append(wall0)
            if phases:
                MARKS[task_id].update({"client.post": wall0, "client.posted": wall_posted,
                                       "client.seen": wall0 + (t_seen - t0)})
    return e2e, post_times, measured_ids, walls


def finished_in_index(db_url: str, task_ids: list[str], walls: list[float]) -> list[float]:
    """POST sent (client clock) -> ``finished_at`` the service wrote with the Succeeded state.

    The index keeps microseconds (the API shows seconds); same machine, same clock. This is
    the moment the status first shows Succeeded, free of the polling interval.
    """
    import sqlite3
    from datetime import UTC, datetime

    path = db_url.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = dict(conn.execute(
            f"SELECT id, finished_at FROM tasks WHERE id IN ({','.join('?' * len(task_ids))})",
            task_ids).fetchall())
    return [datetime.fromisoformat(rows[t]).replace(tzinfo=UTC).timestamp() - w
            for t, w in zip(task_ids, walls)]


def measure_raw(client: Any, fn: Any, make_args: Any, runs: int, warmup: int) -> list[float]:
    times = []
    for i in range(warmup + runs):
        args = make_args(i)
        t0 = time.perf_counter()
        client.submit(fn, *args, pure=False).result()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


# ------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="measured latency runs (100)")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up runs (10)")
    parser.add_argument("--seconds", type=float, default=10, help="seconds per throughput phase")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent requests (32)")
    parser.add_argument("--mix-distinct", type=float, default=0.1,
                        help="share of distinct submissions in the mixed phase (0.1; 0 = skip)")
    parser.add_argument("--poll-ms", type=float, default=2.0, help="status poll interval (2 ms)")
    parser.add_argument("--relaxed-poll-ms", type=float, default=20.0,
                        help="repeat the latency runs polling this slowly (20 ms; 0 = skip)")
    parser.add_argument("--external", action="store_true",
                        help="dask scheduler + 2 dask worker processes instead of a LocalCluster")
    parser.add_argument("--phases", action="store_true",
                        help="also print where the service latency goes, phase by phase")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the service process during the throughput phases")
    parser.add_argument("--profile-dir", default=str(Path(tempfile.gettempdir()) / "procplat-bench-profiles"),
                        help="where --profile writes py-spy's collapsed stacks")
    parser.add_argument("--proto0-socket", action="store_true",
                        help="listen on a proto-0 socket like tests/conftest.py (no TCP_NODELAY)")
    parser.add_argument("--prefill", type=int, default=0,
                        help="first put this many finished tasks into the index (0)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    os.environ.setdefault("CPL_LOG", "/dev/null")
    import httpx
    from distributed import Client, LocalCluster

    from procplat.engine.job import Job
    from procplat.engine.worker import run_job
    from procplat.settings import Settings

    if args.phases:
        install_phase_marks()

    workdir = Path(tempfile.mkdtemp(prefix="procplat-bench-"))
    cluster: Any = None
    raw: Any = None
    live: LiveServer | None = None
    figures: dict[str, Any] = {"machine": {
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform()}}
    started = time.perf_counter()
    load_before = os.getloadavg()
    try:
        # the cluster -----------------------------------------------------------------------
        if args.external:
            cluster = ExternalCluster(workdir)
            raw = Client(cluster.scheduler_address, timeout="60s")
            cluster.wait(raw)
        else:
            cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                   dashboard_address=":0", env={"GDAL_CACHEMAX": "256"})
            raw = Client(cluster.scheduler_address)
        # the service -----------------------------------------------------------------------
        settings = Settings(
            data=workdir / "data", dask_address=cluster.scheduler_address,
            admin_token=ADMIN_TOKEN, dashboard_address=":0", **GENEROUS_QUOTAS,
        )
        live = start_server(settings, nodelay=not args.proto0_socket)
        print(f"service on {live.url}, cluster {cluster.scheduler_address}, data in {workdir}",
              flush=True)
        admin = httpx.Client(base_url=live.url, timeout=60,
                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        token = admin.post("/users", json={"username": "bench"}).json()["token"]
        user = httpx.Client(base_url=live.url, timeout=60,
                            headers={"Authorization": f"Bearer {token}"})
        assert user.post("/orgs", json={"slug": "bench"}).status_code == 201
        assert user.post("/orgs/bench/ds", json={"slug": "ds", "visibility": "private"}
                         ).status_code == 201
        ds_url = "/orgs/bench/ds/ds"
        tasks_url = f"{ds_url}/tasks"
        assert user.put(f"{ds_url}/files/{TINY_FILE}", content=TINY_CONTENT).status_code == 201
        dataset_root = str((settings.datasets_dir / "bench" / "ds").resolve())
        if args.prefill:
            print(f"prefilling the index with {args.prefill} finished tasks", flush=True)
            prefill_index(live, args.prefill)

        # 1. service latency ---------------------------------------------------------------
        print(f"[1/3] service latency: {args.runs} runs after {args.warmup} warm-ups", flush=True)
        e2e, post_times, ids, walls = measure_service_latency(
            user, tasks_url, args.runs, args.warmup, args.poll_ms / 1000, args.phases)
        committed = finished_in_index(settings.sqlalchemy_url, ids, walls)
        relaxed: list[float] = []
        ids2: list[str] = []
        if args.relaxed_poll_ms > 0:
            print(f"      again, polling every {args.relaxed_poll_ms:g} ms (less load from the "
                  "poller; latency read from the index)", flush=True)
            _, _, ids2, walls2 = measure_service_latency(
                user, tasks_url, args.runs, args.warmup, args.relaxed_poll_ms / 1000,
                args.phases, tag="relaxed")
            relaxed = finished_in_index(settings.sqlalchemy_url, ids2, walls2)

        # 2. raw Dask baselines on the same cluster ------------------------------------------
        print("[2/3] raw Dask baselines on the same cluster", flush=True)
        raw_trivial = measure_raw(raw, trivial, lambda i: (i,), args.runs, args.warmup)
        raw_root = workdir / "raw"
        (raw_root / "work").mkdir(parents=True)
        (raw_root / "artifacts").mkdir(parents=True)

        def job_args(i: int) -> tuple[Job]:
            return (Job(
                task_id=f"raw-{uuid.uuid4()}", attempt=1, tool_module="tools.bulk_download",
                tool_id=TOOL, params={"paths": [TINY_FILE], "archiveName": f"raw-{i}"},
                dataset_root=dataset_root, work_root=str(raw_root / "work"),
                artifacts_root=str(raw_root / "artifacts"),
            ),)

        raw_job = measure_raw(raw, run_job, job_args, args.runs, args.warmup)
        raw_bare = measure_raw(
            raw, bare_bulk_download,
            lambda i: ({"paths": [TINY_FILE], "archiveName": f"bare-{i}"}, dataset_root,
                       str(raw_root / "work")),
            args.runs, args.warmup)

        # 3. throughput ------------------------------------------------------------------------
        throughput: dict[str, dict[str, Any]] = {}
        if not args.skip_throughput:
            # the dedup target exists (and has Succeeded) before the dedup phase starts
            body = {"toolId": TOOL, "params": {"paths": [TINY_FILE], "archiveName": "dedup-target"}}
            first = user.post(tasks_url, json=body).json()
            deadline = time.monotonic() + 30
            while user.get(first["statusUrl"]).json()["state"] != "Succeeded":
                if time.monotonic() > deadline:
                    raise RuntimeError("the dedup target did not finish")
                time.sleep(0.01)
            modes = ["dedup"] + (["mixed"] if args.mix_distinct > 0 else []) + ["distinct"]
            for n, mode in enumerate(modes, 1):
                print(f"[3/3] throughput {n}/{len(modes)}: {mode}, {args.concurrency} concurrent "
                      f"requests for {args.seconds:g} s", flush=True)
                result = run_load(live.url, token, tasks_url, mode, args, args.profile)
                total = sum(result["codes"].values())
                created = result["codes"].get("202", 0)
                throughput[mode] = {
                    "requests": total, "seconds": result["elapsed"],
                    "rate": total / result["elapsed"], "createdRate": created / result["elapsed"],
                    "codes": result["codes"], "latency": summary(result["latencies"]),
                    "serviceCpuShare": result["serviceCpu"] / result["elapsed"],
                    "serviceCpuMsPerRequest": 1000 * result["serviceCpu"] / max(1, total),
                    "loadCpuShare": result["loadCpu"] / result["elapsed"],
                }

        # report ------------------------------------------------------------------------------
        s_e2e, s_post = summary(e2e), summary(post_times)
        s_committed, s_relaxed = summary(committed), summary(relaxed)
        s_trivial, s_job, s_bare = summary(raw_trivial), summary(raw_job), summary(raw_bare)
        headline = s_relaxed if relaxed else s_committed
        figures.update({
            "settings": {"runs": args.runs, "warmup": args.warmup, "pollMs": args.poll_ms,
                         "prefill": args.prefill,
                         "relaxedPollMs": args.relaxed_poll_ms,
                         "seconds": args.seconds, "concurrency": args.concurrency,
                         "mixDistinct": args.mix_distinct, "external": args.external,
                         "quotas": GENEROUS_QUOTAS},
            "serviceLatency": headline, "serviceSeenTightPoll": s_e2e,
            "serviceCommittedTightPoll": s_committed, "servicePost": s_post,
            "rawTrivial": s_trivial, "rawRunJob": s_job, "rawBareTool": s_bare,
            "throughput": throughput,
        })
        cluster_kind = ("external dask scheduler + 2 dask worker processes (1 thread each)"
                        if args.external else "LocalCluster, 2 worker processes x 1 thread")
        print()
        load_after = os.getloadavg()
        figures["machine"]["loadavg1"] = {"before": load_before[0], "after": load_after[0]}
        print(f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, {cluster_kind}; "
              f"1-min load average {load_before[0]:.1f} before, {load_after[0]:.1f} after"
              + (f"; index prefilled with {args.prefill} tasks" if args.prefill else ""))
        print(f"{'latency (ms), ' + str(args.runs) + ' sequential runs':62} {'median':>8} {'p95':>8}"
              f"  {'/raw trivial':>13}  {'/raw run_job':>13}")
        rows = [
            *([(f"service: POST -> Succeeded in the index (poll {args.relaxed_poll_ms:g} ms) *",
                s_relaxed, True)] if relaxed else []),
            (f"service: POST -> GET shows Succeeded (poll {args.poll_ms:g} ms)", s_e2e, True),
            ("  same runs: POST -> Succeeded in the index" + ("" if relaxed else " *"),
             s_committed, True),
            ("service: POST -> 202 response", s_post, False),
            ("raw Dask: submit(trivial).result()", s_trivial, False),
            ("raw Dask: submit(run_job, same bulk-download).result()", s_job, False),
            ("raw Dask: submit(bare bulk_download.run).result()", s_bare, False),
        ]
        for label, st, is_service in rows:
            ratios = ""
            if is_service:
                ratios = (f"  {st['median'] / s_trivial['median']:5.1f}/{st['p95'] / s_trivial['p95']:<5.1f}x"
                          f"  {st['median'] / s_job['median']:5.1f}/{st['p95'] / s_job['p95']:<5.1f}x")
            print(f"{label:62} {ms(st['median'])} {ms(st['p95'])}{ratios}")
        print("  ratios: median/p95 of the service over median/p95 of the raw round trip;"
              " * = the headline figure")
        print()
        if throughput:
            title = f"throughput, {args.concurrency} concurrent requests, {args.seconds:g} s each"
            print(f"{title:44} "
                  f"{'req/s':>7} {'202/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'svc CPU':>7} "
                  f"{'CPU ms/req':>10} {'load CPU':>8}  status codes")
            for mode, t in throughput.items():
                label = {"dedup": "dedup hits only",
                         "mixed": f"mixed ({args.mix_distinct:.0%} distinct)",
                         "distinct": "distinct submissions only"}[mode]
                print(f"{label:44} {t['rate']:7.1f} {t['createdRate']:7.1f} "
                      f"{ms(t['latency']['median'])} {ms(t['latency']['p95'])} "
                      f"{t['serviceCpuShare'] * 100:6.0f}% {t['serviceCpuMsPerRequest']:10.2f} "
                      f"{t['loadCpuShare'] * 100:7.0f}%  {json.dumps(t['codes'], sort_keys=True)}")
            print()
        print("targets:")
        for label, st in ([("headline", headline)] + ([("GET shows it, 2 ms poll", s_e2e)]
                                                       if relaxed else [])):
            ratio, ratio_p95 = st["median"] / s_trivial["median"], st["p95"] / s_trivial["p95"]
            print(f"  service latency <= 3x raw Dask round trip ({label}): median {ratio:.1f}x "
                  f"{'PASS' if ratio <= 3 else 'FAIL'}, p95 {ratio_p95:.1f}x "
                  f"{'PASS' if ratio_p95 <= 3 else 'FAIL'}")
        for mode in ("dedup", "mixed", "distinct"):
            if mode in throughput:
                rate = throughput[mode]["rate"]
                print(f"  >= 300 submissions/s ({mode}): {rate:.0f}/s  "
                      f"{'PASS' if rate >= 300 else 'FAIL'}")
        if args.phases:
            tables = [("poll " + format(args.relaxed_poll_ms, "g") + " ms", phase_table(ids2))] \
                if ids2 else []
            tables.append(("poll " + format(args.poll_ms, "g") + " ms", phase_table(ids)))
            print()
            print(f"{'where the service latency goes (ms, per task)':58}"
                  + "".join(f" {name + ' median':>16} {'p95':>7}" for name, _ in tables))
            for i, (label, *_rest) in enumerate(tables[0][1]):
                print(f"{label:58}" + "".join(
                    f" {ms(rows_[i][1]):>16} {rows_[i][2] * 1000:7.2f}" for _, rows_ in tables))
            figures["phases"] = {name: [{"step": label, "median": med, "p95": p95, "n": n}
                                        for label, med, p95, n in rows_]
                                 for name, rows_ in tables}
        print(f"\ntotal benchmark time {time.perf_counter() - started:.0f} s", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
        return 0
    finally:
        if live is not None:
            live.stop()
        if raw is not None:
            raw.close()
        if cluster is not None:
            cluster.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
