"""The image's HEALTHCHECK: GET the health route of whatever this container runs.

The role is read from the container's main process (PID 1): ``procplat serve`` answers
``/sys/health`` on 8000 (200 when its index and the Dask scheduler answer), ``dask scheduler``
and ``dask worker`` answer ``/health`` on their dashboard ports (8787, and 8788 as the
Kubernetes manifests and cluster/README.md start workers). ``PROCPLAT_HEALTH_URL`` overrides
the URL. Exit 0 when it answers 200, 1 otherwise (Docker's contract).
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

URLS = {
    "scheduler": "http://127.0.0.1:8787/health",
    "worker": "http://127.0.0.1:8788/health",
    "serve": "http://127.0.0.1:8000/sys/health",
}


def role() -> str:
    try:
        words = Path("/proc/1/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "serve"
    return next((word for word in words if word in URLS), "serve")


def main() -> int:
    url = os.environ.get("PROCPLAT_HEALTH_URL") or URLS[role()]
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
