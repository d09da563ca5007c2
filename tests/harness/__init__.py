"""The test and benchmark harness: what tests (through ``tests/conftest.py``'s fixtures) and
``benchmarks/`` share, importable without pytest.

- :mod:`~tests.harness.server`: the service on a real socket in this process
  (:func:`start_server` → :class:`LiveServer`), :func:`free_port`, the tests' settings;
- :mod:`~tests.harness.world`: a user, an org and a dataset on it (:func:`new_world` →
  :class:`World`: upload, submit, wait, cancel; :func:`kill_worker_running`);
- :mod:`~tests.harness.rasters`: the GeoTIFF writer and pixel patterns;
- :mod:`~tests.harness.files`: a folder tree's snapshot, big slow-to-deflate text;
- :mod:`tests.harness.cli` (imported by name): the ``procplat`` command as a process, and
  its help text.

The service as real processes (``procplat serve``, ``dask scheduler``/``worker``, a
PostgreSQL of its own) is ``tests/processes.py``.
"""

from tests.harness.files import Snapshot, big_text, tree_snapshot
from tests.harness.rasters import (
    UTM33N,
    geotiff_profile,
    grid,
    noise,
    rgbn_gradient,
    write_geotiff,
    write_geotiff_by_windows,
)
from tests.harness.server import ADMIN_TOKEN, LiveServer, free_port, settings_for, start_server
from tests.harness.world import ENDED, World, kill_worker_running, new_world, worker_running

__all__ = [
    "ADMIN_TOKEN",
    "ENDED",
    "UTM33N",
    "LiveServer",
    "Snapshot",
    "World",
    "big_text",
    "free_port",
    "geotiff_profile",
    "grid",
    "kill_worker_running",
    "new_world",
    "noise",
    "rgbn_gradient",
    "settings_for",
    "start_server",
    "tree_snapshot",
    "worker_running",
    "write_geotiff",
    "write_geotiff_by_windows",
]
