"""The task routes over real HTTP against a real Dask cluster, with bulk-download as the tool."""

from __future__ import annotations

import hashlib
import io
import os
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.harness import LiveServer, World, big_text, new_world


def test_submit_runs_bulk_download_to_a_downloadable_artifact(world: World) -> None:
    world.upload("a/1.txt", b"one")
    world.upload("a/2.txt", b"two")
    response = world.submit("bulk-download", {"paths": ["a"], "archiveName": "sel"})
    assert response.status_code == 202, response.text
    body = response.json()
    assert response.headers["location"] == body["statusUrl"]
    assert body["deduplicated"] is False and body["estimatedOutputBytes"] > 0
    status = world.wait(body["taskId"])
    assert status["state"] == "Succeeded", status
    assert status["progress"]["percent"] == 100
    artifact = status["artifact"]
    assert artifact["fileName"] == "sel.zip"
    result = world.user.get(body["resultUrl"])
    assert result.status_code == 200
    assert result.headers["etag"] == f'"{artifact["sha256"]}"'
    assert hashlib.sha256(result.content).hexdigest() == artifact["sha256"]
    assert "attachment" in result.headers["content-disposition"]
    archive = zipfile.ZipFile(io.BytesIO(result.content))
    assert sorted(archive.namelist()) == ["a/1.txt", "a/2.txt"]
    assert any("Archive complete" in line for line in status["logTail"]), status["logTail"]


def test_result_supports_ranges_conditional_and_head(world: World) -> None:
    world.upload("r.txt", os.urandom(50_000))
    task_id = world.submit("bulk-download", {"paths": ["r.txt"]}).json()["taskId"]
    status = world.wait(task_id)
    url = f"{world.tasks_url}/{task_id}/result"
    full = world.user.get(url).content
    etag = f'"{status["artifact"]["sha256"]}"'
    part = world.user.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == full[10:20]
    multi = world.user.get(url, headers={"Range": "bytes=0-1,100-101"})
    assert multi.status_code == 206 and "multipart/byteranges" in multi.headers["content-type"]
    bad = world.user.get(url, headers={"Range": f"bytes={len(full) + 10}-"})
    assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{len(full)}"
    assert world.user.get(url, headers={"If-None-Match": etag}).status_code == 304
    assert world.user.get(url, headers={"If-Range": etag, "Range": "bytes=0-0"}).status_code == 206
    assert world.user.get(url, headers={"If-Range": '"stale"', "Range": "bytes=0-0"}).status_code == 200
    head = world.user.head(url)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(full)


def test_identical_submission_is_deduplicated_and_force_makes_new(world: World) -> None:
    world.upload("d.txt", b"d")
    first = world.submit("bulk-download", {"paths": ["d.txt"]})
    second = world.submit("bulk-download", {"paths": ["d.txt"]})
    assert first.status_code == 202 and second.status_code == 200
    assert second.json()["deduplicated"] is True
    assert second.json()["taskId"] == first.json()["taskId"]
    world.wait(first.json()["taskId"])
    after = world.submit("bulk-download", {"paths": ["d.txt"]})
    assert after.status_code == 200 and after.json()["taskId"] == first.json()["taskId"]
    forced = world.submit("bulk-download", {"paths": ["d.txt"]}, force=True)
    assert forced.status_code == 202 and forced.json()["taskId"] != first.json()["taskId"]


def test_fifty_concurrent_identical_submissions_create_one_task(world: World) -> None:
    world.upload("c.txt", b"c")

    def submit(_: int) -> tuple[int, str]:
        r = world.submit("bulk-download", {"paths": ["c.txt"], "archiveName": "same"})
        return r.status_code, r.json().get("taskId", r.text)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(submit, range(50)))
    codes = sorted(code for code, _ in results)
    assert codes.count(202) == 1 and codes.count(200) == 49, codes
    assert len({task for _, task in results}) == 1


def test_fifty_distinct_submissions_against_quota_of_five_create_five(make_server) -> None:
    live: LiveServer = make_server(max_concurrent_bulk_downloads_per_user=100, max_queued_tasks_per_user=5)
    w = new_world(live)
    w.upload("big.txt", big_text(20_000_000))

    def submit(i: int) -> int:
        r = w.submit("bulk-download", {"paths": ["big.txt"], "archiveName": f"n{i}"})
        assert r.status_code != 500, r.text
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) > 0
            assert "queued tasks" in r.json()["error"]
        return r.status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(submit, range(50)))
    assert codes.count(202) == 5 and codes.count(429) == 45, sorted(codes)
    listed = w.user.get(w.tasks_url, params={"take": 200}).json()
    assert len(listed) == 5
    for task in listed:
        w.user.delete(f"{w.tasks_url}/{task['taskId']}")


