"""Load on the API from several client processes: SQLite x 1 process, PostgreSQL x 1 and x 2
replicas, this tree side by side with a baseline tree, interleaved in the same run.

Each *setup* (index kind x replicas x tree) gets a fresh world: a ``dask scheduler`` and two
``dask worker`` processes of 1 thread (``bench_service.ExternalCluster``), a fresh data folder,
a fresh index (SQLite in the data folder, or a new database on a PostgreSQL server), and K real
``procplat serve`` processes (``tests.processes.start_service``) on that one data folder and
index, each with ``PYTHONPATH`` = the tree under test (so a baseline made by
``git archive BASE | tar -x -C /tmp/...`` runs its own code). Then two phases, each
``--seconds`` long, driven by ``--clients`` client processes with ``--connections`` keep-alive
connections each, spread round-robin over the replicas (loopback only):

- **mixed**: per request, by weight: a dedup hit (POST of the params of a Succeeded task),
  a distinct submission, a status poll and a log poll of a task this connection created
  (or of the dedup target), and a download of the dedup target's result.
- **distinct**: only distinct submissions; after the phase the benchmark waits until no task
  is active (read in the index), so the service CPU counted covers each task's whole life
  (submit, Dask submit, events, outcome, index writes) -> "svc CPU ms/task".

Printed per setup and phase: requests/s, distinct creations/s, p50/p99 latency per kind,
status codes (5xx counted apart: the target is none), CPU seconds of the service processes, the
scheduler, the workers, the PostgreSQL backends of the benchmark's database, the clients, and
the machine (everything, other people's jobs included), with the load average.

The clients use the minimal keep-alive HTTP/1.1 client below (requests built as bytes,
Content-Length or chunked framing), not httpx: on this 2-core machine httpx.AsyncClient uses
~4 ms of CPU per request (see ``bench_service.py``) and would take the CPU it measures.

Run (from the repository root):

    git archive BASE | (mkdir -p /tmp/procplat-base && tar -x -C /tmp/procplat-base)
    PYTHONPATH=$PWD /work/main/.venv/bin/python benchmarks/bench_load.py \\
        --baseline /tmp/procplat-base --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from bench_service import (  # noqa: E402  (the shared harness)
    GENEROUS_QUOTAS,
    TINY_CONTENT,
    TINY_FILE,
    TOOL,
    ExternalCluster,
    pct,
)
from measure import TreeMemory  # noqa: E402

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:55432/postgres"
KINDS = ("dedup", "distinct", "status", "log", "download")
MIXED_WEIGHTS = {"dedup": 40, "distinct": 10, "status": 25, "log": 15, "download": 10}


@dataclass(frozen=True)
class Setup:
    index: str  # "sqlite" | "postgres"
    replicas: int
    tree: Path
    tree_label: str

    @property
    def name(self) -> str:
        return f"{'SQLite' if self.index == 'sqlite' else 'PostgreSQL'} x{self.replicas}"


@dataclass
class PhaseResult:
    seconds: float
    codes: dict[str, Counter[str]]
    latencies: dict[str, list[float]]
    created: int
    drain_seconds: float
    cpu: dict[str, float]
    wall: float  # seconds over which the CPU figures were taken (client start .. drained)
    machine_busy: float
    load: tuple[float, float]
    errors: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------
# the client processes
# ------------------------------------------------------------------------------------------
class RawHttp:
    """One keep-alive HTTP/1.1 connection: bytes out, (status, body) back."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port, self.token = host, port, token

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        self.writer.close()

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Authorization: Bearer {self.token}\r\n")
        if method == "POST":
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write((head + "\r\n").encode() + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        length, chunked = 0, False
        for line in raw.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                data = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(data[:-2])
            return status, b"".join(parts)
        return status, (await self.reader.readexactly(length)) if length else b""


def client_process(urls: list[str], token: str, tasks_url: str, dedup: dict[str, str],
                   weights: dict[str, int], seconds: float, connections: int, seed: str,
                   first_connection: int, out: Any) -> None:
    """``connections`` keep-alive connections, each issuing requests back to back."""
    kinds = list(weights)
    cum = list(weights.values())

    def submit_body(name: str) -> bytes:
        return json.dumps({"toolId": TOOL, "params": {"paths": [TINY_FILE], "archiveName": name}},
                          separators=(",", ":")).encode()

    dedup_body = submit_body(dedup["archiveName"])

    async def main() -> dict[str, Any]:
        codes: dict[str, Counter[str]] = defaultdict(Counter)
        latencies: dict[str, list[float]] = defaultdict(list)
        created: list[str] = []
        errors: list[str] = []
        counter = 0
        rng = random.Random(seed)
        deadline = time.perf_counter() + seconds

        async def one(conn_index: int) -> None:
            nonlocal counter
            host, port = urls[conn_index % len(urls)].removeprefix("http://").split(":")
            http = RawHttp(host, int(port), token)
            await http.open()
            mine: list[str] = []
            try:
                while time.perf_counter() < deadline:
                    kind = rng.choices(kinds, cum_weights=None, weights=cum)[0]
                    task = rng.choice(mine) if mine and rng.random() < 0.8 else dedup["taskId"]
                    if kind == "dedup":
                        args: tuple[str, str, bytes] = ("POST", tasks_url, dedup_body)
                    elif kind == "distinct":
                        counter += 1
                        args = ("POST", tasks_url, submit_body(f"{seed}-{counter}"))
                    elif kind == "status":
                        args = ("GET", f"{tasks_url}/{task}", b"")
                    elif kind == "log":
                        args = ("GET", f"{tasks_url}/{task}/log", b"")
                    else:
                        args = ("GET", f"{tasks_url}/{dedup['taskId']}/result", b"")
                    t0 = time.perf_counter()
                    status, body = await http.request(*args)
                    latencies[kind].append(time.perf_counter() - t0)
                    codes[kind][str(status)] += 1
                    if status >= 500 and len(errors) < 5:
                        errors.append(f"{kind} {status}: {body[:300]!r}")
                    if kind == "distinct" and status == 202:
                        task_id = json.loads(body)["taskId"]
                        mine.append(task_id)
                        created.append(task_id)
            except (OSError, asyncio.IncompleteReadError) as exc:
                codes["connection"][type(exc).__name__] += 1
            finally:
                http.close()

        start = time.perf_counter()
        await asyncio.gather(*(one(first_connection + i) for i in range(connections)))
        return {"codes": {k: dict(v) for k, v in codes.items()},
                "latencies": dict(latencies), "created": created, "errors": errors,
                "elapsed": time.perf_counter() - start, "cpu": time.process_time()}

    with contextlib.suppress(ImportError):
        import uvloop  # the clients' own overhead, smaller

        uvloop.install()
    out.put(asyncio.run(main()))


# ------------------------------------------------------------------------------------------
# one world: cluster, index, replicas
# ------------------------------------------------------------------------------------------
class World:
    def __init__(self, setup: Setup, pg_admin_url: str, throttle: float) -> None:
        from tests.harness import ADMIN_TOKEN
        from tests.processes import start_service

        self.setup = setup
        self.workdir = Path(tempfile.mkdtemp(prefix="procplat-bench-load-"))
        self.db_name: str | None = None
        self.pg_admin_url = pg_admin_url
        self.cluster = ExternalCluster(self.workdir, pythonpath=setup.tree)
        self.services: list[Any] = []
        try:
            from distributed import Client

            with Client(self.cluster.scheduler_address, timeout="60s") as c:
                self.cluster.wait(c)
            env = {
                "PYTHONPATH": str(setup.tree),
                "PROCPLAT_DASK_ADDRESS": self.cluster.scheduler_address,
                "PROCPLAT_PROGRESS_UPDATE_THROTTLE_SECONDS": str(throttle),
                "CPL_LOG": "/dev/null",
                **{f"PROCPLAT_{k.upper()}": str(v) for k, v in GENEROUS_QUOTAS.items()},
            }
            if setup.index == "postgres":
                self.db_name = f"bench_load_{uuid.uuid4().hex[:10]}"
                self._pg(f"CREATE DATABASE {self.db_name}")
                env["PROCPLAT_DATABASE_URL"] = self.db_url
            data = self.workdir / "data"
            for _ in range(setup.replicas):  # one after the other: the first one migrates
                self.services.append(start_service(data, env=env))
            self.admin_token = ADMIN_TOKEN
            self.data = data
        except BaseException:
            self.close()
            raise

    @property
    def db_url(self) -> str:
        assert self.db_name
        return self.pg_admin_url.rsplit("/", 1)[0] + "/" + self.db_name

    def _pg(self, sql: str) -> None:
        import psycopg

        url = self.pg_admin_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql)

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.services]

    def active_tasks(self) -> int:
        sql = "SELECT count(*) FROM tasks WHERE active"
        if self.db_name:
            import psycopg

            with psycopg.connect(self.db_url.replace("postgresql+psycopg://", "postgresql://")
                                 ) as conn:
                return int(conn.execute(sql).fetchone()[0])  # type: ignore[index]
        import sqlite3

        with contextlib.closing(sqlite3.connect(self.data / "procplat.sqlite")) as conn:
            return int(conn.execute(sql).fetchone()[0])

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: service processes, scheduler, workers, PG backends of our DB."""
        import psutil

        def of(pid: int) -> float:
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(pid).cpu_times()
                return t.user + t.system
            return 0.0

        figures = {"service": sum(of(s.proc.pid) for s in self.services),
                   "scheduler": of(self.cluster.procs[0].pid)}
        workers = 0.0
        for proc in self.cluster.procs[1:]:  # `dask worker` nanny + its worker process
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(proc.pid)
                workers += sum(of(q.pid) for q in [p, *p.children(recursive=True)])
        figures["workers"] = workers
        if self.db_name:
            pg = 0.0
            for p in psutil.process_iter(["name", "cmdline"]):
                cmd = " ".join(p.info["cmdline"] or [])
                if f" {self.db_name} " in f" {cmd} " and "postgres" in cmd:
                    pg += of(p.pid)
            figures["postgres"] = pg
        return figures

    def close(self) -> None:
        for service in self.services:
            with contextlib.suppress(Exception):
                service.terminate()
        with contextlib.suppress(Exception):
            self.cluster.close()
        if self.db_name:
            with contextlib.suppress(Exception):
                self._pg(f"DROP DATABASE IF EXISTS {self.db_name} WITH (FORCE)")
        shutil.rmtree(self.workdir, ignore_errors=True)


def prepare(world: World) -> tuple[str, str, dict[str, str]]:
    """A user, an org, a dataset with one tiny file, and a Succeeded dedup target."""
    import httpx

    url = world.urls[0]
    with httpx.Client(base_url=url, timeout=60,
                      headers={"Authorization": f"Bearer {world.admin_token}"}) as admin:
        token = admin.post("/users", json={"username": "bench"}).json()["token"]
    with httpx.Client(base_url=url, timeout=60,
                      headers={"Authorization": f"Bearer {token}"}) as user:
        assert user.post("/orgs", json={"slug": "bench"}).status_code == 201
        assert user.post("/orgs/bench/ds", json={"slug": "ds", "visibility": "private"}
                         ).status_code == 201
        ds_url = "/orgs/bench/ds/ds"
        assert user.put(f"{ds_url}/files/{TINY_FILE}", content=TINY_CONTENT).status_code == 201
        tasks_url = f"{ds_url}/tasks"
        name = "dedup-target"
        first = user.post(tasks_url, json={"toolId": TOOL, "params": {
            "paths": [TINY_FILE], "archiveName": name}}).json()
        deadline = time.monotonic() + 60
        while user.get(first["statusUrl"]).json()["state"] != "Succeeded":
            if time.monotonic() > deadline:
                raise RuntimeError("the dedup target did not finish")
            time.sleep(0.02)
    return token, tasks_url, {"taskId": first["taskId"], "archiveName": name}


def start_profilers(world: World, out_dir: Path, phase: str) -> list[subprocess.Popen[bytes]]:
    """py-spy (``pip install py-spy``) on every service process, the scheduler and the workers,
    from the phase's start until it has drained (``--gil``: samples of the thread holding the
    GIL, i.e. Python's CPU time)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).with_name("py-spy"))
    label = f"{world.setup.index}{world.setup.replicas}-{world.setup.tree_label}-{phase}"
    import psutil

    targets = {f"service{i}": s.proc.pid for i, s in enumerate(world.services)}
    targets["scheduler"] = world.cluster.procs[0].pid
    for n, proc in enumerate(world.cluster.procs[1:]):  # the worker under each nanny
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(proc.pid).children(recursive=True):
                if "python" in child.name():
                    targets[f"worker{n}"] = child.pid
    spies = [subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--rate", "200", "--gil", "--format", "raw",
         "--output", str(out_dir / f"{label}-{name}.txt")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name, pid in targets.items()]
    time.sleep(1)  # py-spy attaches
    return spies


