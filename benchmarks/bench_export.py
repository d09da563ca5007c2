"""raster-export against a hand-written rasterio loop, the I/O floor and the HTTP API.

Generates (once, cached in ``--dir``, in 2048² blocks so memory stays bounded) a SIZE²
4-band uint8 RGBN GeoTIFF, tiled 512², DEFLATE (level 6, horizontal predictor), nodata 0 in
a collar around a tilted footprint, with field-like texture (parcels of different crop
vigour, tracks, 1/f noise, ±3 grey levels of pixel noise; DEFLATE keeps ~49 % of it). Then
every run below renders NDVI (``bandFilter`` RGBN: R = band 1, N = band 4) rescaled by
``-1,1`` with the ``rdylgn`` colormap to RGBA (transparent where R or N is nodata or
N + R = 0), tiled 512², DEFLATE level 6 with the horizontal predictor, average overviews:

  a1  the baseline a careful engineer writes: a rasterio loop over the source's 512² blocks
      (reads bands 1 and 4, NDVI in float32, the colour index rule, the colormap's table,
      writes the RGBA block to a tiled GTiff), then ``build_overviews(average)``;
      single-threaded GDAL
  a2  the same with GDAL's ``NUM_THREADS=ALL_CPUS`` (creation option and GDAL_NUM_THREADS)
  b   the I/O floor: ``tools.raster.cog.write_cog`` of the source's own 4 bands (``open_raster``
      chunks, no map_blocks: no arithmetic), band 4 as alpha, on the same LocalCluster as c:
      the same block reads, the same writer and parallelism, an RGBA output
  b2  (information) ``write_cog`` of a1's RGBA output, alpha: identical output pixels, so
      identical compression work, read from the RGBA file instead of the source
  c   ``tools.raster_export.export`` on a ``distributed.LocalCluster`` of 2 worker
      processes × 1 thread (the service's default on 2 cores), called from this process
      (a notebook: the default client)
  d   the same export through the HTTP API of a real service (uvicorn on a socket in the
      run's process, its own LocalCluster of 2 × 1 as ``procplat serve`` starts it; the
      source hard-linked into a dataset): POST .../tasks → polling GET every 0.1 s until
      Succeeded (that includes the artifact's sha256 and move into the artifact store)

Each run is a fresh child process (memory figures do not leak between runs; cluster and
service start-up are not timed) with ``GDAL_CACHEMAX=256`` (MB per process, as the
service's workers get), and a warm-up of the same kind on a 1024² raster first (imports on
the workers, a service that has run a task before). Peak memory is the peak of the summed
resident memory of the child's whole process tree (the run's process: caller, scheduler,
nannies or the service; plus its worker processes), sampled every 50 ms with psutil. CPU
seconds are those of that tree; "others" is the CPU time the rest of the machine used
meanwhile (other people's jobs inflate wall times: with ``--repeat`` the fastest run with
others ≤ 5 % of ours is shown, a ``*`` marks a run without such a clean repeat).

Afterwards the outputs are read back: c's full-resolution RGBA must equal a1's and a2's
pixel for pixel (differences are counted and explained), d's artifact must be c's file
byte for byte, and c must be a valid COG (rio-cogeo). Overviews are compared for
information only (GDAL and write_cog average alpha differently).

``--memory`` (issue 3 item 7): export 8192² and 32768² rasters of the same kind on the
LocalCluster and report the peak resident memory of the worker processes (the export is
submitted as a task, so the caller — what the service runs inside ``run_job`` — lives on a
worker too, as in the service; ``--memory-caller client`` calls it from this process).
It also counts the most write_cog piece results the scheduler holds in memory at once.
``--patch-wait-any`` runs it with the fix proposed for ``tools.runtime.fanout._DaskExecutor.wait_any``
(a monkeypatch in the benchmark, see :func:`patch_wait_any`), to measure its effect.

    python benchmarks/bench_export.py [--size 16384] [--only a1 a2 b b2 c d] [--repeat 1]
                                      [--wait-idle SECONDS] [--keep] [--json FILE]
    python benchmarks/bench_export.py --memory [--sizes 8192 32768] [--patch-wait-any]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # measure.py, bench_service.py

from measure import SAMPLE, QuietReporter, TreeMemory, gb, overview_factors, verdict  # noqa: E402

RUNS = ["a1", "a2", "b", "b2", "c", "d"]
LABELS = {
    "a1": "a1 rasterio block loop, 1 thread",
    "a2": "a2 rasterio block loop, NUM_THREADS=ALL_CPUS",
    "b": "b  I/O floor: write_cog, no arithmetic",
    "b2": "b2 (info) write_cog of a1's RGBA",
    "c": "c  export(), LocalCluster 2×1",
    "d": "d  HTTP API, POST → Succeeded",
}
PARAMS: dict[str, Any] = {"formula": "NDVI", "bandFilter": "RGBN", "colormap": "rdylgn", "rescale": "-1,1"}
BLOCK = 512  # TIFF tiles of the source and of every output
GEN_BLOCK = 2048  # generation window
LEVEL = 6  # DEFLATE level (GDAL's default, write_cog's default)
WARMUP_SIZE = 1024
POLL = 0.1
GDAL_CACHEMAX = "256"
SOURCE_VERSION = "v1"  # bump when make_source changes: the cache key


# --------------------------------------------------------------------------- source data

_POOLS: dict[str, Any] = {}
_P = 1024  # period of the texture pools


def _pools() -> dict[str, Any]:
    """Precomputed texture: 1/f noise (two orientations), pixel noise, parcel vigours."""
    import numpy as np

    if not _POOLS:
        rng = np.random.default_rng(7)
        spectrum = np.fft.rfft2(rng.standard_normal((_P, _P)).astype(np.float32))
        fy, fx = np.fft.fftfreq(_P)[:, None], np.fft.rfftfreq(_P)[None, :]
        f = np.sqrt(fy * fy + fx * fx)
        f[0, 0] = 1
        spectrum *= (f ** -1.6) * (f > 1 / 512)  # structures from ~2 px to ~500 px
        t = np.fft.irfft2(spectrum, s=(_P, _P)).astype(np.float32)
        t = (t - t.mean()) / t.std()
        _POOLS["a"] = np.tile(t, (3, 3))  # windows of up to 2048² at any offset are views
        _POOLS["b"] = np.tile(np.ascontiguousarray(t.T[::-1]), (3, 3))
        _POOLS["noise"] = rng.integers(-3, 4, size=(4, 3 * _P, 3 * _P), dtype=np.int8
                                       ).astype(np.float32)
        _POOLS["parcel"] = rng.random((4096, 4096), dtype=np.float32)
    return _POOLS


def source_block(size: int, y0: int, x0: int, h: int, w: int) -> Any:
    """(4, h, w) uint8 R, G, B, N of the synthetic field raster at (y0, x0); 0 = nodata."""
    import numpy as np

    f32 = np.float32
    pools = _pools()
    y = np.arange(y0, y0 + h, dtype=f32)
    x = np.arange(x0, x0 + w, dtype=f32)
    tex = pools["a"][y0 % _P:y0 % _P + h, x0 % _P:x0 % _P + w]
    oy, ox = (y0 + 389) % _P, (x0 + 601) % _P
    tex2 = pools["b"][oy:oy + h, ox:ox + w]
    k = (y0 // GEN_BLOCK * 7919 + x0 // GEN_BLOCK * 104729) % (2 * _P)
    noise = pools["noise"][:, k % _P:k % _P + h, (k * 3) % _P:(k * 3) % _P + w]
    # parcels: a gently warped grid of fields, each with its own crop vigour
    u = x[None, :] + f32(60) * np.sin(y / f32(900))[:, None]
    v = y[:, None] + f32(45) * np.sin(x / f32(1300))[None, :]
    pu, pv = np.floor(u * f32(1 / 700)), np.floor(v * f32(1 / 530))
    base = pools["parcel"][pu.astype(np.intp) % 4096, pv.astype(np.intp) % 4096]
    vigour = base * f32(1.2) - f32(0.15) + f32(0.12) * tex + f32(0.05) * tex2
    np.clip(vigour, 0, 1, out=vigour)
    vigour[((u - pu * f32(700)) < f32(8)) | ((v - pv * f32(530)) < f32(6))] = 0  # tracks
    soil = f32(95) + f32(25) * tex2 + f32(10) * tex
    soil *= 1 - vigour
    out = np.empty((4, h, w), np.uint8)
    for b, (soil_k, veg) in enumerate([(1.0, 45), (0.9, 95), (0.75, 40), (1.12, 215)]):
        value = soil * f32(soil_k)
        value += f32(veg) * vigour
        value += noise[b]
        np.clip(value, 1, 255, out=value)
        out[b] = value
    inside = ((x[None, :] + f32(0.3) * y[:, None] > f32(0.08 * size))
              & (x[None, :] - f32(0.25) * y[:, None] < f32(0.95 * size))
              & (y[:, None] > f32(0.03 * size)))
    out[:, ~inside] = 0
    return out


def source_path(cache: Path, size: int) -> Path:
    return cache / f"rgbn-{SOURCE_VERSION}-{size}.tif"


def ensure_source(cache: Path, size: int) -> tuple[Path, float | None]:
    """The cached source raster (generated when missing); seconds spent generating."""
    path = source_path(cache, size)
    if path.exists():
        return path, None
    import rasterio
    from rasterio.windows import Window

    from tests.harness import write_geotiff_by_windows

    cache.mkdir(parents=True, exist_ok=True)
    print(f"generating {path} ...", flush=True)
    started = time.perf_counter()
    blocks = ((Window(x0, y0, w, h), source_block(size, y0, x0, h, w))
              for y0 in range(0, size, GEN_BLOCK) for x0 in range(0, size, GEN_BLOCK)
              for h, w in [(min(GEN_BLOCK, size - y0), min(GEN_BLOCK, size - x0))])
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with rasterio.Env(GDAL_CACHEMAX=512):
            write_geotiff_by_windows(
                tmp, blocks, count=4, height=size, width=size, dtype="uint8", pixel=0.1,
                nodata=0, tile=BLOCK, compress="DEFLATE", zlevel=LEVEL, predictor=2,
                photometric="MINISBLACK", interleave="pixel", num_threads="ALL_CPUS",
                bigtiff="IF_SAFER")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    print(f"  {path.stat().st_size / 1e6:.0f} MB in {seconds:.1f} s", flush=True)
    return path, seconds


# --------------------------------------------------------------------------- the runs


def run_baseline(src: Path, out: Path, *, threads: bool) -> None:
    """The hand-written loop: 512² blocks in, NDVI → colour index → colormap, RGBA out."""
    import numpy as np
    import rasterio
    from rasterio.enums import Resampling

    from tools.render import colormaps

    lut = colormaps.lut("rdylgn")  # the colormap's 256-entry table (the reference facts)
    red, green, blue = (np.ascontiguousarray(lut[:, c]) for c in range(3))
    low, high = np.float32(-1), np.float32(1)
    span = high - low
    env = {"GDAL_NUM_THREADS": "ALL_CPUS"} if threads else {}
    with rasterio.Env(**env), rasterio.open(src) as s:
        nodata = s.nodata
        profile = dict(driver="GTiff", width=s.width, height=s.height, count=4, dtype="uint8",
                       crs=s.crs, transform=s.transform, tiled=True, blockxsize=BLOCK,
                       blockysize=BLOCK, compress="DEFLATE", zlevel=LEVEL, predictor=2,
                       photometric="RGB", alpha="YES", interleave="pixel", bigtiff="IF_SAFER")
        if threads:
            profile["num_threads"] = "ALL_CPUS"
        with rasterio.open(out, "w", **profile) as d:
            for _, window in s.block_windows(1):
                r, n = s.read([1, 4], window=window).astype(np.float32)
                with np.errstate(divide="ignore", invalid="ignore"):
                    den = n + r
                    ndvi = (n - r) / den
                invalid = np.isnan(ndvi) | (np.abs(den) < np.float32(1e-10))
                if nodata is not None:
                    invalid |= (r == np.float32(nodata)) | (n == np.float32(nodata))
                # int(clamp((v - min) / (max - min), 0, 1) * 255), in float32
                t = (ndvi - low) / span
                np.clip(t, np.float32(0), np.float32(1), out=t)
                t[invalid] = 0
                index = (t * np.float32(255)).astype(np.uint8)
                rgba = np.empty((4, *index.shape), np.uint8)
                np.take(red, index, out=rgba[0])
                np.take(green, index, out=rgba[1])
                np.take(blue, index, out=rgba[2])
                rgba[3] = 255
                rgba[:, invalid] = 0
                d.write(rgba, window=window)
            d.build_overviews(overview_factors(s.width, s.height, BLOCK), Resampling.average)


def run_floor(src: Path, out: Path) -> None:
    """write_cog of the raster's own bands: the same reads, writer and parallelism as c."""
    from tools.raster import open_raster, write_cog

    da = open_raster(src)
    da = da.rio.write_nodata(None)  # c's output has an alpha band and no nodata either
    write_cog(da, out, alpha=True, overview_resampling="average")


