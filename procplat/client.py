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
accepts both. ``client.datasets`` creates and looks up datasets (``create``, ``get``, and
``client.datasets["org/ds"]`` for a handle). A task is the :class:`Task` handle that
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

from __future__ import annotations

import hashlib
import os
import re
import stat
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, TypeAlias
from urllib.parse import quote

import httpx

__all__ = [
    "Artifact",
    "BadRequest",
    "Client",
    "Conflict",
    "Dataset",
    "Datasets",
    "Entry",
    "Forbidden",
    "Gone",
    "HTTPError",
    "IntegrityError",
    "LogPage",
    "NotFound",
    "PayloadTooLarge",
    "ProcplatError",
    "RangeNotSatisfiable",
    "ServerError",
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
]

USER_AGENT = "procplat-client/0.1"
CHUNK_SIZE = 1024 * 1024
"""Bytes read from disk per upload chunk and written per download chunk."""

TERMINAL_STATES = frozenset({"Succeeded", "Failed", "Deleted"})
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_UNSATISFIED_RANGE = re.compile(r"bytes \*/(\d+)")

DatasetRef: TypeAlias = "str | Dataset"
LocalFile: TypeAlias = "str | os.PathLike[str] | BinaryIO | Iterable[bytes] | bytes"


# --- errors ----------------------------------------------------------------------------------


class ProcplatError(Exception):
    """Base of every error this client raises."""


class HTTPError(ProcplatError):
    """The service answered with status >= 400; ``message`` is its ``error`` text."""

    def __init__(
        self, status: int, message: str, *, details: Any = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.response = response

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.message}"


class BadRequest(HTTPError):
    pass


class Unauthorized(HTTPError):
    pass


class Forbidden(HTTPError):
    pass


class NotFound(HTTPError):
    pass


class Conflict(HTTPError):
    pass


class Gone(HTTPError):
    pass


class PayloadTooLarge(HTTPError):
    pass


class RangeNotSatisfiable(HTTPError):
    pass


class TooManyRequests(HTTPError):
    """A quota is full; try again after ``retry_after`` seconds (None when not sent)."""

    def __init__(
        self, status: int, message: str, *, details: Any = None,
        response: httpx.Response | None = None, retry_after: float | None = None,
    ) -> None:
        super().__init__(status, message, details=details, response=response)
        self.retry_after = retry_after


class ServerError(HTTPError):
    pass


class TransportError(ProcplatError):
    """No usable answer: the connection failed, was reset or timed out."""


class IntegrityError(ProcplatError):
    """A downloaded file's sha256 is not the one the service announced."""


class WaitTimeout(ProcplatError, TimeoutError):
    """``Task.wait`` gave up before the task ended."""