def run_phase(world: World, token: str, tasks_url: str, dedup: dict[str, str],
              weights: dict[str, int], args: argparse.Namespace, phase: str) -> PhaseResult:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=client_process, args=(
        world.urls, token, tasks_url, dedup, weights, args.seconds, args.connections,
        f"c{i}-{uuid.uuid4().hex[:6]}", i * args.connections, queue))
        for i in range(args.clients)]
    load0 = os.getloadavg()[0]
    spies = start_profilers(world, args.profile, phase) if args.profile else []
    wall0 = time.perf_counter()
    cpu0 = world.cpu()
    busy0 = TreeMemory.machine_busy()
    for p in procs:
        p.start()
    results = [queue.get(timeout=args.seconds + 120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    load_end = time.perf_counter()
    # wait until every task created is over: its whole life is in the CPU figures
    deadline = time.monotonic() + 300
    while world.active_tasks() and time.monotonic() < deadline:
        time.sleep(0.1)
    drained = time.perf_counter()
    cpu1 = world.cpu()
    busy = TreeMemory.machine_busy() - busy0
    wall = time.perf_counter() - wall0
    for spy in spies:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
    codes: dict[str, Counter[str]] = defaultdict(Counter)
    latencies: dict[str, list[float]] = defaultdict(list)
    created = 0
    errors: list[str] = []
    for r in results:
        for kind, c in r["codes"].items():
            codes[kind].update(c)
        for kind, values in r["latencies"].items():
            latencies[kind].extend(values)
        created += len(r["created"])
        errors.extend(r["errors"])
    cpu = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
    cpu["clients"] = sum(r["cpu"] for r in results)
    seconds = max(r["elapsed"] for r in results)
    return PhaseResult(seconds=seconds, codes=dict(codes), latencies=dict(latencies),
                       created=created, drain_seconds=drained - load_end, cpu=cpu, wall=wall,
                       machine_busy=busy, load=(load0, os.getloadavg()[0]), errors=errors)


# ------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------
def fives(result: PhaseResult) -> int:
    return sum(n for c in result.codes.values() for code, n in c.items()
               if code.isdigit() and int(code) >= 500)


def others(result: PhaseResult) -> int:
    """Connection errors (not HTTP answers)."""
    return sum(result.codes.get("connection", Counter()).values())


def row(setup: Setup, phase: str, r: PhaseResult) -> dict[str, Any]:
    total = sum(n for k, c in r.codes.items() if k != "connection" for n in c.values())
    cpu_total = r.cpu["service"]
    return {
        "setup": setup.name, "tree": setup.tree_label, "phase": phase,
        "rps": total / r.seconds, "createdPerS": r.created / r.seconds,
        "created": r.created, "requests": total, "seconds": r.seconds,
        "drainSeconds": r.drain_seconds, "wall": r.wall,
        "donePerS": r.created / r.wall,
        "p50": {k: pct(v, 50) for k, v in r.latencies.items()},
        "p99": {k: pct(v, 99) for k, v in r.latencies.items()},
        "codes": {k: dict(c) for k, c in r.codes.items()},
        "fiveXX": fives(r), "connectionErrors": others(r), "errors": r.errors,
        "cpu": r.cpu, "machineBusy": r.machine_busy,
        "svcCpuMsPerTask": 1000 * cpu_total / r.created if r.created else float("nan"),
        "svcCpuMsPerRequest": 1000 * cpu_total / total if total else float("nan"),
        "load": r.load,
    }


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(f"{'setup':15} {'tree':9} {'phase':9} {'req/s':>7} {'new/s':>6} {'done/s':>6} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'5xx':>4} {'conn':>4} {'svc ms/req':>10} "
          f"{'svc ms/task':>11} "
          f"{'svc%':>5} {'sched%':>6} {'work%':>6} {'pg%':>5} {'cli%':>5} {'all%':>5} "
          f"{'load':>9}")
    for r in rows:
        elapsed = r["wall"]
        share = {k: 100 * v / elapsed for k, v in r["cpu"].items()}
        all_lat = r["p50all"], r["p99all"]
        print(f"{r['setup']:15} {r['tree']:9} {r['phase']:9} {r['rps']:7.1f} "
              f"{r['createdPerS']:6.1f} {r['donePerS']:6.1f} {all_lat[0] * 1000:7.1f} "
              f"{all_lat[1] * 1000:7.1f} {r['fiveXX']:4d} {r['connectionErrors']:4d} "
              f"{r['svcCpuMsPerRequest']:10.2f} {r['svcCpuMsPerTask']:11.2f} "
              f"{share['service']:5.0f} {share['scheduler']:6.0f} {share['workers']:6.0f} "
              f"{share.get('postgres', float('nan')):5.0f} {share['clients']:5.0f} "
              f"{100 * r['machineBusy'] / elapsed:5.0f} {r['load'][0]:4.1f}-{r['load'][1]:<4.1f}")
    print("  per kind, p50/p99 ms (mixed phase):")
    for r in rows:
        if r["phase"] != "mixed":
            continue
        kinds = "  ".join(f"{k} {r['p50'][k] * 1000:.1f}/{r['p99'][k] * 1000:.1f}"
                          for k in KINDS if k in r["p50"])
        print(f"    {r['setup']:15} {r['tree']:9} {kinds}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="per phase (10)")
    parser.add_argument("--clients", type=int, default=3, help="client processes (3)")
    parser.add_argument("--connections", type=int, default=8,
                        help="keep-alive connections per client process (8)")
    parser.add_argument("--setups", nargs="+", default=["sqlite-1", "postgres-1", "postgres-2"],
                        help="INDEX-REPLICAS, e.g. sqlite-1 postgres-2 (all three)")
    parser.add_argument("--phases", nargs="+", default=["mixed", "distinct"],
                        choices=["mixed", "distinct"])
    parser.add_argument("--baseline", type=Path,
                        help="a tree to measure side by side (e.g. git archive of the base)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (1)")
    parser.add_argument("--postgres-url", default=os.environ.get(
        "PROCPLAT_TEST_POSTGRES_URL", DEFAULT_PG),
        help="a PostgreSQL server where a fresh database is made per setup")
    parser.add_argument("--progress-throttle", type=float, default=2.0,
                        help="ProgressUpdateThrottleSeconds of the service (2, the default)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy every service process per phase, collapsed stacks into DIR")
    parser.add_argument("--json", type=Path, help="also write every row to this JSON file")
    args = parser.parse_args()

    trees = [(Path.cwd().resolve(), "this")]
    if args.baseline:
        trees.insert(0, (args.baseline.resolve(), "baseline"))
    setups = []
    for spec in args.setups:
        index, _, replicas = spec.partition("-")
        if index not in ("sqlite", "postgres") or not replicas.isdigit():
            parser.error(f"not a setup: {spec} (e.g. sqlite-1, postgres-2)")
        setups.append((index, int(replicas)))

    print(f"machine: {os.cpu_count()} CPUs; {args.clients} client processes x "
          f"{args.connections} connections; {args.seconds:g} s per phase; 1-min load average "
          f"{os.getloadavg()[0]:.1f} at the start", flush=True)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for round_ in range(args.rounds):
        for index, replicas in setups:
            for tree, label in trees:
                setup = Setup(index, replicas, tree, label)
                print(f"[round {round_ + 1}] {setup.name} {label} ({tree})", flush=True)
                world = World(setup, args.postgres_url, args.progress_throttle)
                try:
                    token, tasks_url, dedup = prepare(world)
                    for phase in args.phases:
                        weights = MIXED_WEIGHTS if phase == "mixed" else {"distinct": 1}
                        result = run_phase(world, token, tasks_url, dedup, weights, args, phase)
                        r = row(setup, phase, result)
                        every = [v for vs in result.latencies.values() for v in vs]
                        r["p50all"], r["p99all"] = pct(every, 50), pct(every, 99)
                        r["round"] = round_ + 1
                        rows.append(r)
                        print_rows([r])
                        for e in r["errors"]:
                            print("    5xx:", e)
                    for s in world.services:
                        log = s.log_text()
                        bad = [ln for ln in log.splitlines()
                               if " ERROR " in ln or "Traceback" in ln]
                        if bad:
                            print(f"    {s.url} log: {len(bad)} ERROR/Traceback lines, first: "
                                  f"{bad[0][:200]}")
                        recovered = log.count("recover")
                        if recovered:
                            print(f"    {s.url} log: {recovered} lines mentioning recover")
                finally:
                    world.close()
    print()
    print(f"all rounds ({time.perf_counter() - started:.0f} s); medians over rounds where "
          "there are several:")
    merged: list[dict[str, Any]] = []
    keys = sorted({(r["setup"], r["phase"], r["tree"]) for r in rows},
                  key=lambda k: ([s.name for s in (Setup(i, n, Path(), "") for i, n in setups)]
                                 .index(k[0]), k[1] != "mixed", k[2] != "baseline"))
    for key in keys:
        group = [r for r in rows if (r["setup"], r["phase"], r["tree"]) == key]
        pick = sorted(group, key=lambda r: r["createdPerS"])[len(group) // 2]
        merged.append(pick)
    print_rows(merged)
    bad = sum(r["fiveXX"] for r in rows)
    print(f"\n5xx answers in all phases: {bad} ({'PASS' if bad == 0 else 'FAIL'}: target none)")
    dist = {(r["setup"], r["tree"]): r for r in merged if r["phase"] == "distinct"}
    for label in [t[1] for t in trees]:
        one, two = dist.get(("PostgreSQL x1", label)), dist.get(("PostgreSQL x2", label))
        if one and two:
            ratio = two["createdPerS"] / one["createdPerS"]
            print(f"{label}: PostgreSQL x2 / x1 distinct creations: {two['createdPerS']:.1f} / "
                  f"{one['createdPerS']:.1f} = {ratio:.2f} ({'PASS' if ratio >= 1.3 else 'FAIL'}"
                  ": target >= 1.3)")
        sq = dist.get(("SQLite x1", label))
        if sq:
            print(f"{label}: SQLite x1 distinct: {sq['createdPerS']:.1f}/s, service CPU "
                  f"{sq['svcCpuMsPerTask']:.2f} ms per task over its life")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
