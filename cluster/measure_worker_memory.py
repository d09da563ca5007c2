"""Measure what one Dask worker needs for a raster-export of your own raster (cluster/README.md,
"Sizing"): runs the export on a one-worker cluster with ``cluster/dask.yaml`` and prints the
worker's peak resident memory next to the sizing rule's estimate.

    python cluster/measure_worker_memory.py RASTER [--threads 2] [--param formula=NDVI ...]

``--param key=value`` are raster-export parameters (``formula=NDVI bandFilter=RGBN``,
``preset=...``); without any, the raster is exported as it is (first three bands).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
os.environ.setdefault("DASK_CONFIG", str(HERE / "dask.yaml"))  # before Dask reads its config

PIECE = 2048  # tools.raster.DEFAULT_CHUNK_PX: the side of a piece
MiB = 1024**2


@dataclass(frozen=True)
class Measurement:
    threads: int
    bands: int
    bytes_per_sample: int
    peak_bytes: int

    @property
    def piece_bytes(self) -> int:
        return PIECE * PIECE * self.bands * self.bytes_per_sample

    @property
    def estimate_bytes(self) -> int:
        """The rule of cluster/README.md: 256 MiB per worker + per thread 64 MiB + 4 pieces."""
        return 256 * MiB + self.threads * (64 * MiB + 4 * self.piece_bytes)


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _export(src: str, dst: str, params: dict[str, str]) -> None:
    from tools.contract import PrintReporter
    from tools.raster_export import export

    export(src, dst, reporter=PrintReporter(quiet=True), **params)


def measure(raster: Path, threads: int, params: dict[str, str]) -> Measurement:
    import numpy as np
    import rasterio
    from distributed import Client, LocalCluster

    with rasterio.open(raster) as src:
        bands = src.count
        bytes_per_sample = max(np.dtype(dtype).itemsize for dtype in src.dtypes)
    with tempfile.TemporaryDirectory() as out, LocalCluster(
        n_workers=1, threads_per_worker=threads, processes=True, memory_limit="auto",
        dashboard_address=":0",
    ) as cluster, Client(cluster) as client:
        client.submit(_export, str(raster), str(Path(out) / "out.tif"), params,
                      pure=False).result()
        (peak,) = client.run(_peak_rss).values()
    return Measurement(threads=threads, bands=bands, bytes_per_sample=bytes_per_sample,
                       peak_bytes=peak)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raster", type=Path)
    parser.add_argument("--threads", type=int, default=2, help="worker threads [2]")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a raster-export parameter (repeatable)")
    args = parser.parse_args(argv)
    params = dict(item.split("=", 1) for item in args.param)
    m = measure(args.raster, args.threads, params)
    print(f"{args.raster.name}: {m.bands} bands × {m.bytes_per_sample} B, {m.threads} threads: "
          f"worker peak {m.peak_bytes / MiB:.0f} MiB, rule {m.estimate_bytes / MiB:.0f} MiB; "
          f"memory limit per worker ≥ {2 * max(m.peak_bytes, m.estimate_bytes) / 1024**3:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))  # the repository's tools when run from a checkout
    sys.exit(main())