def run_export(src: Path, out: Path) -> None:
    from tools.raster_export import export

    export(src, out, reporter=QuietReporter(), **PARAMS)


def worker_env() -> dict[str, str]:
    """The workers' environment: GDAL_CACHEMAX (as the service gives it) and ``--worker-env``."""
    env = {"GDAL_CACHEMAX": os.environ.get("GDAL_CACHEMAX", GDAL_CACHEMAX)}
    extra = os.environ.get("BENCH_EXPORT_WORKER_ENV")
    if extra:
        env.update(json.loads(extra))
    return env


def start_cluster() -> tuple[Any, Any]:
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=":0", env=worker_env())
    client = Client(cluster)  # the default client: write_cog and fanout use it
    client.wait_for_workers(2)
    return cluster, client


def child(name: str, src: Path, out: Path, warm: Path, extra: Path | None) -> dict[str, Any]:
    import dask.array  # noqa: F401  (imported before measuring, like in a running service)
    import rasterio  # noqa: F401
    import rioxarray  # noqa: F401

    import tools.raster_export  # noqa: F401

    if name == "d":
        return child_service(src, out, warm)
    cluster = client = None
    warm_out = out.with_name(f"warm-{os.getpid()}.tif")
    if name in ("b", "b2", "c"):
        cluster, client = start_cluster()
    runs = {
        "a1": lambda s, o: run_baseline(s, o, threads=False),
        "a2": lambda s, o: run_baseline(s, o, threads=True),
        "b": run_floor,
        "b2": run_floor,
        "c": run_export,
    }
    try:
        runs[name](warm, warm_out)  # warm-up: imports, GDAL drivers, the workers
        warm_out.unlink(missing_ok=True)
        source = extra if name == "b2" else src
        assert source is not None
        memory = TreeMemory()
        with memory:
            cpu = memory.cpu()
            started = time.perf_counter()
            runs[name](source, out)
            wall = time.perf_counter() - started
            cpu = memory.cpu() - cpu
    finally:
        warm_out.unlink(missing_ok=True)
        if client is not None:
            client.close()
            cluster.close()  # type: ignore[union-attr]
    return {"wall": wall, "cpu": cpu, "peak": memory.peak, "before": memory.before,
            "bytes": out.stat().st_size, "others": max(0.0, memory.busy - cpu)}


