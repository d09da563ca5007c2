"""How fast can a lazy (band, y, x) raster become a Cloud-Optimized GeoTIFF? Strategies side by side.

Generates (once, cached in ``--dir``) a SIZE² 4-band uint8 RGBA tiled DEFLATE GeoTIFF, then
runs every strategy in a fresh child process (so memory figures do not leak between them),
each reading that file and writing it out again as tiled DEFLATE (level 6, horizontal
predictor) with 512² tiles and average overviews:

  a1  rasterio_loop       a careful hand-written loop: read each 512² block, write it to a
                          tiled GTiff, then ``build_overviews``; single-threaded GDAL
  a2  rasterio_loop_mt    the same with GDAL's ``NUM_THREADS=ALL_CPUS``
  1   odc_geo             odc-geo ``save_cog_with_dask`` on the dask threaded scheduler
  3   gdal_cog_copy       dask computes chunks in parallel, one writer (under a lock) stores
                          them in an uncompressed tiled GTiff; then GDAL's COG driver copies
                          it with ``NUM_THREADS=ALL_CPUS``
  2   write_cog_threads   ``tools.raster.cog.write_cog`` with local threads
  2   write_cog_cluster   ``tools.raster.cog.write_cog`` through a LocalCluster client (2 worker
                          processes, 1 thread each; cluster start-up not timed)

Every child runs with ``GDAL_CACHEMAX=128`` (MB per process, as the service's workers do), so
GDAL's block cache (5% of RAM by default) does not blur the memory figures.

Columns: wall time of the write alone; CPU seconds of the whole process tree; megapixels per second; peak resident memory of the
child's whole process tree (workers included) and its growth over the memory held before
the write started; output size; whether ``rio_cogeo`` says it is a valid COG; whether a
reader sees the source size and identical full-resolution pixels.

    python benchmarks/cog_write_strategies.py [--size 8192] [--only write_cog_threads ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from measure import overview_factors

STRATEGIES = [
    "rasterio_loop", "rasterio_loop_mt", "odc_geo", "gdal_cog_copy",
    "write_cog_threads", "write_cog_cluster",
]
LABELS = {
    "rasterio_loop": "a1 rasterio block loop, 1 thread",
    "rasterio_loop_mt": "a2 rasterio block loop, NUM_THREADS=ALL_CPUS",
    "odc_geo": "(1) odc-geo save_cog_with_dask",
    "gdal_cog_copy": "(3) 1 writer + GDAL COG copy, ALL_CPUS",
    "write_cog_threads": "(2) tools.raster.cog.write_cog, threads",
    "write_cog_cluster": "(2) tools.raster.cog.write_cog, LocalCluster",
}
BLOCK = 512
CHUNK = 2048
LEVEL = 6


# --------------------------------------------------------------------------- source data


def make_source(path: Path, size: int) -> None:
    """Smooth colour fields with a little noise, transparent (and black) outside a footprint."""
    import numpy as np
    from rasterio.windows import Window

    from tests.harness import grid, write_geotiff_by_windows

    rng = np.random.default_rng(42)

    def chunks() -> Iterator[tuple[Window, np.ndarray]]:
        for y0 in range(0, size, CHUNK):
            for x0 in range(0, size, CHUNK):
                h, w = min(CHUNK, size - y0), min(CHUNK, size - x0)
                yy, xx = np.mgrid[y0:y0 + h, x0:x0 + w].astype(np.float32)
                rgba = np.empty((4, h, w), np.uint8)
                for b, (fy, fx) in enumerate([(311, 513), (427, 229), (173, 389)]):
                    field = 128 + 60 * np.sin(xx / fx + b) * np.cos(yy / fy) + 30 * np.sin((xx + yy) / 97)
                    rgba[b] = np.clip(field + rng.integers(0, 4, (h, w)), 0, 255)
                inside = (xx + yy > size * 0.15) & (xx - yy < size * 0.85)
                rgba[3] = np.where(inside, 255, 0)
                rgba[:3, ~inside] = 0
                yield Window(x0, y0, w, h), rgba

    tmp = path.with_suffix(".tmp")
    write_geotiff_by_windows(tmp, chunks(), count=4, height=size, width=size, dtype="uint8",
                             transform=grid(10, (400000, 6000000)), tile=BLOCK,
                             compress="DEFLATE", predictor=2, num_threads="ALL_CPUS",
                             photometric="RGB", alpha="YES")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- strategies


def open_lazy(src: Path) -> Any:
    import rioxarray

    return rioxarray.open_rasterio(src, chunks={"band": -1, "y": CHUNK, "x": CHUNK}, lock=False)


def run_rasterio_loop(src: Path, out: Path, threads: bool) -> None:
    import rasterio
    from rasterio.enums import Resampling

    env = {"GDAL_NUM_THREADS": "ALL_CPUS"} if threads else {}
    with rasterio.Env(**env), rasterio.open(src) as s:
        profile = s.profile | dict(tiled=True, blockxsize=BLOCK, blockysize=BLOCK,
                                   compress="DEFLATE", zlevel=LEVEL, predictor=2)
        if threads:
            profile["num_threads"] = "ALL_CPUS"
        with rasterio.open(out, "w", **profile) as d:
            for _, window in d.block_windows(1):
                d.write(s.read(window=window), window=window)
            d.build_overviews(overview_factors(s.width, s.height, BLOCK), Resampling.average)


def run_odc_geo(src: Path, out: Path) -> None:
    import dask
    from odc.geo.cog import save_cog_with_dask

    da = open_lazy(src)
    with dask.config.set(scheduler="threads"):
        save_cog_with_dask(da, str(out), compression="deflate", level=LEVEL, predictor=2,
                           blocksize=BLOCK, overview_resampling="average").compute()


class _Writer:
    """A ``dask.array.store`` target writing windows into an open rasterio dataset."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __setitem__(self, key: tuple[slice, slice, slice], value: Any) -> None:
        _, ys, xs = key
        self.dataset.write(value, window=((ys.start, ys.stop), (xs.start, xs.stop)))


