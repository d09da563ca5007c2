"""procplat.client against the real service over real HTTP: streamed uploads, submit and wait
with progress, the log iterator, cancel, typed errors, and downloads that resume with Range
after an interruption and verify the sha256 the ETag announces."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from procplat import client as pc
from tests.harness import LiveServer, World, big_text
from tests.test_build_tool import raster_bytes


def connect(world: World, **kwargs: Any) -> pc.Client:
    client = pc.Client(world.server.url, world.token, **kwargs)
    world.server.clients.append(client._http)  # closed with the server's other clients
    return client


class Requests:
    """An httpx response hook recording (method, path, Range header, status) of each request."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None, int]] = []

    def __call__(self, response: httpx.Response) -> None:
        request = response.request
        self.seen.append(
            (request.method, request.url.path, request.headers.get("range"), response.status_code)
        )

    def results(self) -> list[tuple[str | None, int]]:
        return [(r, s) for m, p, r, s in self.seen if m == "GET" and p.endswith("/result")]


class _CutStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, limit: int, request: httpx.Request) -> None:
        self.inner, self.limit, self.request = inner, limit, request

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for chunk in self.inner:
            if sent + len(chunk) >= self.limit:
                yield chunk[: self.limit - sent]
                raise httpx.ReadError("connection reset (test)", request=self.request)
            sent += len(chunk)
            yield chunk

    def close(self) -> None:
        self.inner.close()