def child_service(src: Path, out: Path, warm: Path) -> dict[str, Any]:
    """A real service (its own LocalCluster, as ``procplat serve`` starts it) over HTTP."""
    from bench_service import finished_in_index

    from procplat.settings import Settings
    from tests.harness import ADMIN_TOKEN, new_world, start_server

    workdir = Path(tempfile.mkdtemp(prefix="procplat-bench-export-", dir=out.parent))
    live = None
    try:
        settings = Settings(data=workdir / "data", admin_token=ADMIN_TOKEN,
                            dashboard_address=":0")
        live = start_server(settings)  # returns once the app (and its cluster) is up
        world = new_world(live)
        user, tasks_url, root = world.user, world.tasks_url, world.root
        root.mkdir(parents=True, exist_ok=True)
        for f in (src, warm):  # hard links: a multi-GB upload is not what is measured
            os.link(f, root / f.name)

        def run(path: str, name: str) -> tuple[str, float, float, dict[str, Any]]:
            wall0 = time.time()
            t0 = time.perf_counter()
            response = user.post(tasks_url, json={"toolId": "raster-export", "params": {
                "path": path, "fileName": name, **PARAMS}})
            if response.status_code != 202:
                raise RuntimeError(f"submit returned {response.status_code}: {response.text}")
            status_url = response.json()["statusUrl"]
            while True:
                status = user.get(status_url).json()
                if status["state"] == "Succeeded":
                    break
                if status["state"] in ("Failed", "Deleted"):
                    raise RuntimeError(f"the task ended {status['state']}: {status}")
                time.sleep(POLL)
            return response.json()["taskId"], wall0, time.perf_counter() - t0, status

        run(warm.name, "warm.tif")
        memory = TreeMemory()
        with memory:
            cpu = memory.cpu()
            task_id, wall0, wall, status = run(src.name, "bench.tif")
            cpu = memory.cpu() - cpu
        (committed,) = finished_in_index(settings.sqlalchemy_url, [task_id], [wall0])
        artifact = settings.artifacts_dir / task_id / status["artifact"]["fileName"]
        out.unlink(missing_ok=True)
        os.link(artifact, out)
        return {"wall": wall, "cpu": cpu, "peak": memory.peak, "before": memory.before,
                "bytes": out.stat().st_size, "committed": committed,
                "others": max(0.0, memory.busy - cpu)}
    finally:
        if live is not None:
            live.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def export_in_worker(src: str, out: str, patch: bool = False) -> None:
    """``export`` as the service runs it: inside a task on a worker (worker_client)."""
    from tools.raster_export import export

    if patch:
        patch_wait_any()
    export(src, out, reporter=QuietReporter(), **PARAMS)