class TaskError(ProcplatError):
    """The task ended without succeeding; ``status`` is its final :class:`TaskStatus`."""

    def __init__(self, status: TaskStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class TaskFailed(TaskError):
    pass


class TaskCancelled(TaskError):
    pass


_ERRORS: dict[int, type[HTTPError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    413: PayloadTooLarge,
    416: RangeNotSatisfiable,
    429: TooManyRequests,
}


def error_from_response(response: httpx.Response) -> HTTPError:
    """The typed error for an error response whose body has been read."""
    message, details = _error_message(response)
    status = response.status_code
    cls = _ERRORS.get(status, ServerError if status >= 500 else HTTPError)
    if cls is TooManyRequests:
        return TooManyRequests(
            status, message, details=details, response=response,
            retry_after=_retry_after(response.headers.get("retry-after")),
        )
    return cls(status, message, details=details, response=response)


def _error_message(response: httpx.Response) -> tuple[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"], body.get("details")
    text = response.text.strip()
    return text[:500] or response.reason_phrase or "error", None


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError, IndexError):
            return None


# --- values ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Entry:
    """A file or folder of a dataset, as the service indexed it."""

    path: str
    type: str
    size: int | None
    hash: str | None
    mtime: str | None
    properties: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Entry:
        return cls(
            path=body["path"], type=body.get("type", ""), size=body.get("size"),
            hash=body.get("hash"), mtime=body.get("mtime"),
            properties=body.get("properties") or {}, raw=dict(body),
        )


@dataclass(frozen=True, kw_only=True)
class Tool:
    """A tool a dataset's tasks can run."""

    id: str
    version: str
    title: str
    required_access: str
    produces_artifact: bool
    result_extension: str | None
    input_schema: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Tool:
        return cls(
            id=body["id"], version=str(body["version"]), title=body.get("title", ""),
            required_access=body.get("requiredAccess", ""),
            produces_artifact=bool(body.get("producesArtifact")),
            result_extension=body.get("resultExtension"),
            input_schema=body.get("inputSchema") or {},
        )


@dataclass(frozen=True, kw_only=True)
class Artifact:
    """A task's downloadable file."""

    size_bytes: int
    sha256: str
    file_name: str
    result_url: str
    expires_at: str | None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Artifact:
        return cls(
            size_bytes=int(body["sizeBytes"]), sha256=body["sha256"], file_name=body["fileName"],
            result_url=body["resultUrl"], expires_at=body.get("expiresAt"),
        )


@dataclass(frozen=True, kw_only=True)
class TaskStatus:
    """One answer of ``GET .../tasks/{taskId}`` (``raw`` holds every key)."""

    task_id: str
    tool_id: str
    version: str
    state: str
    percent: int
    phase: str | None
    error: str | None
    result: Any
    artifact: Artifact | None
    log_cursor: int
    log_tail: list[str]
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    raw: dict[str, Any] = field(repr=False)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> TaskStatus:
        progress = body.get("progress") or {}
        artifact = body.get("artifact")
        return cls(
            task_id=body["taskId"], tool_id=body.get("toolId", ""),
            version=str(body.get("version", "")), state=body["state"],
            percent=int(progress.get("percent") or 0), phase=progress.get("phase"),
            error=body.get("error"), result=body.get("result"),
            artifact=Artifact.from_json(artifact) if artifact else None,
            log_cursor=int(body.get("logCursor") or 0), log_tail=list(body.get("logTail") or []),
            created_at=body.get("createdAt"), started_at=body.get("startedAt"),
            finished_at=body.get("finishedAt"), raw=dict(body),
        )


@dataclass(frozen=True, kw_only=True)
class Submission:
    """What ``POST .../tasks`` answered: new (202) or an equal task found (200)."""

    task_id: str
    tool_id: str
    version: str
    deduplicated: bool
    estimated_output_bytes: int | None
    status_url: str
    result_url: str


@dataclass(frozen=True, kw_only=True)
class LogPage:
    """One page of a task's log: the lines numbered ``>= since`` still kept."""

    cursor: int
    lines: list[str]
    truncated_from_tail: int


# --- client ----------------------------------------------------------------------------------


class Client:
    """A connection to one procplat service, as one user (or anonymous without a token).

    ``transport`` and ``event_hooks`` are handed to :class:`httpx.Client`: the seams for
    testing and for watching requests. Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        event_hooks: Mapping[str, list[Any]] | None = None,
    ) -> None:
        headers = {"User-Agent": USER_AGENT}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url, headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport, event_hooks=dict(event_hooks or {}),
        )
        self.datasets = Datasets(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def dataset(self, ref: DatasetRef) -> Dataset:
        """The handle of dataset ``"org/ds"`` on this client (no request is made)."""
        if isinstance(ref, Dataset):
            return ref if ref.client is self else Dataset(self, ref.org, ref.slug)
        org, ds = parse_dataset(ref)
        return Dataset(self, org, ds)

    def create_org(self, slug: str, name: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"slug": slug}
        if name is not None:
            body["name"] = name
        return self.request("POST", "/orgs", json=body).json()

    def tool_ids(self) -> list[str]:
        """Ids of the service's tools (``GET /sys/features``, no dataset or token needed)."""
        return list(self.request("GET", "/sys/features").json().get("taskTools", []))

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send a request; a typed :class:`HTTPError` for statuses >= 400."""
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise TransportError(f"{method} {self.url}{url}: {exc or type(exc).__name__}") from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        return response


def parse_dataset(ref: str) -> tuple[str, str]:
    """``"org/ds"`` → ``("org", "ds")``; ValueError for anything else."""
    org, sep, ds = ref.strip().partition("/")
    if not sep or not org or not ds or "/" in ds:
        raise ValueError(f"a dataset is written 'org/ds', not {ref!r}")
    return org, ds


class Datasets:
    """``client.datasets``: create datasets and get handles on them."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def __getitem__(self, ref: str) -> Dataset:
        return self._client.dataset(ref)

    def get(self, ref: DatasetRef) -> Dataset:
        """The handle, after checking the dataset exists and is visible (else NotFound)."""
        dataset = self._client.dataset(ref)
        dataset.info()
        return dataset

    def create(self, ref: DatasetRef, *, visibility: str = "private") -> Dataset:
        """Create ``"org/ds"`` in an existing org (the caller must be a member)."""
        dataset = self._client.dataset(ref)
        self._client.request(
            "POST", f"/orgs/{_q(dataset.org)}/ds",
            json={"slug": dataset.slug, "visibility": visibility},
        )
        return dataset


class Dataset:
    """A dataset ``org/slug``: its files, entries, tools and tasks."""

    def __init__(self, client: Client, org: str, slug: str) -> None:
        self.client = client
        self.org = org
        self.slug = slug
        self.url = f"/orgs/{_q(org)}/ds/{_q(slug)}"

    def __repr__(self) -> str:
        return f"Dataset({self.name!r})"

    @property
    def name(self) -> str:
        return f"{self.org}/{self.slug}"

    def info(self) -> dict[str, Any]:
        return self.client.request("GET", self.url).json()

    def entries(self, path: str | None = None, type: str | None = None) -> list[Entry]:
        params = {k: v for k, v in {"path": path, "type": type}.items() if v is not None}
        body = self.client.request("GET", f"{self.url}/entries", params=params).json()
        return [Entry.from_json(e) for e in body]

    def upload(self, path: str, local_file: LocalFile) -> Entry:
        """Upload ``local_file`` to ``path`` in the dataset, streamed.

        ``local_file`` is a file name (read in chunks, sent with its Content-Length), an open
        binary file, an iterable of ``bytes`` chunks (sent chunked) or, for small data,
        ``bytes``. Returns the indexed entry.
        """
        url = f"{self.url}/files/{_q(path, safe='/')}"
        if isinstance(local_file, (str, os.PathLike)):
            with open(local_file, "rb") as f:
                response = self.client.request("PUT", url, content=f)
        elif isinstance(local_file, bytes) or _is_regular_file(local_file):
            response = self.client.request("PUT", url, content=local_file)
        elif hasattr(local_file, "read"):  # a pipe or socket: its size is unknown, send chunked
            response = self.client.request("PUT", url, content=_chunks(local_file))
        else:
            response = self.client.request("PUT", url, content=iter(local_file))
        return Entry.from_json(response.json())

    def tools(self) -> list[Tool]:
        body = self.client.request("GET", f"{self.url}/tasks/tools").json()
        return [Tool.from_json(t) for t in body]

    def submit(
        self,
        tool: str,
        params: Mapping[str, Any] | None = None,
        path: str | None = None,
        force: bool = False,
        *,
        version: str | None = None,
    ) -> Task:
        """Submit a task; the handle's ``submission`` says whether it was deduplicated."""
        body: dict[str, Any] = {"toolId": tool, "params": dict(params or {})}
        if path is not None:
            body["path"] = path
        if force:
            body["force"] = True
        if version is not None:
            body["version"] = version
        answer = self.client.request("POST", f"{self.url}/tasks", json=body).json()
        submission = Submission(
            task_id=answer["taskId"], tool_id=answer.get("toolId", tool),
            version=str(answer.get("version", "")),
            deduplicated=bool(answer.get("deduplicated")),
            estimated_output_bytes=answer.get("estimatedOutputBytes"),
            status_url=answer["statusUrl"], result_url=answer["resultUrl"],
        )
        return Task(self, submission.task_id, submission=submission)

    def task(self, task_id: str) -> Task:
        """The handle of an existing task (no request is made)."""
        return Task(self, task_id)

    def tasks(
        self, *, tool: str | None = None, state: str | None = None, skip: int = 0, take: int = 50
    ) -> list[TaskStatus]:
        """Tasks of the dataset, newest first (``take`` is clamped to 1..200 by the service)."""
        params: dict[str, Any] = {"skip": skip, "take": take}
        if tool is not None:
            params["toolId"] = tool
        if state is not None:
            params["state"] = state
        body = self.client.request("GET", f"{self.url}/tasks", params=params).json()
        return [TaskStatus.from_json(t) for t in body]

    def clear(self, tool: str | None = None) -> int:
        """Remove the dataset's finished tasks (of one tool) and their artifacts."""
        params = {"toolId": tool} if tool else {}
        return int(
            self.client.request("POST", f"{self.url}/tasks/clear", params=params).json()["cleared"]
        )


class Task:
    """One task of a dataset: status, wait, log, download, cancel."""

    def __init__(self, dataset: Dataset, task_id: str, *, submission: Submission | None = None):
        self.dataset = dataset
        self.id = task_id
        self.submission = submission
        self.url = f"{dataset.url}/tasks/{_q(task_id)}"

    def __repr__(self) -> str:
        return f"Task({self.id!r}, dataset={self.dataset.name!r})"

    @property
    def _client(self) -> Client:
        return self.dataset.client

    def status(self) -> TaskStatus:
        return TaskStatus.from_json(self._client.request("GET", self.url).json())

    def log_page(self, since: int = 0) -> LogPage:
        body = self._client.request("GET", f"{self.url}/log", params={"since": since}).json()
        return LogPage(
            cursor=int(body["cursor"]), lines=list(body["lines"]),
            truncated_from_tail=int(body.get("truncatedFromTail") or 0),
        )

    def log(self, since: int = 0, *, follow: bool = True, poll: float = 0.5) -> Iterator[str]:
        """Yield the log lines numbered ``>= since``, following ``?since=cursor``.

        With ``follow`` the iterator keeps polling until the task has ended and every line
        is out; without it, it stops after the lines kept now. Lines evicted from the
        service's ring buffer before they were read are skipped.
        """
        cursor = since
        while True:
            ended = follow and self.status().terminal
            page = self.log_page(cursor)
            yield from page.lines
            cursor = page.cursor
            if not follow or ended:
                return
            time.sleep(poll)

    def wait(
        self,
        progress: bool = True,
        *,
        timeout: float | None = None,
        poll: float = 0.5,
        file: IO[str] | None = None,
        raise_on_failure: bool = True,
    ) -> TaskStatus:
        """Poll until the task ends; returns its final status.

        ``progress`` shows the percent, state, phase and new log lines on ``file`` (stderr by
        default): a tqdm bar with the log lines above it on a terminal, plain lines
        elsewhere (a pipe, a CI log); ``progress=False`` shows nothing. Raises
        :class:`TaskFailed` / :class:`TaskCancelled` when the task ends Failed / Deleted
        (unless ``raise_on_failure`` is false) and :class:`WaitTimeout` after ``timeout``
        seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        view = _ProgressView(file or sys.stderr, self.id) if progress else None
        cursor = 0
        try:
            while True:
                status = self.status()
                if view is not None:
                    if status.log_cursor > cursor:
                        page = self.log_page(cursor)
                        view.lines(page.lines)
                        cursor = page.cursor
                    view.update(status)
                if status.terminal:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(f"task {self.id} still {status.state} after {timeout} s")
                time.sleep(poll)
        finally:
            if view is not None:
                view.close()
        if raise_on_failure:
            _raise_if_unsuccessful(status)
        return status

    def cancel(self) -> TaskStatus:
        """Cancel an active task, or delete a finished one and its artifact."""
        return TaskStatus.from_json(self._client.request("DELETE", self.url).json())

    def download(
        self,
        dest: str | os.PathLike[str],
        *,
        retries: int = 3,
        progress: bool = False,
        file: IO[str] | None = None,
    ) -> Path:
        """Download the artifact to ``dest`` (a file name, or a folder to put it in by its
        name); resumable and verified, see the module docstring. Returns the file's path."""
        status = self.status()
        if status.artifact is None:
            _raise_if_unsuccessful(status)
            # Not ready, expired or absent: let the service say which (404/410).
            self._client.request("GET", f"{self.url}/result", headers={"Range": "bytes=0-0"})
            status = self.status()
            if status.artifact is None:
                raise NotFound(404, f"task {self.id} has no artifact ({status.state})")
        artifact = status.artifact
        target = Path(dest)
        if target.is_dir():
            target = target / Path(artifact.file_name).name
        return _Download(
            self._client, f"{self.url}/result", target, artifact.sha256,
            retries=retries, progress_file=(file or sys.stderr) if progress else None,
        ).run()


def _raise_if_unsuccessful(status: TaskStatus) -> None:
    if status.state == "Failed":
        raise TaskFailed(status, status.error or f"task {status.task_id} failed")
    if status.state == "Deleted":
        raise TaskCancelled(status, status.error or f"task {status.task_id} was cancelled")


class _ProgressView:
    """What :meth:`Task.wait` shows: on a terminal or in a notebook a tqdm bar (tool, state,
    phase, percent) with the log lines printed above it; elsewhere (a pipe, a CI log) plain
    lines, one per
    log line and one each time the state, phase or percent changes."""

    def __init__(self, file: IO[str], task_id: str) -> None:
        self.file = file
        self.bar: Any = None
        self.last: tuple[str, str | None, int] | None = None
        if _isatty(file):
            from tqdm import tqdm

            self.bar = tqdm(
                total=100, file=file, desc=task_id[:8], mininterval=0.2, leave=True,
                bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}",
            )

    def lines(self, lines: list[str]) -> None:
        for line in lines:
            if self.bar is not None:
                self.bar.write(line, file=self.file)
            else:
                print(line, file=self.file, flush=True)

    def update(self, status: TaskStatus) -> None:
        phase = f" {status.phase}" if status.phase else ""
        if self.bar is not None:
            self.bar.set_description_str(f"{status.tool_id} {status.state}{phase}", refresh=False)
            self.bar.n = status.percent
            self.bar.refresh()
            return
        now = (status.state, status.phase, status.percent)
        if now != self.last:
            self.last = now
            print(f"{status.tool_id} {status.state}{phase} {status.percent}%", file=self.file,
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _isatty(file: IO[str]) -> bool:
    """A terminal, or a Jupyter kernel's output (it redraws a text bar in place too)."""
    try:
        if file.isatty():
            return True
    except (AttributeError, ValueError):
        return False
    return "ipykernel" in sys.modules and type(file).__module__.startswith("ipykernel")


class _Download:
    """One resumable, verified download of a result to ``target`` via ``target.part``."""

    def __init__(
        self, client: Client, url: str, target: Path, sha256: str, *, retries: int,
        progress_file: IO[str] | None,
    ) -> None:
        self.client = client
        self.url = url
        self.target = target
        self.part = target.with_name(target.name + ".part")
        self.expected = sha256
        self.retries = retries
        self.progress_file = progress_file

    def run(self) -> Path:
        for redo in (False, True):
            digest, etag = self._fetch()
            wanted = etag if _SHA256.fullmatch(etag or "") else self.expected
            if digest == wanted:
                os.replace(self.part, self.target)
                return self.target
            self.part.unlink(missing_ok=True)
            if redo:
                break
        raise IntegrityError(
            f"{self.target.name}: sha256 {digest} of the downloaded file is not {wanted}"
        )

    def _fetch(self) -> tuple[str, str | None]:
        """Bring the part file to the whole artifact; returns its sha256 and the ETag."""
        failures = 0
        while True:
            try:
                done = self._transfer()
            except httpx.TransportError as exc:
                failures += 1
                if failures > self.retries:
                    raise TransportError(
                        f"download of {self.url} interrupted ({exc or type(exc).__name__}); "
                        f"{self._part_size()} bytes kept in {self.part}, call again to resume"
                    ) from exc
                time.sleep(min(0.2 * 2**failures, 5.0))
                continue
            if done is not None:
                return done

    def _part_size(self) -> int:
        try:
            return self.part.stat().st_size
        except FileNotFoundError:
            return 0

    def _transfer(self) -> tuple[str, str | None] | None:
        """One request; None when the part file was discarded and a new request is needed."""
        offset = self._part_size()
        # Identity encoding and raw bytes: a Range counts bytes of the file as stored.
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers |= {"Range": f"bytes={offset}-", "If-Range": f'"{self.expected}"'}
        with self.client._http.stream("GET", self.url, headers=headers) as response:
            etag = _unquote_etag(response.headers.get("etag"))
            if response.status_code == 416:
                response.read()
                total = _UNSATISFIED_RANGE.fullmatch(response.headers.get("content-range", ""))
                if total is not None and int(total.group(1)) == offset:
                    return _file_sha256(self.part), etag or self.expected
                self.part.unlink(missing_ok=True)  # longer than the artifact: not ours
                return None
            if response.status_code >= 400:
                response.read()
                raise error_from_response(response)
            hasher = hashlib.sha256()
            if response.status_code == 206:
                match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", ""))
                if match is None or int(match.group(1)) != offset:
                    self.part.unlink(missing_ok=True)
                    return None
                _hash_file(self.part, hasher)
                mode = "ab"
            else:
                offset, mode = 0, "wb"
            length = int(response.headers.get("content-length", 0)) + offset or None
            bar = self._bar(length, offset)
            try:
                with open(self.part, mode) as out:
                    for chunk in response.iter_raw():  # as received: nothing held back
                        out.write(chunk)
                        hasher.update(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
            return hasher.hexdigest(), etag

    def _bar(self, total: int | None, initial: int) -> Any:
        if self.progress_file is None or not _isatty(self.progress_file):
            return None
        from tqdm import tqdm

        return tqdm(
            total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
            file=self.progress_file, desc=self.target.name, mininterval=0.5,
        )


def _is_regular_file(obj: object) -> bool:
    """An open file whose size ``fstat`` knows (httpx sends it as Content-Length)."""
    try:
        return stat.S_ISREG(os.fstat(obj.fileno()).st_mode)  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


def _chunks(stream: Any) -> Iterator[bytes]:
    while chunk := stream.read(CHUNK_SIZE):
        yield chunk


def _unquote_etag(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if value.startswith("W/"):
        return None  # a weak tag says nothing about the bytes
    return value.strip('"')


def _hash_file(path: Path, hasher: Any) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            hasher.update(chunk)


def _file_sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    _hash_file(path, hasher)
    return hasher.hexdigest()


def _q(segment: str, safe: str = "") -> str:
    return quote(segment, safe=safe)