class CutFirstResult(httpx.BaseTransport):
    """A real HTTP transport whose first artifact download breaks after ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.limit = limit
        self.armed = True

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if self.armed and request.url.path.endswith("/result") and response.status_code == 200:
            self.armed = False
            assert isinstance(response.stream, httpx.SyncByteStream)
            return httpx.Response(
                response.status_code, headers=response.headers, request=request,
                stream=_CutStream(response.stream, self.limit, request),
                extensions=response.extensions,
            )
        return response

    def close(self) -> None:
        self.inner.close()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def finished_artifact(world: World, size: int = 3_000_000) -> tuple[pc.Task, pc.TaskStatus]:
    """A Succeeded bulk-download whose artifact is ``size`` random bytes, zipped."""
    client = connect(world)
    ds = client.dataset(f"{world.org}/{world.ds}")
    ds.upload("r.bin", os.urandom(size))
    task = ds.submit("bulk-download", {"paths": ["r.bin"]})
    status = task.wait(progress=False, poll=0.1, timeout=60)
    assert status.artifact is not None and status.artifact.size_bytes > size
    return task, status


def test_upload_streams_files_and_generators(world: World, tmp_path: Path) -> None:
    requests: list[httpx.Request] = []
    client = connect(world, event_hooks={"request": [requests.append]})
    ds = client.dataset(f"{world.org}/{world.ds}")
    local = tmp_path / "local.bin"
    local.write_bytes(os.urandom(2_500_000))
    entry = ds.upload("in/local.bin", local)
    assert entry.path == "in/local.bin" and entry.size == 2_500_000
    assert entry.hash == hashlib.sha256(local.read_bytes()).hexdigest()
    assert requests[-1].headers["content-length"] == "2500000"

    pieces = [os.urandom(300_000) for _ in range(5)]
    entry = ds.upload("in/gen.bin", (piece for piece in pieces))
    assert requests[-1].headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in requests[-1].headers
    assert entry.size == 1_500_000 and entry.hash == hashlib.sha256(b"".join(pieces)).hexdigest()

    with open(local, "rb") as f:
        assert ds.upload("in/again.bin", f).hash == entry_hash(local)
    listed = {e.path: e for e in ds.entries(path="in")}
    assert {"in/local.bin", "in/gen.bin", "in/again.bin"} <= set(listed)
    assert listed["in/gen.bin"].type == "generic"


def entry_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_submit_wait_shows_progress_and_log_then_download_verifies(
    world: World, tmp_path: Path
) -> None:
    client = connect(world)
    ds = client.datasets.get(f"{world.org}/{world.ds}")
    ds.upload("a/1.txt", big_text(3_000_000, seed=0))
    ds.upload("a/2.txt", b"two")
    task = ds.submit("bulk-download", {"paths": ["a"], "archiveName": "sel"})
    assert task.submission is not None and not task.submission.deduplicated
    out = io.StringIO()  # not a terminal: plain lines
    status = task.wait(progress=True, file=out, poll=0.1, timeout=60)
    assert status.state == "Succeeded" and status.percent == 100
    shown = out.getvalue()
    assert "\r" not in shown and shown.splitlines()[-1].startswith("bulk-download Succeeded")
    assert shown.splitlines()[-1].endswith(" 100%"), shown
    assert "Archive complete" in shown, shown  # a log line

    terminal = Terminal()
    assert task.wait(progress=True, file=terminal).state == "Succeeded"
    drawn = terminal.getvalue()  # a tqdm bar, the log lines written above it
    assert "\r" in drawn and "100%|" in drawn and "bulk-download Succeeded" in drawn, drawn
    assert "Archive complete" in drawn

    lines = list(task.log(follow=True, poll=0.1))
    assert lines and lines == list(task.log(follow=False))
    assert any("Archive complete" in line for line in lines)
    assert all(line in shown for line in lines)
    assert list(task.log(len(lines), follow=False)) == []

    assert ds.submit("bulk-download", {"paths": ["a"], "archiveName": "sel"}).id == task.id
    again = ds.submit("bulk-download", {"paths": ["a"], "archiveName": "sel"})
    assert again.submission is not None and again.submission.deduplicated
    assert [t.task_id for t in ds.tasks(tool="bulk-download")] == [task.id]
    assert any(t.id == "bulk-download" and t.produces_artifact for t in ds.tools())

    assert status.artifact is not None and status.artifact.file_name == "sel.zip"
    saved = task.download(tmp_path)
    assert saved == tmp_path / "sel.zip"
    assert entry_hash(saved) == status.artifact.sha256
    assert not (tmp_path / "sel.zip.part").exists()


def test_download_interrupted_half_way_resumes_with_range(world: World, tmp_path: Path) -> None:
    task, status = finished_artifact(world)
    assert status.artifact is not None
    size, half = status.artifact.size_bytes, status.artifact.size_bytes // 2
    dest = tmp_path / "out.zip"

    cut = connect(world, transport=CutFirstResult(half))
    with pytest.raises(pc.TransportError, match="call again to resume"):
        cut.dataset(task.dataset.name).task(task.id).download(dest, retries=0)
    part = tmp_path / "out.zip.part"
    assert part.stat().st_size == half and not dest.exists()

    seen = Requests()
    fresh = connect(world, event_hooks={"response": [seen]})
    assert fresh.dataset(task.dataset.name).task(task.id).download(dest) == dest
    assert seen.results() == [(f"bytes={half}-", 206)]
    assert dest.stat().st_size == size and entry_hash(dest) == status.artifact.sha256
    assert not part.exists()


def test_download_resumes_by_itself_after_a_dropped_connection(
    world: World, tmp_path: Path
) -> None:
    task, status = finished_artifact(world)
    assert status.artifact is not None
    third = status.artifact.size_bytes // 3
    seen = Requests()
    client = connect(world, transport=CutFirstResult(third), event_hooks={"response": [seen]})
    dest = client.dataset(task.dataset.name).task(task.id).download(tmp_path / "x.zip")
    assert seen.results() == [(None, 200), (f"bytes={third}-", 206)]
    assert entry_hash(dest) == status.artifact.sha256


def test_corrupted_part_file_fails_the_sha256_check_and_is_downloaded_again(
    world: World, tmp_path: Path
) -> None:
    task, status = finished_artifact(world, size=1_000_000)
    assert status.artifact is not None
    dest = tmp_path / "c.zip"
    (tmp_path / "c.zip.part").write_bytes(b"\0" * 1000)  # right length to resume, wrong bytes
    seen = Requests()
    client = connect(world, event_hooks={"response": [seen]})
    client.dataset(task.dataset.name).task(task.id).download(dest)
    assert seen.results() == [("bytes=1000-", 206), (None, 200)]
    assert entry_hash(dest) == status.artifact.sha256

    # A part file longer than the artifact cannot be resumed (416): it is discarded.
    (tmp_path / "d.zip.part").write_bytes(b"\0" * (status.artifact.size_bytes + 10))
    seen.seen.clear()
    client.dataset(task.dataset.name).task(task.id).download(tmp_path / "d.zip")
    assert seen.results() == [(f"bytes={status.artifact.size_bytes + 10}-", 416), (None, 200)]
    assert entry_hash(tmp_path / "d.zip") == status.artifact.sha256


def test_cancel_long_task_quota_429_and_task_cancelled(world: World, tmp_path: Path) -> None:
    client = connect(world)
    ds = client.dataset(f"{world.org}/{world.ds}")
    ds.upload("slow/big.txt", big_text(60_000_000, seed=0))
    ds.upload("small.txt", b"s")
    task = ds.submit("bulk-download", {"paths": ["slow"]})
    deadline = time.monotonic() + 30
    while task.status().state != "Processing":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # One active bulk download per user by default: a second one is refused for now.
    with pytest.raises(pc.TooManyRequests) as refused:
        ds.submit("bulk-download", {"paths": ["small.txt"]})
    assert refused.value.status == 429
    assert refused.value.retry_after is not None and refused.value.retry_after > 0
    assert "bulk download" in refused.value.message.lower(), refused.value.message

    assert task.cancel().state == "Deleted"
    with pytest.raises(pc.TaskCancelled) as cancelled:
        task.wait(progress=False)
    assert cancelled.value.status.state == "Deleted"
    with pytest.raises(pc.TaskCancelled):
        task.download(tmp_path / "never.zip")
    assert any("Cancelled" in line for line in task.log(follow=False))


def test_failed_task_raises_task_failed_with_its_error(world: World) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    ds = connect(world).dataset(f"{world.org}/{world.ds}")
    ds.upload("bad.tar.gz", buffer.getvalue())
    task = ds.submit("archive-extract", {"sourcePath": "bad.tar.gz"})
    with pytest.raises(pc.TaskFailed) as failed:
        task.wait(progress=False, poll=0.1, timeout=60)
    assert failed.value.status.state == "Failed"
    assert "escape.txt" in failed.value.message
    assert failed.value.message == failed.value.status.error
    assert task.wait(progress=False, raise_on_failure=False).state == "Failed"


def test_errors_are_typed_and_carry_the_servers_message(server: LiveServer, world: World) -> None:
    client = connect(world)
    with pytest.raises(pc.NotFound) as missing:
        client.dataset(f"{world.org}/nope").submit("bulk-download", {})
    assert missing.value.status == 404 and "nope" in missing.value.message
    assert str(missing.value).startswith("HTTP 404: ")

    ds = client.dataset(f"{world.org}/{world.ds}")
    with pytest.raises(pc.BadRequest) as bad:
        ds.submit("bulk-download", {"pathz": ["x"]})
    assert bad.value.status == 400 and "invalid parameters for bulk-download" in bad.value.message
    assert isinstance(bad.value.details, list) and bad.value.details
    with pytest.raises(pc.BadRequest, match="unknown tool|no-such-tool"):
        ds.submit("no-such-tool", {})

    intruder = pc.Client(server.url, "not-a-token")
    server.clients.append(intruder._http)
    with pytest.raises(pc.Unauthorized, match="invalid token"):
        intruder.dataset(ds.name).info()
    anonymous = pc.Client(server.url)
    server.clients.append(anonymous._http)
    with pytest.raises(pc.NotFound):  # a private dataset is invisible to the anonymous
        anonymous.datasets.get(ds.name)
    with pytest.raises(pc.NotFound):
        ds.task("00000000-0000-0000-0000-000000000000").status()
    with pytest.raises(ValueError, match="org/ds"):
        client.dataset("just-a-name")

    public = client.datasets.create(f"{world.org}/open", visibility="public")
    with pytest.raises(pc.Conflict, match="already exists"):
        client.datasets.create(public)
    assert anonymous.datasets.get(public.name).name == public.name  # public: readable
    with pytest.raises(pc.Unauthorized, match="authentication required"):
        anonymous.dataset(public).submit("bulk-download", {})

    with pytest.raises(pc.TransportError), pc.Client("http://127.0.0.1:9", timeout=2) as nowhere:
        nowhere.tool_ids()
    assert "bulk-download" in client.tool_ids()
    assert issubclass(pc.TooManyRequests, pc.HTTPError)
    assert issubclass(pc.HTTPError, pc.ProcplatError)
    assert issubclass(pc.TaskCancelled, pc.TaskError) and issubclass(pc.WaitTimeout, TimeoutError)


def test_wait_timeout_raises_wait_timeout(world: World) -> None:
    ds = connect(world).dataset(f"{world.org}/{world.ds}")
    ds.upload("w/big.txt", big_text(40_000_000, seed=0))
    task = ds.submit("bulk-download", {"paths": ["w"]})
    with pytest.raises(pc.WaitTimeout):
        task.wait(progress=False, timeout=0.2, poll=0.05)
    task.cancel()


def test_task_status_exposes_params_and_path(world: World, tmp_path: Path) -> None:
    ds = connect(world).dataset(f"{world.org}/{world.ds}")
    ds.upload("p/a.txt", b"a")
    task = ds.submit("bulk-download", {"paths": ["p/a.txt"], "archiveName": "pa"})
    status = task.wait(progress=False, poll=0.1, timeout=60)
    assert status.params == {"paths": ["p/a.txt"], "archiveName": "pa"}
    assert status.path is None  # bulk-download takes paths, not a path
    assert [t.params for t in ds.tasks(tool="bulk-download")] == [status.params]

    ds.upload("r.tif", raster_bytes(tmp_path, 64))
    export = ds.submit("raster-export", {"bands": "3,2,1"}, path="r.tif")
    done = export.wait(progress=False, poll=0.1, timeout=60)
    assert done.path == "r.tif" and done.params == {"path": "r.tif", "bands": "3,2,1"}
    assert export.status().path == "r.tif"


class Replay(httpx.BaseTransport):
    """The answers of a task's status and log routes as recorded from a real run, replayed in
    order: each status request takes the next recorded status (the last one repeats), each log
    request sees the lines the service held at that moment (``log_after[i]``: after the i-th
    status was read, which is how a log page can be newer than the status before it)."""

    def __init__(self, statuses: list[dict[str, Any]], lines: list[str], log_after: list[int]):
        self.statuses, self.lines, self.log_after = statuses, lines, log_after
        self.polls = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/log"):
            held = self.log_after[min(self.polls, len(self.log_after)) - 1]
            since = int(request.url.params.get("since", 0))
            return httpx.Response(200, json={
                "cursor": held, "lines": self.lines[since:held], "truncatedFromTail": 0})
        status = self.statuses[min(self.polls, len(self.statuses) - 1)]
        self.polls += 1
        return httpx.Response(200, json=status)


def _recorded(state: str, percent: int, phase: str | None, cursor: int) -> dict[str, Any]:
    return {"taskId": "0b6f12ab-0000-4000-8000-000000000000", "toolId": "raster-export",
            "version": "1", "state": state, "path": "o.tif", "params": {"path": "o.tif"},
            "progress": {"percent": percent, "phase": phase}, "logCursor": cursor,
            "logTail": [], "artifact": None, "error": None if state != "Failed" else "boom"}


def _replayed(statuses: list[dict[str, Any]], lines: list[str], log_after: list[int],
              terminal: bool = True) -> str:
    replay = Replay(statuses, lines, log_after)
    with pc.Client("http://recorded.invalid", transport=replay) as client:
        out: io.StringIO = Terminal() if terminal else io.StringIO()
        task = client.dataset("acme/survey").task(statuses[0]["taskId"])
        task.wait(progress=True, file=out, poll=0, raise_on_failure=False)
    return out.getvalue()


def _bars(drawn: str) -> list[str]:
    """Every state the bar or a plain line showed, in order, with the log lines between."""
    return [piece.strip() for piece in drawn.replace("\r", "\n").split("\n") if piece.strip()]


WRITTEN = "[12:00:03] Written o_export.tif"


def test_wait_never_draws_a_bar_older_than_the_log_lines_above_it() -> None:
    lines = ["[12:00:01] Exporting o.tif", "[12:00:02] rendering", WRITTEN]
    # A fast task: the first status still says Created; by the next one it is done. Then a
    # status whose log page (read a moment later) already holds a newer line.
    for statuses, log_after in [
        ([_recorded("Created", 0, None, 0), _recorded("Succeeded", 100, "storing artifact", 3)],
         [0, 3]),
        ([_recorded("Processing", 40, "rendering", 2), _recorded("Succeeded", 100, None, 3)],
         [3, 3]),
    ]:
        for terminal in (True, False):
            shown = _bars(_replayed(statuses, lines, log_after, terminal))
            after = shown[shown.index(WRITTEN) + 1:]
            assert after and all("Succeeded" in bar for bar in after), shown
            assert shown.count(WRITTEN) == 1 and all(line in shown for line in lines), shown


def test_a_failed_tasks_bar_never_reads_100_percent() -> None:
    # raster-export finished its rendering phase (100% of that phase), then failed.
    statuses = [_recorded("Processing", 100, "rendering", 1), _recorded("Failed", 100, "rendering", 2)]
    for terminal in (True, False):
        shown = _bars(_replayed(statuses, ["[1] rendering", "[2] Error: disk full"], [1, 2], terminal))
        final = shown[-1]
        assert "Failed" in final and "100%" not in final and "99%" in final, shown