def patch_wait_any() -> None:
    """``--patch-wait-any`` (a diagnostic, not the product): the change proposed for
    ``tools.runtime.fanout._DaskExecutor.wait_any``. ``distributed.wait`` raises its TimeoutError from
    ``distributed.utils.sync``, whose frame holds the exception in a closure cell: exception
    → traceback → frame → cell → exception, a reference cycle that also holds the frames of
    ``_wait(fs, ...)`` and so the futures passed in. Every 0.2 s wait that times out keeps
    the pieces then running (and their results, ~5.5 MB of tiles each, on the workers)
    alive until Python's cyclic GC happens to run. Dropping the traceback breaks the cycle."""
    import tools.runtime.fanout

    def wait_any(self: Any, futures: Any, timeout: float) -> set[Any]:
        from distributed import wait

        try:
            return set(wait(list(futures), timeout=timeout, return_when="FIRST_COMPLETED").done)
        except TimeoutError as exc:
            exc.__traceback__ = None
            return set()

    tools.runtime.fanout._DaskExecutor.wait_any = wait_any  # type: ignore[method-assign]


def _count_results(dask_scheduler: Any) -> None:
    """On the scheduler: the most write_cog piece results held in memory at once."""
    state = dask_scheduler
    state.bench_results_max = 0
    state.bench_stop = False

    def loop() -> None:
        while not state.bench_stop:
            held = sum(1 for key, ts in list(state.tasks.items())
                       if str(key).startswith("cog-") and ts.state == "memory")
            state.bench_results_max = max(state.bench_results_max, held)
            time.sleep(SAMPLE)

    threading.Thread(target=loop, daemon=True, name="bench-results").start()