def test_estimated_output_above_quota_is_413(make_server) -> None:
    live: LiveServer = make_server(max_estimated_output_bytes_per_submit=1000)
    w = new_world(live)
    w.upload("x.bin", os.urandom(5000))
    response = w.submit("bulk-download", {"paths": ["x.bin"]})
    assert response.status_code == 413 and "estimated output" in response.json()["error"]


def test_progress_and_log_cursor_semantics(world: World) -> None:
    world.upload("p/big.txt", big_text(150_000_000, seed=1))
    task_id = world.submit("bulk-download", {"paths": ["p"]}).json()["taskId"]
    seen_percents = []
    cursor = 0
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = world.user.get(f"{world.tasks_url}/{task_id}").json()
        seen_percents.append(status["progress"]["percent"])
        page = world.user.get(f"{world.tasks_url}/{task_id}/log", params={"since": cursor}).json()
        lines += page["lines"]
        assert page["cursor"] >= cursor
        cursor = page["cursor"]
        if status["state"] == "Succeeded":
            break
        time.sleep(0.1)
    final = world.user.get(f"{world.tasks_url}/{task_id}/log", params={"since": cursor}).json()
    lines += final["lines"]
    assert seen_percents[-1] == 100
    assert any(0 < p < 100 for p in seen_percents), seen_percents
    assert len(lines) == final["cursor"] and final["truncatedFromTail"] == 0
    assert all(line.startswith("[") and line[9] == "]" for line in lines), lines
    assert world.user.get(f"{world.tasks_url}/{task_id}/log", params={"since": final["cursor"]}).json()["lines"] == []


def test_cancel_stops_running_task_promptly_and_leaves_no_output(world: World) -> None:
    world.upload("slow/big.txt", big_text(200_000_000, seed=2))
    task_id = world.submit("bulk-download", {"paths": ["slow"]}).json()["taskId"]
    world.wait(task_id, states=("Processing",))
    time.sleep(0.5)
    started = time.monotonic()
    response = world.user.delete(f"{world.tasks_url}/{task_id}")
    assert response.status_code == 200 and response.json()["state"] == "Deleted"
    work_dir = world.server.settings.work_dir
    while any(p.name.startswith(task_id) for p in work_dir.iterdir()):
        assert time.monotonic() - started < 5, "the tool did not stop within 5 s"
        time.sleep(0.05)
    assert not (world.server.settings.artifacts_dir / task_id).exists()
    log = world.user.get(f"{world.tasks_url}/{task_id}/log").json()["lines"]
    assert any("Cancelled" in line for line in log)


def _scheduler_events(address: str) -> set[str]:
    """The names of the Dask events the scheduler holds."""
    from distributed import Client

    def names(dask_scheduler: Any) -> list[str]:
        return [str(name) for name in dask_scheduler.extensions["events"]._events]

    with Client(address, timeout="30s") as client:
        return set(client.run_on_scheduler(names))


def test_scheduler_forgets_the_cancel_event_of_a_cancelled_task(world: World) -> None:
    # The supervisor clears a task's cancel event only when a cancel may have set it; a
    # cancelled task's must still go, or the scheduler keeps one per cancel for good.
    from procplat.engine.job import cancel_event_name

    address = world.server.settings.dask_address
    assert address is not None
    world.upload("slow/big.txt", big_text(200_000_000, seed=3))
    task_id = world.submit("bulk-download", {"paths": ["slow"]}).json()["taskId"]
    world.wait(task_id, states=("Processing",))
    assert world.user.delete(f"{world.tasks_url}/{task_id}").status_code == 200
    # the cancel set the event (it may already be cleared again when we first look)
    deadline = time.monotonic() + 15
    while cancel_event_name(task_id) in _scheduler_events(address):
        assert time.monotonic() < deadline, "the cancel event was never cleared"
        time.sleep(0.1)
    world.upload("t2.txt", b"t")
    done = world.submit("bulk-download", {"paths": ["t2.txt"]}).json()["taskId"]
    world.wait(done)
    assert cancel_event_name(done) not in _scheduler_events(address)


def test_cancel_terminal_task_marks_deleted_and_purges_artifact(world: World) -> None:
    world.upload("t.txt", b"t")
    task_id = world.submit("bulk-download", {"paths": ["t.txt"]}).json()["taskId"]
    world.wait(task_id)
    assert world.user.delete(f"{world.tasks_url}/{task_id}").json()["state"] == "Deleted"
    assert world.user.get(f"{world.tasks_url}/{task_id}/result").status_code == 404
    assert not (world.server.settings.artifacts_dir / task_id).exists()


