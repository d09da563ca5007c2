"""The cluster kit in ``cluster/``: the launcher really starts and stops a cluster on this
machine, ``dask.yaml`` really reaches the scheduler, the workers and their nannies, the
Kubernetes manifests validate against the Kubernetes schemas (and the DaskCluster against the
operator's CRD), the manifests agree with each other, and the Dockerfile and the launcher pass
their linters.

One run of ``cluster/local-cluster.sh`` (module fixture ``kit``: a scheduler, two workers,
PostgreSQL, ``REPLICAS`` API replicas) serves the tests that need processes; the last of them
stops it and checks that no process is left.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import sqlalchemy
import yaml
from distributed import Client

from tests.harness import rgbn_gradient, write_geotiff
from tests.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
SCRIPT = CLUSTER / "local-cluster.sh"
KUBERNETES = CLUSTER / "kubernetes"
CRD = Path(__file__).parent / "data" / "daskcluster-crd.yaml"
BIN = Path(sys.executable).parent  # hadolint and shellcheck come with the test extra

# One replica keeps this light; tests/test_fleet.py runs several on one index.
REPLICAS = 1
WORKERS = 2


# --- the launcher ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kit:
    run_dir: Path
    data: Path
    env: dict[str, str]
    cluster_env: dict[str, str]
    token: str

    @property
    def urls(self) -> list[str]:
        return self.cluster_env["PROCPLAT_URLS"].split()

    def script(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(SCRIPT), *args, "--run-dir", str(self.run_dir)], env=self.env,
            capture_output=True, text=True, timeout=timeout,
        )

    def client(self, url: str) -> httpx.Client:
        return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {self.token}"},
                            timeout=60)


def _read_cluster_env(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        match = re.fullmatch(r"export (\w+)='(.*)'", line)
        assert match, line
        values[match[1]] = match[2]
    return values


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
    # PostgreSQL runs as the postgres user when this runs as root: the run folder must be
    # reachable by it, which pytest's own temporary folders (mode 0700) are not.
    run_dir = Path(tempfile.mkdtemp(prefix="procplat-kit-"))
    run_dir.chmod(0o755)
    data = tmp_path_factory.mktemp("kit") / "data"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PROCPLAT_", "DASK_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    started = subprocess.run(
        ["bash", str(SCRIPT), "start", "--workers", str(WORKERS), "--threads", "1",
         "--memory-limit", "2GiB", "--replicas", str(REPLICAS), "--postgres",
         "--data", str(data), "--run-dir", str(run_dir),
         "--scheduler-port", str(free_port()), "--dashboard-port", str(free_port()),
         "--api-port", str(free_port()), "--pg-port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=300,
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        token_file = run_dir / "admin-token"
        kit = Kit(run_dir=run_dir, data=data, env=env, token=token_file.read_text().strip(),
                  cluster_env=_read_cluster_env(run_dir / "cluster.env"))
        assert token_file.stat().st_mode & 0o077 == 0, "the admin token is readable by others"
        yield kit
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", "--run-dir", str(run_dir)], env=env,
                       capture_output=True, timeout=180)
        shutil.rmtree(run_dir, ignore_errors=True)


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 on (after the command name), or None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _kit_processes(kit: Kit) -> dict[tuple[int, str], str]:
    """(pid, start time) → command line of every process in the sessions the launcher
    started: each process it launched leads its own session (nanny and worker process share
    one), and PostgreSQL's postmaster leads the session of its server processes."""
    sessions = {int(f.read_text().split()[0]) for f in (kit.run_dir / "pids").glob("*.pid")}
    sessions.add(int((kit.run_dir / "postgres" / "postmaster.pid").read_text().split()[0]))
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None:
            if int(stat[3]) in sessions:  # field 6, session id
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found[int(entry.name), stat[19]] = cmdline  # field 22, start time
    return found


