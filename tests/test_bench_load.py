"""Smoke test of ``benchmarks/bench_load.py``: a 2 s run on SQLite x 1 answers no 5xx.

Not a timed test: it checks that the load benchmark runs end to end (real ``procplat serve``,
real ``dask scheduler``/``dask worker`` processes, client processes) and that every kind of
request it sends was answered without a server error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_load_runs_without_5xx(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_load.py"), "--seconds", "2",
         "--setups", "sqlite-1", "--clients", "1", "--connections", "4", "--json", str(out)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["phase"] for r in rows] == ["mixed", "distinct"]
    for row in rows:
        assert row["fiveXX"] == 0 and row["connectionErrors"] == 0, row
        assert row["requests"] > 0 and row["created"] > 0, row
    mixed = rows[0]["codes"]
    assert set(mixed) == {"dedup", "distinct", "status", "log", "download"}, mixed
    assert mixed["dedup"].keys() == {"200"} and mixed["download"].keys() == {"200"}, mixed