def test_only_owner_org_owner_or_admin_can_cancel(server: LiveServer, world: World) -> None:
    member = new_world(server)
    world.user.post(f"/orgs/{world.org}/members", json={"username": member.username})
    world.upload("o.txt", b"o")
    task_id = world.submit("bulk-download", {"paths": ["o.txt"]}).json()["taskId"]
    assert member.user.delete(f"{world.tasks_url}/{task_id}").status_code == 403
    assert world.admin.delete(f"{world.tasks_url}/{task_id}").status_code == 200


def test_list_filters_and_clamps_take(world: World) -> None:
    world.upload("l.txt", b"l")
    ids = []
    for i in range(3):  # one at a time: one active bulk download per user by default
        ids.append(world.submit("bulk-download", {"paths": ["l.txt"], "archiveName": f"l{i}"}).json()["taskId"])
        world.wait(ids[-1])
    listed = world.user.get(world.tasks_url, params={"toolId": "BULK-DOWNLOAD", "state": "Succeeded", "take": 0}).json()
    assert len(listed) == 1 and listed[0]["taskId"] == ids[-1]
    listed = world.user.get(world.tasks_url, params={"take": 5000}).json()
    assert [t["taskId"] for t in listed] == ids[::-1]
    assert world.user.get(world.tasks_url, params={"state": "Bogus"}).status_code == 400


def test_clear_removes_concluded_tasks_and_artifacts(world: World) -> None:
    world.upload("k.txt", b"k")
    task_id = world.submit("bulk-download", {"paths": ["k.txt"]}).json()["taskId"]
    world.wait(task_id)
    assert (world.server.settings.artifacts_dir / task_id).exists()
    cleared = world.user.post(f"{world.tasks_url}/clear", params={"toolId": "bulk-download"})
    assert cleared.status_code == 200 and cleared.json()["cleared"] == 1
    assert world.user.get(f"{world.tasks_url}/{task_id}").status_code == 404
    assert not (world.server.settings.artifacts_dir / task_id).exists()


def test_admin_sees_all_tasks(server: LiveServer, world: World) -> None:
    world.upload("s.txt", b"s")
    task_id = world.submit("bulk-download", {"paths": ["s.txt"]}).json()["taskId"]
    page = world.admin.get("/sys/tasks", params={"take": 500}).json()
    assert page["take"] == 200
    item = next(i for i in page["items"] if i["taskId"] == task_id)
    assert item["orgSlug"] == world.org and item["dsSlug"] == world.ds
    assert world.user.get("/sys/tasks").status_code == 403


def test_expired_artifact_answers_410(make_server) -> None:
    live: LiveServer = make_server(artifact_ttl_hours=0.0003)
    w = new_world(live)
    w.upload("e.txt", b"e")
    task_id = w.submit("bulk-download", {"paths": ["e.txt"]}).json()["taskId"]
    w.wait(task_id)
    time.sleep(1.2)
    assert w.user.get(f"{w.tasks_url}/{task_id}/result").status_code == 410
    live.app_state.supervisor.sweep()
    assert not (live.settings.artifacts_dir / task_id).exists()
    assert w.user.get(f"{w.tasks_url}/{task_id}/result").status_code == 410
    again = w.submit("bulk-download", {"paths": ["e.txt"]})
    assert again.status_code == 202, "an expired artifact must not satisfy dedup"


@pytest.mark.parametrize("tool", ["bulk-download", "Bulk-Download"])
def test_tool_lookup_is_case_insensitive_and_versioned(world: World, tool: str) -> None:
    world.upload("v.txt", b"v")
    assert world.submit(tool, {"paths": ["v.txt"]}, version="1").status_code in (200, 202)
    assert world.submit(tool, {"paths": ["v.txt"]}, version="7").status_code == 400
    tools = world.user.get(f"{world.tasks_url}/tools").json()
    bulk = next(t for t in tools if t["id"] == "bulk-download")
    assert bulk["producesArtifact"] and bulk["resultExtension"] == ".zip"
    assert bulk["inputSchema"]["additionalProperties"] is False


def test_log_ring_buffer_keeps_the_newest_lines_within_limits(make_server) -> None:
    live: LiveServer = make_server(log_tail_max_lines=4, log_tail_max_bytes=150)
    w = new_world(live)
    w.upload("ring/big.txt", big_text(20_000_000, seed=3))
    task_id = w.submit("bulk-download", {"paths": ["ring"]}).json()["taskId"]
    assert w.wait(task_id)["state"] == "Succeeded"
    page = w.user.get(f"{w.tasks_url}/{task_id}/log", params={"since": 0}).json()
    kept = page["lines"]
    assert page["cursor"] > 4 and page["truncatedFromTail"] == page["cursor"] - len(kept)
    assert 1 <= len(kept) <= 4
    assert sum(len(line.encode()) for line in kept) <= 150
    assert "Archive complete" in kept[-1]
    newest = w.user.get(f"{w.tasks_url}/{task_id}/log", params={"since": page["cursor"] - 1}).json()
    assert newest["lines"] == kept[-1:]