def _running(pid: int, start: str) -> bool:
    """The process still runs (a zombie has ended: it only waits for its parent to reap it)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[19] == start and stat[0] != "Z"


def test_dask_yaml_reaches_the_scheduler_the_workers_and_their_nannies(kit: Kit) -> None:
    with Client(kit.cluster_env["PROCPLAT_DASK_ADDRESS"], timeout="30s") as client:
        def worker_view(dask_worker: Any) -> dict[str, Any]:
            import dask

            manager = dask_worker.memory_manager
            return {
                "target": manager.memory_target_fraction,
                "spill": manager.memory_spill_fraction,
                "pause": manager.memory_pause_fraction,
                "max_spill": manager.max_spill,
                "limit": manager.memory_limit,
                "config_terminate": dask.config.get("distributed.worker.memory.terminate"),
                "env": {k: os.environ.get(k) for k in
                        ("GDAL_CACHEMAX", "GDAL_NUM_THREADS", "OMP_NUM_THREADS")},
            }

        def nanny_terminate(dask_worker: Any) -> float:
            return float(dask_worker.memory_manager.memory_terminate_fraction)

        workers = client.run(worker_view)
        nannies = client.run(nanny_terminate, nanny=True)
        scheduler = client.run_on_scheduler(
            lambda dask_scheduler: (dask_scheduler.allowed_failures,
                                    __import__("dask").config.get("distributed.scheduler.pickle"))
        )
    assert len(workers) == WORKERS
    for view in workers.values():
        assert view == {
            "target": 0.5, "spill": 0.6, "pause": 0.75, "max_spill": 16 * 1024**3,
            "limit": 2 * 1024**3, "config_terminate": 0.9,
            # Dask's own pre-spawn entries are kept beside the two GDAL ones.
            "env": {"GDAL_CACHEMAX": "256", "GDAL_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
        }
    assert sorted(nannies.values()) == [0.9] * WORKERS
    assert scheduler == (1, True)


def test_a_task_submitted_over_http_runs_on_the_kit_and_lands_in_postgres(
    kit: Kit, tmp_path: Path
) -> None:
    assert len(kit.urls) == REPLICAS
    raster = write_geotiff(tmp_path / "field.tif", rgbn_gradient(256), tile=256,
                           compress="deflate")
    with kit.client(kit.urls[0]) as http:
        health = http.get("/sys/health")
        assert health.status_code == 200 and health.json()["dask"] is True, health.text
        assert http.post("/orgs", json={"slug": "kit"}).status_code == 201
        assert http.post("/orgs/kit/ds", json={"slug": "ds", "visibility": "private"}).status_code == 201
        assert http.put("/orgs/kit/ds/ds/files/field.tif", content=raster.read_bytes()).status_code == 201
        submitted = http.post("/orgs/kit/ds/ds/tasks", json={
            "toolId": "raster-export", "path": "field.tif",
            "params": {"formula": "NDVI", "bandFilter": "RGBN"},
        })
        assert submitted.status_code == 202, submitted.text
        task = submitted.json()["taskId"]
        deadline = time.monotonic() + 120
        while (status := http.get(f"/orgs/kit/ds/ds/tasks/{task}").json())["state"] not in (
            "Succeeded", "Failed"
        ):
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        assert status["state"] == "Succeeded", status
        log = http.get(f"/orgs/kit/ds/ds/tasks/{task}/log", params={"since": 0}).json()
        result = http.get(f"/orgs/kit/ds/ds/tasks/{task}/result")
    assert result.status_code == 200
    assert hashlib.sha256(result.content).hexdigest() == status["artifact"]["sha256"]
    assert any("Wrote field_export.tif" in line for line in log["lines"]), log
    # The upload is in the shared data folder the launcher was given, and the index is the
    # launcher's PostgreSQL (no SQLite file was made).
    assert (kit.data / "datasets" / "kit" / "ds" / "field.tif").read_bytes() == raster.read_bytes()
    assert not (kit.data / "procplat.sqlite").exists()
    url = kit.cluster_env["PROCPLAT_DATABASE_URL"]
    assert url.startswith("postgresql+psycopg://")
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(sqlalchemy.inspect(conn).get_table_names())
            assert "tasks" in tables, tables
            states = conn.execute(sqlalchemy.text("SELECT state FROM tasks")).scalars().all()
    finally:
        engine.dispose()
    assert states == ["Succeeded"]


def test_the_image_healthcheck_follows_the_health_route(kit: Kit) -> None:
    def check(url: str) -> int:
        env = {**kit.env, "PROCPLAT_HEALTH_URL": url}
        return subprocess.run([sys.executable, str(CLUSTER / "healthcheck.py")], env=env,
                              capture_output=True, timeout=30).returncode

    assert check(f"{kit.urls[0]}/sys/health") == 0
    assert check(f"http://127.0.0.1:{free_port()}/sys/health") == 1


def test_status_lists_every_process_and_a_second_start_is_refused(kit: Kit) -> None:
    status = kit.script("status")
    assert status.returncode == 0, status.stderr
    names = {line.split()[0] for line in status.stdout.splitlines() if line.endswith("running")}
    assert names == {"scheduler", "postgres", *(f"worker-{i}" for i in range(1, WORKERS + 1)),
                     *(f"api-{i}" for i in range(1, REPLICAS + 1))}
    again = kit.script("start")
    assert again.returncode == 1 and "already running" in again.stderr, again.stderr


def test_stop_ends_every_process_the_kit_started(kit: Kit) -> None:
    processes = _kit_processes(kit)
    # scheduler, two nanny + worker pairs, the replicas, and PostgreSQL's server processes.
    assert len(processes) >= 1 + 2 * WORKERS + REPLICAS + 2, processes
    stopped = kit.script("stop", timeout=180)
    assert stopped.returncode == 0, stopped.stderr
    assert "did not stop" not in stopped.stderr, stopped.stderr  # nobody needed SIGKILL
    left = {key: cmdline for key, cmdline in processes.items() if _running(*key)}
    assert left == {}
    assert not list((kit.run_dir / "pids").glob("*.pid"))
    assert not (kit.run_dir / "postgres" / "postmaster.pid").exists()
    assert kit.script("status").stdout.strip().startswith("nothing running")


# --- Kubernetes --------------------------------------------------------------------------------


def _manifests() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted(KUBERNETES.rglob("*.yaml")):
        docs += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def _strict(schema: Any) -> Any:
    """A CRD schema that rejects unknown fields, as the API server does with strict field
    validation (``kubectl apply --validate=strict``); otherwise it prunes a misspelt field and
    the setting is silently lost."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    if (strict.get("type") == "object" and isinstance(strict.get("properties"), dict)
            and "additionalProperties" not in strict
            and not strict.get("x-kubernetes-preserve-unknown-fields")):
        strict["additionalProperties"] = False
    return strict


