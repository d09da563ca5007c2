"""A small Python client for the procplat REST API (SPEC §3).

It needs only ``httpx``, the standard library and ``tqdm`` (for ``wait(progress=True)``), never
the service's own packages, so it can be installed on a laptop and pointed at a service::

    from procplat.client import Client

    with Client("http://127.0.0.1:8000", token="...") as client:
        ds = client.dataset("acme/survey")           # a handle; no request is made yet
        ds.upload("ortho/site.tif", "site.tif")       # streamed from disk, never read whole
        task = ds.submit("bulk-download", {"paths": ["ortho"]})
        task.wait(progress=True)                      # bar: percent, phase; new log lines above it
        task.download("site.zip")                     # resumable; sha256 checked against the ETag

Addressing. A dataset is named by the string ``"org/ds"`` (exactly two non-empty segments) or by
the :class:`Dataset` handle ``client.dataset("org/ds")`` returns; every call that takes a dataset
accepts both. ``client.datasets`` lists, creates and looks up datasets (``list``, ``create``,
``get``, and ``client.datasets["org/ds"]`` for a handle); ``client.orgs()`` lists the orgs.
What the caller may see: orgs with a public dataset and the public datasets for everyone,
all of their orgs' datasets for members, everything for an admin. Lists follow the service's
pages by themselves (``skip``/``take`` choose a slice). A task is the :class:`Task` handle that
``Dataset.submit`` / ``Dataset.task(task_id)`` / ``Dataset.tasks()`` return; it carries its
dataset because every task route lives under ``/orgs/{org}/ds/{ds}/tasks``.

Downloads. ``Task.download(dest)`` writes to ``dest + ".part"`` and renames it to ``dest`` only
after the sha256 of the whole file equals the artifact's. The service's ETag of a task result is
the quoted sha256 of the artifact (``ETag: "<sha256>"``, see ``procplat/api/task_routes.py``),
and the task status carries the same value as ``artifact.sha256``. When a ``.part`` file exists
the download resumes with ``Range: bytes=N-`` and ``If-Range: "<sha256>"``: a 206 is appended to
the part file (after checking its ``Content-Range`` starts at N), a 200 (the artifact changed,
or the server ignored the range) replaces it, a 416 means the part file is already whole (or
longer than the artifact, in which case it is discarded). A connection lost mid-transfer is
resumed the same way up to ``retries`` times; a later call resumes from the part file the
failed one left. A digest mismatch (a corrupted or foreign part file) discards the part file
and downloads once more from scratch; a second mismatch raises :class:`IntegrityError`.

Errors, as a tree::

    ProcplatError
    ├── HTTPError(status, message, details)   the service answered with an error status
    │   ├── BadRequest            400  (unknown tool, schema errors in ``details``)
    │   ├── Unauthorized          401  (no or bad token)
    │   ├── Forbidden             403
    │   ├── NotFound              404  (unknown or invisible org, dataset, task, file)
    │   ├── Conflict              409
    │   ├── Gone                  410  (artifact expired)
    │   ├── PayloadTooLarge       413
    │   ├── RangeNotSatisfiable   416
    │   ├── TooManyRequests       429  (``retry_after`` seconds, from ``Retry-After``)
    │   └── ServerError           5xx
    │       ├── ServiceUnavailable   503  (index or scheduler unreachable: try again)
    │       └── InsufficientStorage  507  (the service's disk is full)
    ├── TransportError            no answer: connection refused, reset, timed out
    ├── IntegrityError            a downloaded file's sha256 differs from the ETag
    ├── WaitTimeout               ``Task.wait(timeout=...)`` ran out (also a TimeoutError)
    └── TaskError(status)         the task ended without succeeding
        ├── TaskFailed            state Failed; ``message`` is the task's error
        └── TaskCancelled         state Deleted (cancelled, or deleted after finishing)

An :class:`HTTPError` carries the service's own message (the ``error`` key of its JSON body),
its ``status`` and the ``details`` list (schema errors), so ``str(exc)`` reads like
``HTTP 400: invalid parameters for bulk-download: ...``.
"""

from procplat.client._api import Client, Dataset, Datasets, Task, parse_dataset
from procplat.client._errors import (
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    HTTPError,
    InsufficientStorage,
    IntegrityError,
    NotFound,
    PayloadTooLarge,
    ProcplatError,
    RangeNotSatisfiable,
    ServerError,
    ServiceUnavailable,
    TaskCancelled,
    TaskError,
    TaskFailed,
    TooManyRequests,
    TransportError,
    Unauthorized,
    WaitTimeout,
    error_from_response,
)
from procplat.client._models import (
    Artifact,
    DatasetInfo,
    Entry,
    LogPage,
    Org,
    Submission,
    TaskStatus,
    Tool,
)

__all__ = [
    "Artifact",
    "BadRequest",
    "Client",
    "Conflict",
    "Dataset",
    "DatasetInfo",
    "Datasets",
    "Entry",
    "Forbidden",
    "Gone",
    "HTTPError",
    "InsufficientStorage",
    "IntegrityError",
    "LogPage",
    "NotFound",
    "Org",
    "PayloadTooLarge",
    "ProcplatError",
    "RangeNotSatisfiable",
    "ServerError",
    "ServiceUnavailable",
    "Submission",
    "Task",
    "TaskCancelled",
    "TaskError",
    "TaskFailed",
    "TaskStatus",
    "Tool",
    "TooManyRequests",
    "TransportError",
    "Unauthorized",
    "WaitTimeout",
    "error_from_response",
    "parse_dataset",
]
