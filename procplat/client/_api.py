"""The client's handles: :class:`Client`, :class:`Datasets`, :class:`Dataset`, :class:`Task`."""

from __future__ import annotations

import itertools
import os
import stat
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, BinaryIO, TypeAlias
from urllib.parse import quote

import httpx

from procplat.client._constants import CHUNK_SIZE, PAGE_SIZE, USER_AGENT
from procplat.client._download import _Download
from procplat.client._errors import (
    NotFound,
    TaskCancelled,
    TaskFailed,
    TransportError,
    WaitTimeout,
    error_from_response,
)
from procplat.client._models import (
    DatasetInfo,
    Entry,
    LogPage,
    Org,
    Submission,
    TaskStatus,
    Tool,
)
from procplat.client._progress import _ProgressView

DatasetRef: TypeAlias = "str | Dataset"
LocalFile: TypeAlias = "str | os.PathLike[str] | BinaryIO | Iterable[bytes] | bytes"


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

    def orgs(self, *, skip: int = 0, take: int | None = None) -> list[Org]:
        """The orgs this caller may see, by slug: those with a public dataset and the
        caller's own (every org for an admin). ``take=None`` gets all of them from ``skip``
        on, following the service's pages."""
        return [Org.from_json(o) for o in self._paged("/orgs", skip, take)]

    def _paged(self, url: str, skip: int = 0, take: int | None = None) -> Iterator[dict[str, Any]]:
        """The items of a paged list route (``{items, total, skip, take}``) from ``skip`` on,
        at most ``take`` of them, page by page."""
        left = take
        while left is None or left > 0:
            want = PAGE_SIZE if left is None else min(left, PAGE_SIZE)
            body = self.request("GET", url, params={"skip": skip, "take": want}).json()
            items = body["items"]
            yield from items
            skip += len(items)
            if left is not None:
                left -= len(items)
            if not items or skip >= int(body["total"]):
                return

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
    """``client.datasets``: list and create datasets, and get handles on them."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def __getitem__(self, ref: str) -> Dataset:
        return self._client.dataset(ref)

    def list(
        self, org: str | None = None, *, skip: int = 0, take: int | None = None
    ) -> list[DatasetInfo]:
        """The datasets this caller may see, by org then slug: of one ``org``, or of every
        org :meth:`Client.orgs` lists. Members see all of their orgs' datasets, everyone
        else the public ones. ``skip``/``take`` as in :meth:`Client.orgs`."""
        if org is not None:
            items: Iterator[dict[str, Any]] = self._client._paged(
                f"/orgs/{_q(org)}/ds", skip, take)
        else:
            every = (d for o in self._client.orgs() for d in self._client._paged(
                f"/orgs/{_q(o.slug)}/ds"))
            items = itertools.islice(every, skip, None if take is None else skip + take)
        return [DatasetInfo.from_json(d) for d in items]

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
        self, *, tool: str | None = None, state: str | None = None, id_prefix: str | None = None,
        skip: int = 0, take: int = 50,
    ) -> list[TaskStatus]:
        """Tasks of the dataset, newest first (``take`` is clamped to 1..200 by the service);
        ``id_prefix`` keeps those whose id starts with it (``"0b6f12ab"``)."""
        params: dict[str, Any] = {"skip": skip, "take": take}
        if tool is not None:
            params["toolId"] = tool
        if state is not None:
            params["state"] = state
        if id_prefix is not None:
            params["taskId"] = id_prefix
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
                    lines: list[str] = []
                    if status.log_cursor > cursor:
                        lines = self.log_page(cursor).upto(status.log_cursor)
                        cursor = status.log_cursor
                    view.show(status, lines)
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


def _is_regular_file(obj: object) -> bool:
    """An open file whose size ``fstat`` knows (httpx sends it as Content-Length)."""
    try:
        return stat.S_ISREG(os.fstat(obj.fileno()).st_mode)  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


def _chunks(stream: Any) -> Iterator[bytes]:
    while chunk := stream.read(CHUNK_SIZE):
        yield chunk


def _q(segment: str, safe: str = "") -> str:
    return quote(segment, safe=safe)