def _validate_custom(doc: dict[str, Any]) -> None:
    """Validate a custom resource against the vendored DaskCluster CRD:
    group/version, kind, metadata, then the body against the version's strict schema."""
    crd = _crd()
    group, names = crd["spec"]["group"], crd["spec"]["names"]
    served = {v["name"]: v for v in crd["spec"]["versions"] if v["served"]}
    api_group, _, version = doc["apiVersion"].partition("/")
    assert (api_group, doc["kind"]) == (group, names["kind"])
    assert version in served, f"{doc['apiVersion']} is not served by the CRD"
    assert set(doc["metadata"]) <= {"name", "namespace", "labels", "annotations"}
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    schema = _strict_schema(version)
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
    jsonschema.Draft202012Validator(schema).validate(body)


@functools.cache
def _crd() -> dict[str, Any]:
    return yaml.safe_load(CRD.read_text())


@functools.cache
def _strict_schema(version: str) -> dict[str, Any]:
    (served,) = [v for v in _crd()["spec"]["versions"] if v["name"] == version]
    return _strict(served["schema"]["openAPIV3Schema"])


# The oldest Kubernetes the manifests are meant for, and the newest the validator knows.
K8S_VERSIONS = ["1.28", kubernetes_validate.latest_version()]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(version: str) -> None:
    kinds = []
    for path, doc in _manifests():
        kinds.append(doc["kind"])
        if doc["kind"] == "DaskCluster":
            _validate_custom(doc)
        else:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{path.name}: {doc['kind']} {'.'.join(map(str, exc.path))}: {exc.message}")
    assert sorted(set(kinds)) == sorted({
        "Namespace", "PersistentVolumeClaim", "Secret", "Service", "StatefulSet", "DaskCluster",
        "Deployment", "Ingress", "Job",
    })


