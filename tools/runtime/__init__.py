"""What every tool's run stands on: the cluster it runs on, safe paths, staging, hashes.

- :mod:`tools.runtime.fanout`: the one executor seam: pieces of work run on the cluster
  the tool runs on (``worker_client`` inside a task, the default client in a notebook, local
  threads otherwise), cancellation through :class:`StopSignal`;
- :mod:`tools.runtime.piece_progress`: pieces tick their progress back while they run;
- :mod:`tools.runtime.safepath`: the one safe-path function every route and tool uses;
- :mod:`tools.runtime.staging`: where tools that write into a dataset prepare their files,
  and how the files move in;
- :mod:`tools.runtime.hashing`: content hashes of files, read in bounded chunks.
"""

from tools.runtime.fanout import StopSignal, compute, fan_out
from tools.runtime.hashing import sha256_file
from tools.runtime.safepath import (
    SERVICE_FOLDER,
    UnsafePath,
    normalize_relpath,
    resolve_in_dataset,
)
from tools.runtime.staging import move_into_dataset, staging, staging_folder

__all__ = [
    "SERVICE_FOLDER",
    "StopSignal",
    "UnsafePath",
    "compute",
    "fan_out",
    "move_into_dataset",
    "normalize_relpath",
    "resolve_in_dataset",
    "sha256_file",
    "staging",
    "staging_folder",
]