def _results_max(dask_scheduler: Any) -> int:
    dask_scheduler.bench_stop = True
    return int(dask_scheduler.bench_results_max)


def child_memory(src: Path, out: Path, warm: Path, caller: str, patch: bool) -> dict[str, Any]:
    import tools.raster_export  # noqa: F401

    if patch:
        patch_wait_any()
    cluster, client = start_cluster()
    warm_out = out.with_name(f"warm-{os.getpid()}.tif")
    try:
        def run(s: Path, o: Path) -> None:
            if caller == "worker":
                client.submit(export_in_worker, str(s), str(o), patch, pure=False).result()
            else:
                run_export(s, o)

        run(warm, warm_out)
        warm_out.unlink(missing_ok=True)
        pids = sorted(client.run(os.getpid).values())
        client.run_on_scheduler(_count_results)
        memory = TreeMemory()
        memory.watched = pids
        with memory:
            cpu = memory.cpu()
            started = time.perf_counter()
            t0 = time.monotonic()
            run(src, out)
            wall = time.perf_counter() - started
            cpu = memory.cpu() - cpu
        results_max = client.run_on_scheduler(_results_max)
    finally:
        warm_out.unlink(missing_ok=True)
        client.close()
        cluster.close()
    return {"wall": wall, "cpu": cpu, "others": max(0.0, memory.busy - cpu),
            "results_max": results_max,
            "peak": memory.peak, "before": memory.before,
            "workers_peak": memory.watched_peak, "workers_before": memory.watched_before,
            "per_worker_peak": [memory.per_pid_peak.get(p, 0) for p in pids],
            "deciles": [max((rss for t, rss in memory.timeline
                             if i / 10 <= (t - t0) / wall < (i + 1) / 10), default=0)
                        for i in range(10)],
            "bytes": out.stat().st_size}


# --------------------------------------------------------------------------- checking


def compare_pixels(reference: Path, others: list[Path], level: int | None = None) -> list[dict[str, Any]]:
    """Pixels of ``others`` that differ from ``reference`` (full resolution or overview
    ``level``), window by window: a pixel differs when any band does."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    results: list[dict[str, Any]] = [
        {"pixels": 0, "alpha": 0, "colour_only": 0, "max_abs": 0} for _ in others]
    kwargs = {} if level is None else {"overview_level": level}
    with contextlib.ExitStack() as stack:
        ref = stack.enter_context(rasterio.open(reference, **kwargs))
        opened = [stack.enter_context(rasterio.open(p, **kwargs)) for p in others]
        for ds in opened:
            if (ds.width, ds.height, ds.count) != (ref.width, ref.height, ref.count):
                raise RuntimeError(f"{ds.name}: {ds.width}×{ds.height}×{ds.count}, expected "
                                   f"{ref.width}×{ref.height}×{ref.count}")
        step = 2048
        for y0 in range(0, ref.height, step):
            for x0 in range(0, ref.width, step):
                window = Window(x0, y0, min(step, ref.width - x0), min(step, ref.height - y0))
                a = ref.read(window=window)
                for ds, res in zip(opened, results):
                    b = ds.read(window=window)
                    diff = (a != b).any(axis=0)
                    n = int(diff.sum())
                    if not n:
                        continue
                    res["pixels"] += n
                    alpha = a[3] != b[3]
                    res["alpha"] += int(alpha.sum())
                    res["colour_only"] += int((diff & ~alpha).sum())
                    res["max_abs"] = max(res["max_abs"], int(np.abs(
                        a.astype(np.int16) - b.astype(np.int16)).max()))
        total = ref.width * ref.height
    for res in results:
        res["total"] = total
    return results


def explain_colour_differences(src: Path, reference: Path, other: Path, limit: int = 20) -> list[str]:
    """For differing pixels: the source values, NDVI in float32 and float64, and the colour
    index each side's colour belongs to."""
    import numpy as np
    import rasterio

    from tools.render import colormaps

    lut = colormaps.lut("rdylgn").astype(np.int32)
    lines: list[str] = []
    with rasterio.open(src) as s, rasterio.open(reference) as ra, rasterio.open(other) as rb:
        for _, window in s.block_windows(1):
            a, b = ra.read(window=window), rb.read(window=window)
            ys, xs = np.nonzero((a != b).any(axis=0))
            if not len(ys):
                continue
            src_px = s.read(window=window)
            for y, x in zip(ys[:limit - len(lines)], xs[:limit - len(lines)]):
                r, n = int(src_px[0, y, x]), int(src_px[3, y, x])
                v32 = (np.float32(n) - np.float32(r)) / (np.float32(n) + np.float32(r))
                v64 = (n - r) / (n + r) if n + r else float("nan")

                def idx(rgb: Any) -> list[int]:
                    return [int(i) for i in np.nonzero((lut == rgb[:3].astype(np.int32)).all(1))[0]]

                lines.append(f"  ({window.row_off + y}, {window.col_off + x}): R={r} N={n} "
                             f"ndvi32={v32!r} ndvi64={v64!r} ref {a[:, y, x].tolist()} "
                             f"(index {idx(a[:, y, x])}) vs {b[:, y, x].tolist()} "
                             f"(index {idx(b[:, y, x])})")
            if len(lines) >= limit:
                break
    return lines


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def is_cog(path: Path) -> bool:
    from rio_cogeo.cogeo import cog_validate

    valid, _errors, _warnings = cog_validate(str(path), quiet=True)
    return bool(valid)