def run_gdal_cog_copy(src: Path, out: Path) -> None:
    import dask
    import dask.array
    import rasterio
    import rasterio.shutil

    da = open_lazy(src)
    tmp = out.with_suffix(".gtiff.tmp")
    with rasterio.open(src) as s:
        profile = s.profile | dict(tiled=True, blockxsize=BLOCK, blockysize=BLOCK,
                                   compress="NONE")
    profile.pop("predictor", None)
    try:
        with rasterio.open(tmp, "w", **profile) as d, dask.config.set(scheduler="threads"):
            target: Any = _Writer(d)
            dask.array.store(da.data, target, lock=threading.Lock())
        with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):
            rasterio.shutil.copy(tmp, out, driver="COG", COMPRESS="DEFLATE", LEVEL=LEVEL,
                                 PREDICTOR="YES", BLOCKSIZE=BLOCK, NUM_THREADS="ALL_CPUS",
                                 OVERVIEW_RESAMPLING="AVERAGE")
    finally:
        tmp.unlink(missing_ok=True)


def run_write_cog(src: Path, out: Path) -> None:
    from tools.raster import write_cog

    write_cog(open_lazy(src), out, alpha=True, level=LEVEL, predictor=2, blocksize=BLOCK)


# --------------------------------------------------------------------------- measuring