def test_large_files_are_deflated_by_pieces_on_the_cluster(world: World) -> None:
    from distributed import Client

    world.upload("many/one.txt", big_text(12_000_000, seed=4))
    world.upload("many/two.txt", big_text(12_000_000, seed=5))
    task_id = world.submit("bulk-download", {"paths": ["many"]}).json()["taskId"]
    assert world.wait(task_id)["state"] == "Succeeded"
    archive = zipfile.ZipFile(io.BytesIO(world.user.get(f"{world.tasks_url}/{task_id}/result").content))
    assert archive.read("many/two.txt") == big_text(12_000_000, seed=5)
    with Client(world.server.settings.dask_address, timeout="30s") as client:
        prefixes = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))
    assert "bulk_download_deflate" in prefixes


def test_sweeper_removes_staging_folders_of_tasks_that_are_no_longer_active(
    server: LiveServer, world: World
) -> None:
    """A crash can leave a tool's ``.ddb/tmp/<tool>-<task id>`` behind; uploads' temporary
    files and folders of active tasks are left alone."""
    world.upload("s.txt", b"s")
    finished = world.submit("bulk-download", {"paths": ["s.txt"]}).json()["taskId"]
    world.wait(finished)
    tmp = world.root / ".ddb" / "tmp"
    leftover = tmp / f"merge-multispectral-{finished}"
    (leftover / "sub").mkdir(parents=True)
    (leftover / "sub" / "half.tif").write_bytes(b"half")
    unknown = tmp / "upload-0123456789abcdef0123456789abcdef"
    unknown.write_bytes(b"an upload in flight")
    # What a killed process left: an upload folder quiet for longer than any live upload is,
    # and a delete's trash long after its commit; a fresh trash is a delete in progress.
    dead_upload = tmp / f"upload-{'a' * 32}"
    dead_upload.mkdir()
    (dead_upload / "ortho.tif").write_bytes(b"half an upload")
    old_trash = tmp / f"trash-{'b' * 32}"
    (old_trash / "folder").mkdir(parents=True)
    fresh_trash = tmp / f"trash-{'c' * 32}"
    fresh_trash.write_bytes(b"being removed")
    long_ago = time.time() - 7 * 3600
    for item in (dead_upload / "ortho.tif", dead_upload, old_trash):
        os.utime(item, (long_ago, long_ago))
    swept = server.app_state.supervisor.sweep()
    assert not leftover.exists()
    assert unknown.exists()
    assert not dead_upload.exists() and not old_trash.exists()
    assert fresh_trash.exists()
    assert swept["leftovers"] == 2
    unknown.unlink()
    fresh_trash.unlink()


def test_a_finished_write_tool_runs_again_when_resubmitted(world: World) -> None:
    """Dedup answers with a Succeeded task only while its artifact lives; a tool that writes
    into the dataset has none, so the same request runs again (the dataset may have changed)."""
    world.upload("r/a.txt", b"a")
    first = world.submit("rescan-index", {})
    assert first.status_code == 202, first.text
    assert world.wait(first.json()["taskId"])["state"] == "Succeeded"
    again = world.submit("rescan-index", {})
    assert again.status_code == 202 and again.json()["taskId"] != first.json()["taskId"]


def test_each_task_is_a_dask_span_holding_the_chunks_its_tool_fans_out(
    server: LiveServer, world: World
) -> None:
    """The dashboard groups a task's work: the task and the sub-tasks it submits from the
    worker live in the span ("procplat", tool, task id); health and status link the dashboard."""
    from distributed import Client

    world.upload("span/a.bin", bytes(range(256)) * 40_000)  # 10 MB: deflated in pieces
    task_id = world.submit("bulk-download", {"paths": ["span"]}).json()["taskId"]
    status = world.wait(task_id)
    assert status["state"] == "Succeeded"
    assert status["dashboardLink"] and world.user.get("/sys/health").json()["dashboardLink"]

    def spans(dask_scheduler, task=task_id):  # type: ignore[no-untyped-def]
        ext = dask_scheduler.extensions["spans"]
        found = [s for s in ext.spans.values() if s.name == ("procplat", "bulk-download", task)]
        return [sorted(g.name for g in s.traverse_groups()) for s in found]

    with Client(server.settings.dask_address, timeout="30s") as client:
        groups = client.run_on_scheduler(spans)
    assert groups, "no span for the task"
    names = {name for found in groups for name in found}
    assert task_id.split("-")[0] in names, names  # the task itself (its key's prefix)
    assert "bulk_download_deflate" in names, names  # the pieces it fanned out