# --------------------------------------------------------------------------- the parent


def wait_until_idle(limit: float, quiet: float = 5.0) -> float:
    """Wait (up to ``limit`` s) until the CPUs have been idle (< 10 % busy) for ``quiet``
    seconds in a row; the busy share (%) of the last second."""
    import psutil

    deadline = time.monotonic() + limit
    calm_since = None
    while True:
        busy = psutil.cpu_percent(interval=1.0)
        now = time.monotonic()
        calm_since = (calm_since or now) if busy < 10 else None
        if (calm_since is not None and now - calm_since >= quiet) or now > deadline:
            return busy


def spawn(args: list[str], timeout: float, gdal_cachemax: str = GDAL_CACHEMAX,
          extra_env: list[str] | None = None) -> dict[str, Any]:
    extra = dict(item.split("=", 1) for item in extra_env or [])
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          env=os.environ | {"GDAL_CACHEMAX": gdal_cachemax,
                                            "CPL_LOG": "/dev/null",
                                            "BENCH_EXPORT_WORKER_ENV": json.dumps(extra)},
                          timeout=timeout, cwd=ROOT)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])  # type: ignore[no-any-return]


def machine() -> str:
    import psutil

    return (f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
            f"Python {platform.python_version()}, {platform.platform()}")


def main_speed(args: argparse.Namespace) -> int:
    import rasterio

    cache: Path = args.dir
    src, gen_seconds = ensure_source(cache, args.size)
    warm, _ = ensure_source(cache, WARMUP_SIZE)
    mpx = args.size * args.size / 1e6
    outs = {name: cache / f"out-{name}-{args.size}.tif" for name in RUNS}
    print(f"\n{args.size}² × 4-band uint8 RGBN ({mpx:.0f} Mpx, {src.stat().st_size / 1e6:.0f} MB "
          f"DEFLATE), NDVI rescale -1,1 rdylgn → RGBA, DEFLATE {LEVEL} + predictor, {BLOCK}² tiles, "
          f"average overviews\nmachine: {machine()}; GDAL {rasterio.__gdal_version__}; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    if gen_seconds is not None:
        print(f"source generated in {gen_seconds:.1f} s")
    print()
    header = (f"{'run':<46} {'wall s':>7} {'CPU s':>6} {'Mpx/s':>6} {'peak RSS':>9} "
              f"{'+RSS':>8} {'out MB':>7} {'others':>7}")
    print(header)
    print("-" * len(header))
    results: dict[str, dict[str, Any]] = {}
    for name in args.only:
        if name == "b2" and not outs["a1"].exists():
            print(f"{LABELS[name]:<46} skipped (needs a1's output)")
            continue
        runs = []
        for _ in range(args.repeat):
            if args.wait_idle:
                wait_until_idle(args.wait_idle)
            load = os.getloadavg()[0]
            outs[name].unlink(missing_ok=True)
            r = spawn(["--child", name, "--src", str(src), "--out", str(outs[name]),
                       "--warm", str(warm), "--extra", str(outs["a1"])], timeout=3600,
                      gdal_cachemax=args.gdal_cachemax)
            r["load"] = load
            runs.append(r)
        # the fastest of the runs the rest of the machine left alone (others' CPU ≤ 5 %)
        clean = [x for x in runs if x["others"] <= 0.05 * x["cpu"] + 0.5]
        r = results[name] = min(clean or runs, key=lambda x: x["wall"])
        r["walls"] = [x["wall"] for x in runs]
        r["clean"] = bool(clean)
        label = LABELS[name] + ("" if clean else " *")
        print(f"{label:<46} {r['wall']:7.1f} {r['cpu']:6.1f} {mpx / r['wall']:6.1f} "
              f"{gb(r['peak']):>9} {gb(r['peak'] - r['before']):>8} {r['bytes'] / 1e6:7.0f} "
              f"{r['others']:7.1f}"
              + (f"   (runs: {', '.join(f'{w:.1f}' for w in r['walls'])})" if args.repeat > 1 else ""),
              flush=True)
    if not all(r["clean"] for r in results.values()):
        print("   * other processes used more than 5 % as much CPU as the run: wall time inflated")
    if "d" in results and "committed" in results["d"]:
        print(f"   d: Succeeded written by the service {results['d']['committed']:.1f} s after "
              f"the POST (the client saw it {results['d']['wall']:.1f} s after, polling every "
              f"{POLL:g} s)")

    # targets ------------------------------------------------------------------------------
    def wall(n: str) -> float | None:
        return results[n]["wall"] if n in results else None

    print("\nratios of wall times (targets on this 2-core machine):")
    targets = [
        ("c/a1", "c", "a1", 1 / 1.7, "c at least 1.7× faster than a1"),
        ("c/a2", "c", "a2", 1.0, "c no slower than a2"),
        ("c/b", "c", "b", 1.25, "c within 1.25× of the I/O floor b"),
        ("d/c", "d", "c", 1.1, "d within 1.1× of c"),
        ("c/b2", "c", "b2", None, "information: c against write_cog of identical pixels"),
    ]
    passed = True
    for label, num, den, limit, text in targets:
        n, d = wall(num), wall(den)
        if n is None or d is None:
            continue
        ratio = n / d
        mark = "" if limit is None else f" ≤ {limit:.3f}  {verdict(ratio <= limit)}"
        if limit is not None:
            passed &= ratio <= limit
        speed = f"  ({d / n:.2f}× speed)" if num == "c" and den.startswith("a") else ""
        print(f"  {label:<5} = {ratio:.3f}{speed}{mark}   [{text}]")

    # checks -------------------------------------------------------------------------------
    print("\nchecks:")
    ok = True
    if "c" in results:
        refs = [ref for ref in ("a1", "a2") if ref in results]
        if refs:
            diffs = compare_pixels(outs["c"], [outs[ref] for ref in refs])
            for ref, res in zip(refs, diffs):
                same = res["pixels"] == 0
                ok &= same
                print(f"  c's full-resolution RGBA equals {ref}'s: {'yes' if same else 'NO'} "
                      f"({res['pixels']} of {res['total']} pixels differ; alpha differs at "
                      f"{res['alpha']}, colour only at {res['colour_only']}; max |Δ| {res['max_abs']})")
                if not same:
                    print("\n".join(explain_colour_differences(src, outs[ref], outs["c"])))
            lv = compare_pixels(outs["c"], [outs[refs[0]]], level=0)[0]
            print(f"  (information) 2× overview, c vs {refs[0]}: {lv['pixels']} of {lv['total']} "
                  f"pixels differ (alpha at {lv['alpha']}, colour only at {lv['colour_only']}; "
                  f"max |Δ| {lv['max_abs']}): at partly transparent 2×2 windows GDAL's average "
                  "gives alpha 255, write_cog the mean of the four (64, 128, 191)")
        print(f"  c is a valid COG: {'yes' if is_cog(outs['c']) else 'NO'}")
    if "c" in results and "d" in results:
        same = sha256(outs["c"]) == sha256(outs["d"])
        ok &= same
        print(f"  d's artifact is c's file byte for byte: {'yes' if same else 'NO'}")
        if not same:
            (res,) = compare_pixels(outs["c"], [outs["d"]])
            print(f"    full-resolution pixels differing: {res['pixels']}")
    if "a1" in results:
        print(f"  a1 is a valid COG: {'yes' if is_cog(outs['a1']) else 'no'} (a tiled GTiff with "
              "overviews added afterwards, as the baseline writes it)")
    if args.json:
        Path(args.json).write_text(json.dumps({"size": args.size, "results": results}, indent=2))
    if not args.keep:
        for name in RUNS:
            outs[name].unlink(missing_ok=True)
    print(f"\ntargets: {verdict(passed)}; pixel checks: {verdict(ok)}")
    return 0 if passed and ok else 1


def main_memory(args: argparse.Namespace) -> int:
    cache: Path = args.dir
    warm, _ = ensure_source(cache, WARMUP_SIZE)
    rows = []
    started = time.perf_counter()
    print(f"machine: {machine()}; export called from the {args.memory_caller}; "
          f"GDAL_CACHEMAX={args.gdal_cachemax} MB per process; "
          f"worker env {' '.join(args.worker_env) or '-'}; "
          f"{'PATCHED wait_any (diagnostic); ' if args.patch_wait_any else ''}"
          f"load average before: {os.getloadavg()[0]:.2f}")
    for size in args.sizes:
        src, gen_seconds = ensure_source(cache, size)
        out = cache / f"out-memory-{size}.tif"
        out.unlink(missing_ok=True)
        if args.wait_idle:
            wait_until_idle(args.wait_idle)
        r = spawn(["--child", "memory", "--src", str(src), "--out", str(out), "--warm", str(warm),
                   "--memory-caller", args.memory_caller]
                  + (["--patch-wait-any"] if args.patch_wait_any else []), timeout=3600,
                  gdal_cachemax=args.gdal_cachemax, extra_env=args.worker_env)
        out.unlink(missing_ok=True)
        r.update(size=size, gen=gen_seconds, src_bytes=src.stat().st_size)
        rows.append(r)
        print(f"  {size}²: export {r['wall']:.1f} s, workers' peak {gb(r['workers_peak'])}", flush=True)
    print()
    header = (f"{'size':>7} {'Mpx':>6} {'source MB':>9} {'generated s':>11} {'export s':>8} "
              f"{'Mpx/s':>6} {'workers before':>14} {'workers peak':>12} {'per worker':>17} "
              f"{'tree peak':>9} {'out MB':>7} {'CPU s':>6} {'others':>6} {'results':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        mpx = r["size"] ** 2 / 1e6
        gen = "cached" if r["gen"] is None else f"{r['gen']:.1f}"
        per = " / ".join(f"{p / 2**30:.2f}" for p in r["per_worker_peak"])
        print(f"{r['size']:>6}² {mpx:6.0f} {r['src_bytes'] / 1e6:9.0f} {gen:>11} {r['wall']:8.1f} "
              f"{mpx / r['wall']:6.1f} {gb(r['workers_before']):>14} {gb(r['workers_peak']):>12} "
              f"{per + ' GB':>17} {gb(r['peak']):>9} {r['bytes'] / 1e6:7.0f} {r['cpu']:6.1f} "
              f"{r['others']:6.1f} {r['results_max']:7d}")
    print("\nworkers' RSS (both summed) over the export, highest in each tenth of its wall time:")
    for r in rows:
        print(f"{r['size']:>6}²  " + " ".join(f"{d / 2**30:.2f}" for d in r["deciles"]) + " GB")
    ratio = rows[-1]["workers_peak"] / rows[0]["workers_peak"]
    ok = abs(ratio - 1) < 0.2
    print(f"\nworkers' peak RSS {rows[-1]['size']}² / {rows[0]['size']}² = {ratio:.3f} "
          f"(target: differ by less than 20%) {verdict(ok)}")
    print(f"total time of this mode: {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"memory": rows}, indent=2))
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384, help="side of the raster (16384)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/procplat-bench"),
                        help="cache of generated rasters and outputs (/tmp/procplat-bench)")
    parser.add_argument("--only", nargs="*", choices=RUNS, default=RUNS)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the fastest is shown")
    parser.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                        help="before each run, wait up to this long for the CPUs to be idle")
    parser.add_argument("--keep", action="store_true", help="keep the outputs in --dir")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--memory", action="store_true",
                        help="issue 3 item 7: workers' peak memory at --sizes")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--memory-caller", choices=("worker", "client"), default="worker",
                        help="run export inside a task (as the service does) or from here")
    parser.add_argument("--gdal-cachemax", default=GDAL_CACHEMAX, metavar="MB",
                        help="GDAL_CACHEMAX of every process (256: what the service gives "
                             "its workers)")
    parser.add_argument("--worker-env", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more environment for the LocalCluster workers (--memory; "
                             "e.g. MALLOC_ARENA_MAX=2)")
    parser.add_argument("--patch-wait-any", action="store_true",
                        help="diagnostic: run with the fix proposed for tools.runtime.fanout "
                             "_DaskExecutor.wait_any (see patch_wait_any)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--warm", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--extra", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child == "memory":
            result = child_memory(args.src, args.out, args.warm, args.memory_caller,
                                  args.patch_wait_any)
        else:
            result = child(args.child, args.src, args.out, args.warm, args.extra)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    return main_memory(args) if args.memory else main_speed(args)


if __name__ == "__main__":
    sys.exit(main())