class TreeMemory:
    """Peak of the summed resident memory of this process and all its descendants."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.peak = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        total = 0
        for p in [self.me, *self.me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except Exception:  # a process that just ended
                pass
        return total

    def cpu(self) -> float:
        """CPU seconds (user + system) used so far by the processes of the tree."""
        total = 0.0
        for p in [self.me, *self.me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except Exception:
                pass
        return total

    def _run(self) -> None:
        while not self.stopped.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(0.05)

    def __enter__(self) -> TreeMemory:
        self.peak = self.now()
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stopped.set()
        self.thread.join()
        self.peak = max(self.peak, self.now())


def check(src: Path, out: Path) -> dict[str, Any]:
    import numpy as np
    import rasterio
    from rio_cogeo.cogeo import cog_validate

    valid, errors, _ = cog_validate(out, quiet=True)
    with rasterio.open(src) as s, rasterio.open(out) as o:
        same_size = (o.width, o.height) == (s.width, s.height)
        equal = same_size
        if same_size:
            for _, window in s.block_windows(1):
                if not np.array_equal(s.read(window=window), o.read(window=window)):
                    equal = False
                    break
        seen = f"{o.width}x{o.height}"
    return {"valid": bool(valid), "errors": errors, "equal": equal, "seen": seen,
            "bytes": out.stat().st_size}


def child(name: str, src: Path, out: Path) -> None:
    import dask.array  # noqa: F401  (imported before measuring, like in a running service)
    import rasterio  # noqa: F401
    import rioxarray  # noqa: F401

    import tools.raster.cog  # noqa: F401

    client = cluster = None
    if name == "write_cog_cluster":
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=":0", env={"GDAL_CACHEMAX": "128"})
        client = Client(cluster)
    runs = {
        "rasterio_loop": lambda: run_rasterio_loop(src, out, threads=False),
        "rasterio_loop_mt": lambda: run_rasterio_loop(src, out, threads=True),
        "odc_geo": lambda: run_odc_geo(src, out),
        "gdal_cog_copy": lambda: run_gdal_cog_copy(src, out),
        "write_cog_threads": lambda: run_write_cog(src, out),
        "write_cog_cluster": lambda: run_write_cog(src, out),
    }
    memory = TreeMemory()
    before = memory.now()
    with memory:
        cpu = memory.cpu()
        started = time.perf_counter()
        runs[name]()
        wall = time.perf_counter() - started
        cpu = memory.cpu() - cpu
    if client is not None:
        client.close()
        cluster.close()  # type: ignore[union-attr]
    result = {"wall": wall, "cpu": cpu, "peak": memory.peak, "before": before, **check(src, out)}
    print("RESULT " + json.dumps(result))


def wait_until_idle(limit: float) -> float:
    """Wait (up to ``limit`` seconds) until other processes leave the CPUs alone; the share
    of CPU they used over the last second."""
    import psutil

    deadline = time.monotonic() + limit
    busy = psutil.cpu_percent(interval=1.0)
    while busy > 15 and time.monotonic() < deadline:
        busy = psutil.cpu_percent(interval=1.0)
    return busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/procplat-cog-bench"))
    parser.add_argument("--only", nargs="*", choices=STRATEGIES, default=STRATEGIES)
    parser.add_argument("--repeat", type=int, default=1, help="runs per strategy; the fastest is shown")
    parser.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                        help="before each run, wait up to this long for the CPUs to be idle")
    parser.add_argument("--child", choices=STRATEGIES, help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.src, args.out)
        return

    args.dir.mkdir(parents=True, exist_ok=True)
    src = args.dir / f"source-{args.size}.tif"
    if not src.exists():
        print(f"generating {src} ...", flush=True)
        make_source(src, args.size)
    mpx = args.size * args.size / 1e6
    print(f"{args.size}² × 4-band uint8 RGBA ({mpx:.0f} Mpx), {os.cpu_count()} cores; "
          f"DEFLATE level {LEVEL}, predictor 2, {BLOCK}² tiles, average overviews\n")
    print(f"load average before: {os.getloadavg()[0]:.1f} (other work on the machine slows "
          "the wall times; CPU seconds are less affected)\n")
    header = (f"{'strategy':<48} {'wall s':>7} {'CPU s':>6} {'Mpx/s':>7} {'peak RSS':>9} {'+RSS':>8} "
              f"{'out MB':>7} {'COG':>4} {'equal':>6}  seen")
    print(header)
    print("-" * len(header))
    results: dict[str, dict[str, Any]] = {}
    for name in args.only:
        if name == "odc_geo" and importlib.util.find_spec("odc.geo") is None:
            print(f"{LABELS[name]:<48} skipped: pip install odc-geo to compare with it")
            continue
        out = args.dir / f"out-{name}-{args.size}.tif"
        out.unlink(missing_ok=True)
        runs = []
        for _ in range(args.repeat):
            if args.wait_idle:
                wait_until_idle(args.wait_idle)
            proc = subprocess.run(
                [sys.executable, __file__, "--child", name, "--src", str(src), "--out", str(out)],
                capture_output=True, text=True, env=os.environ | {"GDAL_CACHEMAX": "128"})
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                print(f"{LABELS[name]:<48} failed:\n{proc.stderr[-2000:]}")
                break
            runs.append(json.loads(line[len("RESULT "):]))
        if len(runs) < args.repeat:
            continue
        r = results[name] = min(runs, key=lambda x: x["wall"])
        print(f"{LABELS[name]:<48} {r['wall']:7.1f} {r['cpu']:6.1f} {mpx / r['wall']:7.1f} "
              f"{r['peak'] / 2**30:7.2f}GB {(r['peak'] - r['before']) / 2**30:6.2f}GB "
              f"{r['bytes'] / 1e6:7.0f} {'yes' if r['valid'] else 'no':>4} "
              f"{'yes' if r['equal'] else 'NO':>6}  {r['seen']}", flush=True)
        out.unlink(missing_ok=True)
    ours = [n for n in ("write_cog_threads", "write_cog_cluster") if n in results]
    for base in ("rasterio_loop", "rasterio_loop_mt"):
        for n in ours:
            if base in results:
                print(f"speed-up of {n} over {base}: "
                      f"{results[base]['wall'] / results[n]['wall']:.2f}×")


if __name__ == "__main__":
    main()
