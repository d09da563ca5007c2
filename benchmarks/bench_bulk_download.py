"""bulk-download and the direct ZIP route on already-compressed data: what deciding stored vs
deflated per file costs.

Builds a dataset in RAM (``/dev/shm``) of files every policy stores — DEFLATE GeoTIFFs (6 of
32 MB and 1000 of 16 KB), 500 JPEGs, 200 ZIPs, one 50 MB LAZ: 1707 files, ~280 MB — then times
``tools.bulk_download.run`` (into a work folder in RAM) and ``tools.archive.zip_stream.stream_zip``
(read to the end), each ``--runs`` times, and prints the median wall time, MB/s and CPU
seconds of this process. Then the case the per-file decision is for: one uncompressed 64 MB
GeoTIFF (smooth ground, a few noisy pixels), archived once: archive size and wall time.
Run it with the code to measure first on ``PYTHONPATH``, e.g. an older commit exported with
``git archive``:

    PYTHONPATH=$PWD python benchmarks/bench_bulk_download.py --runs 7
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from affine import Affine

from tools import bulk_download
from tools.archive.zip_policy import archive_members
from tools.archive.zip_stream import stream_zip
from tools.contract import PrintReporter, ToolContext

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.harness
from tests.harness import write_geotiff

PLANE = Affine(0.1, 0, 0, 0, -0.1, 0)  # 10 cm pixels from (0, 0)


def deflate_tiff(path: Path, size: int) -> None:
    pixels = np.random.default_rng(size).integers(0, 255, (4, size, size), dtype=np.uint8)
    write_geotiff(path, pixels, transform=PLANE, tiled=size >= 512, compress="deflate", zlevel=1)


def build(root: Path) -> int:
    for folder in ("ortho", "tiles", "photos", "zips"):
        (root / folder).mkdir(parents=True)
    deflate_tiff(root / "ortho" / "o0.tif", 2896)
    for i in range(1, 6):
        shutil.copyfile(root / "ortho" / "o0.tif", root / "ortho" / f"o{i}.tif")
    deflate_tiff(root / "tiles" / "t0000.tif", 64)
    for i in range(1, 1000):
        shutil.copyfile(root / "tiles" / "t0000.tif", root / "tiles" / f"t{i:04d}.tif")
    for i in range(500):
        (root / "photos" / f"p{i:03d}.jpg").write_bytes(os.urandom(40_000))
    for i in range(200):
        (root / "zips" / f"z{i:03d}.zip").write_bytes(os.urandom(100_000))
    (root / "cloud.laz").write_bytes(os.urandom(50_000_000))
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def uncompressed_tiff(path: Path, size: int = 4096) -> None:
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:size, 0:size]
    ground = (np.sin(x / 37.0) * 40 + np.cos(y / 53.0) * 40 + 128).astype(np.int16)
    noise = (rng.random(ground.shape) < 0.05) * rng.integers(-9, 10, ground.shape)
    bands = np.stack([ground + noise + k * 9 for k in range(4)]).clip(0, 255).astype(np.uint8)
    write_geotiff(path, bands, transform=PLANE)


def timed(fn: object, runs: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()  # type: ignore[operator]
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        root, work = Path(tmp) / "ds", Path(tmp) / "work"
        total = build(root)
        work.mkdir()

        def tool() -> None:
            ctx = ToolContext(task_id="bench", dataset_root=root, work_dir=work,
                              reporter=PrintReporter(quiet=True))
            artifact = bulk_download.run({"paths": None}, ctx).artifact
            assert artifact is not None
            artifact.unlink()

        def route() -> None:
            for _chunk in stream_zip(archive_members(root, ["ortho", "tiles", "photos",
                                                            "zips", "cloud.laz"])):
                pass

        print(f"{total / 1e6:.0f} MB in 1707 already-compressed files; median of {args.runs} runs")
        for name, fn in (("bulk-download run()", tool), ("direct route stream_zip", route)):
            fn()  # warm-up: page cache, imports
            wall, cpu = timed(fn, args.runs)
            print(f"{name:26s} {wall:6.3f} s  {total / wall / 1e6:7.0f} MB/s  CPU {cpu:6.3f} s")

        raw = Path(tmp) / "raw"
        raw.mkdir()
        uncompressed_tiff(raw / "ortho.tif")
        ctx = ToolContext(task_id="raw", dataset_root=raw, work_dir=work,
                          reporter=PrintReporter(quiet=True))
        wall = time.perf_counter()
        artifact = bulk_download.run({"paths": None}, ctx).artifact
        wall = time.perf_counter() - wall
        assert artifact is not None
        size, archived = (raw / "ortho.tif").stat().st_size, artifact.stat().st_size
        print(f"uncompressed GeoTIFF {size / 1e6:.1f} MB -> archive {archived / 1e6:.1f} MB "
              f"in {wall:.2f} s (local threads, no cluster)")


if __name__ == "__main__":
    main()