def test_the_validators_reject_a_misspelt_field() -> None:
    docs = {doc["kind"]: doc for _, doc in _manifests()}
    deployment = copy.deepcopy(docs["Deployment"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readynessProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    cluster = copy.deepcopy(docs["DaskCluster"])
    worker = cluster["spec"]["worker"]["spec"]["containers"][0]
    worker["resource"] = worker.pop("resources")
    with pytest.raises(jsonschema.ValidationError):
        _validate_custom(cluster)
    cluster = copy.deepcopy(docs["DaskCluster"])
    cluster["spec"]["worker"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = 8788
    with pytest.raises(jsonschema.ValidationError):  # the CRD takes named ports only
        _validate_custom(cluster)


def _containers(pod_spec: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def _mounts(pod_spec: dict[str, Any]) -> dict[str, str]:
    """mount path → persistent volume claim name (or the volume's kind)."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    mounts = {}
    for mount in _containers(pod_spec).get("volumeMounts", []):
        volume = volumes[mount["name"]]
        claim = volume.get("persistentVolumeClaim", {}).get("claimName")
        mounts[mount["mountPath"]] = claim or next(k for k in volume if k != "name")
    return mounts


def test_the_manifests_agree_with_each_other() -> None:
    docs: dict[tuple[str, str], dict[str, Any]] = {
        (doc["kind"], doc["metadata"]["name"]): doc for _, doc in _manifests()
    }
    assert {doc["metadata"].get("namespace") for (kind, _), doc in docs.items()
            if kind != "Namespace"} == {docs["Namespace", "procplat"]["metadata"]["name"]}
    cluster = docs["DaskCluster", "procplat"]["spec"]
    scheduler = _containers(cluster["scheduler"]["spec"])
    worker_pod = cluster["worker"]["spec"]
    worker = _containers(worker_pod)
    deployment = docs["Deployment", "procplat-api"]["spec"]
    api_pod = deployment["template"]["spec"]
    api = _containers(api_pod)
    job = _containers(docs["Job", "procplat-db-upgrade"]["spec"]["template"]["spec"])

    # One image for every role; the roles are the image's commands.
    assert len({c["image"] for c in (scheduler, worker, api, job)}) == 1
    assert scheduler["command"] == ["dask", "scheduler"] and worker["command"] == ["dask", "worker"]
    assert api["args"][0] == "serve" and job["args"] == ["db", "upgrade"]

    # The shared ReadWriteMany volume at the same path on the workers and the replicas.
    claim = docs["PersistentVolumeClaim", "procplat-data"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    data_path = _env(api)["PROCPLAT_DATA"]
    assert _mounts(api_pod)[data_path] == _mounts(worker_pod)[data_path] == "procplat-data"
    assert _mounts(worker_pod)[worker["args"][worker["args"].index("--local-directory") + 1]] == "emptyDir"

    # API replicas: at least two, ready on /sys/health, alive on the port alone.
    assert deployment["replicas"] >= 2
    assert api["readinessProbe"]["httpGet"]["path"] == "/sys/health"
    assert "httpGet" not in api["livenessProbe"]

    # The replicas reach the scheduler through the Service the operator makes for it.
    scheduler_port = next(p["port"] for p in cluster["scheduler"]["service"]["ports"]
                          if p["name"] == "tcp-comm")
    assert _env(api)["PROCPLAT_DASK_ADDRESS"] == f"tcp://procplat-scheduler:{scheduler_port}"
    assert scheduler["args"][scheduler["args"].index("--port") + 1] == str(scheduler_port)

    # Workers: one thread per CPU of the limit; the memory limit from the container's.
    limits = worker["resources"]["limits"]
    assert worker["args"][worker["args"].index("--nthreads") + 1] == limits["cpu"]
    assert worker["args"][worker["args"].index("--memory-limit") + 1] == "auto"
    assert worker["resources"]["requests"] == limits

    # The index: the URL names the PostgreSQL Service, the password comes from the Secret.
    postgres = docs["Service", "procplat-postgres"]
    assert f"@procplat-postgres:{postgres['spec']['ports'][0]['port']}/" in _env(api)["PROCPLAT_DATABASE_URL"]
    assert _env(job)["PROCPLAT_DATABASE_URL"] == _env(api)["PROCPLAT_DATABASE_URL"]
    secret = docs["Secret", "procplat-secrets"]
    for container in (api, job, _containers(docs["StatefulSet", "procplat-postgres"]["spec"]["template"]["spec"])):
        for value in _env(container).values():
            if isinstance(value, dict) and "secretKeyRef" in value:
                ref = value["secretKeyRef"]
                assert ref["name"] == "procplat-secrets" and ref["key"] in secret["stringData"]

    # Service → Deployment pods; Ingress → Service port.
    service = docs["Service", "procplat-api"]["spec"]
    labels = deployment["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    assert deployment["selector"]["matchLabels"].items() <= labels.items()
    assert service["ports"][0]["targetPort"] == api["ports"][0]["name"]
    (rule,) = docs["Ingress", "procplat"]["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "procplat-api", "port": {"name": service["ports"][0]["name"]}}

    # The "restricted" Pod Security Standard: not root (the image's fixed uid for procplat's
    # pods), the runtime's seccomp profile, no privilege escalation, no capabilities.
    job_pod = docs["Job", "procplat-db-upgrade"]["spec"]["template"]["spec"]
    postgres_pod = docs["StatefulSet", "procplat-postgres"]["spec"]["template"]["spec"]
    for pod in (cluster["scheduler"]["spec"], worker_pod, api_pod, job_pod, postgres_pod):
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] != 0
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert _containers(pod)["securityContext"] == {
            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
        }
        if pod is not postgres_pod:
            assert context["runAsUser"] == 10001


# --- Dockerfile and launcher -------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([str(BIN / "hadolint"), "--no-color", str(CLUSTER / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_one_non_root_image_built_from_the_wheels() -> None:
    lines = [line for line in (CLUSTER / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    text = "\n".join(lines)
    assert [line for line in lines if line.startswith("FROM ")] == ["FROM python:3.11-slim"]
    assert "apt-get" not in text and "gdal" not in text.lower()  # GDAL comes in the wheels
    assert re.search(r'pip install --no-cache-dir "\./\[postgres\]"', text)
    user = [line for line in lines if line.startswith("USER ")][-1].split()[1].split(":")[0]
    assert user not in ("root", "0")
    pods = {doc["kind"]: doc for _, doc in _manifests()}
    assert int(user) == pods["Deployment"]["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert 'ENTRYPOINT ["procplat"]' in text and "HEALTHCHECK" in text
    # Every file the image copies exists and is let through by the build's ignore file.
    ignore = [line for line in (CLUSTER / "Dockerfile.dockerignore").read_text().splitlines()
              if line and not line.startswith("#")]
    allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    for line in lines:
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
                assert source in allowed, f"{source} is not let into the build context"


def test_local_cluster_script_passes_shellcheck() -> None:
    result = subprocess.run([str(BIN / "shellcheck"), str(SCRIPT)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_measure_worker_memory_reports_a_peak_and_the_sizing_rule(tmp_path: Path) -> None:
    raster = write_geotiff(tmp_path / "small.tif", rgbn_gradient(512), tile=256,
                           compress="deflate")
    result = subprocess.run(
        [sys.executable, str(CLUSTER / "measure_worker_memory.py"), str(raster), "--threads", "1",
         "--param", "formula=NDVI", "--param", "bandFilter=RGBN"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(r"4 bands × 1 B, 1 threads: worker peak (\d+) MiB, rule (\d+) MiB", result.stdout)
    assert match, result.stdout
    # A worker process with the tools imported and a small export done: more than an
    # interpreter, far less than the rule's budget for a full 2048² piece.
    assert 100 < int(match[1]) < 2 * int(match[2])
    # The rule is the one in cluster/README.md's table (4-band uint8, 1 thread: 384 MiB).
    assert int(match[2]) == 256 + 1 * (64 + 4 * 16)
