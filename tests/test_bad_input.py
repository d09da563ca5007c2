"""Bad input over real HTTP: never a 500, never a half-written file, never a byte from outside
the dataset.

Every request here goes through a real uvicorn socket. Paths the HTTP client would normalise
(literal ``..`` segments, ``//``) are sent byte for byte with :func:`raw_request` (httpcore, the
transport under httpx); each path case also names the reason the service must give, which
shows what reached the application after percent-decoding.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

from tests.harness import LiveServer, World, new_world, tree_snapshot

SECRET = b"outside-the-dataset-" + uuid.uuid4().hex.encode()


# --- helpers ---------------------------------------------------------------------------------


def raw_request(
    client: httpx.Client, method: str, target: str, *, content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """Send ``target`` exactly as written (no dot-segment or slash normalisation)."""
    base = client.base_url
    sent = [(k, v) for k, v in client.headers.items() if k.lower() == "authorization"]
    sent += list((headers or {}).items())
    with httpcore.ConnectionPool() as pool:
        reply = pool.request(
            method,
            httpcore.URL(scheme=b"http", host=base.host.encode(), port=base.port, target=target.encode()),
            headers=sent, content=content,
        )
    return httpx.Response(reply.status, headers=reply.headers, content=reply.content)


def folder_names(folder: Path) -> set[str]:
    """The names in one folder (the index's own SQLite files come and go)."""
    return {p.name for p in folder.iterdir() if not p.name.startswith("procplat.sqlite")}


def disk_state(world: World, *extra: Path) -> list[Any]:
    """Everything under the world's org folder (its dataset and whatever sits beside it), the
    names in every folder above it up to the service's data folder's parent, and everything
    under the ``extra`` folders."""
    org_folder = world.root.parent
    above = [org_folder.parent, world.server.settings.data, world.server.settings.data.parent]
    return [tree_snapshot(org_folder), *(folder_names(p) for p in above), *(tree_snapshot(p) for p in extra)]


@contextlib.contextmanager
def leaves_no_trace(world: World, *extra: Path) -> Iterator[None]:
    """Nothing created, changed or removed on disk, inside or outside the dataset."""
    before = disk_state(world, *extra)
    yield
    assert disk_state(world, *extra) == before
    assert list((world.root / ".ddb" / "tmp").iterdir()) == []


def assert_error(response: httpx.Response, status: int, *fragments: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    for fragment in fragments:
        assert fragment.lower() in body["error"].lower(), (fragment, body)
    return body


def assert_not_escaped(world: World, name: str) -> None:
    """No file called ``name`` next to the dataset or in any folder above it, nor in /etc."""
    for folder in (world.root, *world.root.parents, Path("/etc")):
        assert not (folder / name).exists(), folder / name


def no_tasks(world: World) -> bool:
    return world.user.get(world.tasks_url).json() == []


def no_entries(world: World) -> bool:
    return world.user.get(f"{world.ds_url}/entries", params={"recursive": "true"}).json() == []


def zip_contents(content: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside every dataset, holding a file with known content."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_bytes(SECRET)
    return folder


# --- path traversal in the file routes -------------------------------------------------------

# (what follows /files/ on the wire, with {n} a fresh name; a fragment of the expected error,
# which shows what the application saw after percent-decoding)
FILE_PATHS = [
    ("../{n}", "'..'"),
    ("%2e%2e/{n}", "'..'"),
    ("%2E%2E%2F{n}", "'..'"),
    ("sub/../../{n}", "'..'"),
    ("sub/%2e%2e/%2e%2e/%2e%2e/{n}", "'..'"),
    ("..%2F..%2F..%2F..%2F{n}", "'..'"),
    ("/etc/{n}", "absolute"),
    ("%2Fetc%2F{n}", "absolute"),
    ("C:/{n}", "absolute"),
    ("{n}%00.txt", "control character"),
    ("sub%01/{n}", "control character"),
    ("sub%0A/{n}", "Not Found"),  # a newline never matches the route: 404 before any check
    ("..%5C{n}", "backslash"),
    ("sub%5C..%5C..%5C{n}", "backslash"),
    (".ddb/{n}", ".ddb"),
    (".ddb/tmp/{n}", ".ddb"),
    ("%2Eddb/{n}", ".ddb"),
    (".DDB/{n}", ".ddb"),
    ("./.ddb/{n}", ".ddb"),
    ("%2e", "empty"),
    ("{long}", "a name may have at most 255 bytes"),
    ("sub/{long}/{n}", "a name may have at most 255 bytes"),
]
FILE_PATH_IDS = [p for p, _ in FILE_PATHS]


def file_target(world: World, pattern: str, name: str) -> str:
    return f"{world.ds_url}/files/" + pattern.format(n=name, long="a" * 300)


def expected_status(reason: str) -> int:
    return 404 if reason == "Not Found" else 400


@pytest.mark.parametrize(("pattern", "reason"), FILE_PATHS, ids=FILE_PATH_IDS)
def test_upload_cannot_escape_the_dataset_or_enter_ddb(world: World, pattern: str, reason: str) -> None:
    name = f"escape-{uuid.uuid4().hex}"
    with leaves_no_trace(world):
        response = raw_request(world.user, "PUT", file_target(world, pattern, name), content=b"evil")
        assert_error(response, expected_status(reason), reason)
    assert_not_escaped(world, name)
    assert no_entries(world)


def test_a_nested_folder_named_ddb_is_an_ordinary_folder(world: World) -> None:
    """The control case: only the dataset's own .ddb is reserved."""
    response = raw_request(world.user, "PUT", f"{world.ds_url}/files/sub//.ddb/x.txt", content=b"ok")
    assert response.status_code == 201, response.text
    assert (world.root / "sub" / ".ddb" / "x.txt").read_bytes() == b"ok"
    assert world.user.get(f"{world.ds_url}/files/sub/.ddb/x.txt").content == b"ok"


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
@pytest.mark.parametrize(("pattern", "reason"), FILE_PATHS, ids=FILE_PATH_IDS)
def test_read_and_delete_cannot_escape_the_dataset_or_enter_ddb(
    world: World, pattern: str, reason: str, method: str
) -> None:
    name = f"planted-{uuid.uuid4().hex}"
    # the files a traversal would reach: next to the dataset, above it, and in .ddb
    for folder in (world.root.parent, world.root.parent.parent, world.root / ".ddb"):
        (folder / name).write_bytes(SECRET)
    (world.root / "sub").mkdir()
    try:
        with leaves_no_trace(world):
            response = raw_request(world.user, method, file_target(world, pattern, name))
            assert response.status_code == expected_status(reason), (response.status_code, response.text)
            assert SECRET not in response.content
            if method != "HEAD":
                assert_error(response, expected_status(reason), reason)
    finally:
        for folder in (world.root.parent, world.root.parent.parent):
            (folder / name).unlink()


def test_traversal_with_a_second_slash_does_not_reach_another_dataset(server: LiveServer, world: World) -> None:
    other = new_world(server)
    other.upload("theirs.txt", b"theirs")
    target = f"{world.ds_url}/files/../../../{other.org}/ds/theirs.txt"
    for method in ("GET", "DELETE"):
        response = raw_request(world.user, method, target)
        assert_error(response, 400, "'..'")
    assert other.user.get(f"{other.ds_url}/files/theirs.txt").content == b"theirs"


# --- path traversal in query parameters and tool parameters ----------------------------------

QUERY_PATHS = [
    ("../x", "'..'"),
    ("a/../../x", "'..'"),
    ("../../../../../etc/passwd", "'..'"),
    ("/etc/passwd", "absolute"),
    ("//etc/passwd", "absolute"),
    ("C:\\x", "backslash"),
    ("a\\..\\..\\x", "backslash"),
    ("x\x00y", "control character"),
    (".ddb", ".ddb"),
    (".ddb/tmp", ".ddb"),
    ("./.DDB/build", ".ddb"),
]
QUERY_IDS = [p.encode("unicode_escape").decode() for p, _ in QUERY_PATHS]


@pytest.mark.parametrize(("path", "reason"), QUERY_PATHS, ids=QUERY_IDS)
def test_entries_path_query_is_checked(world: World, path: str, reason: str) -> None:
    world.upload("a/inside.txt", b"in")
    with leaves_no_trace(world):
        response = world.user.get(f"{world.ds_url}/entries", params={"path": path})
        assert_error(response, 400, reason)


def test_entries_path_query_percent_encoded_in_the_raw_url(world: World) -> None:
    for query, reason in (("%2e%2e%2Fx", "'..'"), ("%2Fetc", "absolute"), ("x%00", "control"),
                          ("%2Eddb", ".ddb"), ("a%5Cb", "backslash")):
        response = raw_request(world.user, "GET", f"{world.ds_url}/entries?path={query}")
        assert_error(response, 400, reason)


@pytest.mark.parametrize(("path", "reason"), QUERY_PATHS, ids=QUERY_IDS)
def test_direct_download_path_query_is_checked(world: World, path: str, reason: str) -> None:
    (world.root.parent / "x").write_bytes(SECRET)
    (world.root / ".ddb" / "meta.json").write_bytes(SECRET)
    world.upload("ok.txt", b"ok")
    with leaves_no_trace(world):
        for selection in ([path], ["ok.txt", path]):  # one bad path refuses the whole archive
            response = world.user.get(f"{world.ds_url}/download", params=[("path", p) for p in selection])
            assert_error(response, 400, reason)
            assert SECRET not in response.content


@pytest.mark.parametrize(("path", "reason"), QUERY_PATHS, ids=QUERY_IDS)
def test_bulk_download_paths_are_checked_before_queueing(world: World, path: str, reason: str) -> None:
    world.upload("ok.txt", b"ok")
    with leaves_no_trace(world):
        for paths in ([path], ["ok.txt", path]):
            response = world.submit("bulk-download", {"paths": paths})
            assert_error(response, 400, reason)
    assert no_tasks(world)


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", ".ddb/tmp", "ok.txt"])
def test_top_level_path_is_refused_by_a_tool_that_takes_none(world: World, path: str) -> None:
    """bulk-download has no ``path`` parameter: a top-level path must not be silently ignored
    (which would archive the whole dataset instead)."""
    world.upload("ok.txt", b"ok")
    with leaves_no_trace(world):
        response = world.user.post(world.tasks_url, json={"toolId": "bulk-download", "path": path})
        assert_error(response, 400, "path")
    assert no_tasks(world)


# --- symlinks inside the dataset pointing outside --------------------------------------------


@pytest.fixture
def linked(world: World, outside: Path) -> World:
    """A dataset with an ordinary folder and symlinks (made on disk) leading out of it and
    into its .ddb."""
    world.upload("folder/ok.txt", b"ok")
    (world.root / ".ddb" / "meta.json").write_bytes(SECRET)
    (world.root / "link.txt").symlink_to(outside / "secret.txt")
    (world.root / "linkdir").symlink_to(outside)
    (world.root / "folder" / "inner-link.txt").symlink_to(outside / "secret.txt")
    (world.root / "folder" / "inner-dir").symlink_to(outside)
    (world.root / "folder" / "into-ddb").symlink_to(world.root / ".ddb")
    return world


@pytest.mark.parametrize("path", ["link.txt", "linkdir/secret.txt", "folder/inner-link.txt",
                                  "folder/inner-dir/secret.txt", "folder/into-ddb/meta.json"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_reading_through_a_symlink_out_of_the_dataset_is_refused(
    linked: World, outside: Path, path: str, method: str
) -> None:
    with leaves_no_trace(linked, outside):
        response = linked.user.request(method, f"{linked.ds_url}/files/{path}")
        assert response.status_code in (400, 404), response.text
        assert SECRET not in response.content


@pytest.mark.parametrize("path", ["link.txt", "linkdir/secret.txt", "linkdir/new.txt",
                                  "folder/inner-dir/new.txt", "folder/into-ddb/new.txt"])
def test_writing_through_a_symlink_out_of_the_dataset_is_refused(linked: World, outside: Path, path: str) -> None:
    with leaves_no_trace(linked, outside):
        response = linked.user.put(f"{linked.ds_url}/files/{path}", content=b"overwritten")
        assert_error(response, 400, "resolves")
    assert (outside / "secret.txt").read_bytes() == SECRET


@pytest.mark.parametrize("path", ["linkdir/secret.txt", "folder/inner-dir/secret.txt", "folder/into-ddb/meta.json"])
def test_deleting_through_a_symlink_out_of_the_dataset_is_refused(linked: World, outside: Path, path: str) -> None:
    with leaves_no_trace(linked, outside):
        response = linked.user.delete(f"{linked.ds_url}/files/{path}")
        assert_error(response, 400, "resolves")
    assert (outside / "secret.txt").read_bytes() == SECRET


def test_deleting_a_folder_holding_symlinks_leaves_their_targets(linked: World, outside: Path) -> None:
    assert linked.user.delete(f"{linked.ds_url}/files/folder").status_code == 204
    assert not (linked.root / "folder").exists()
    assert (outside / "secret.txt").read_bytes() == SECRET
    assert (linked.root / ".ddb" / "meta.json").read_bytes() == SECRET


@pytest.mark.parametrize("path", ["link.txt", "linkdir", "linkdir/secret.txt", "folder/inner-link.txt",
                                  "folder/into-ddb"])
def test_direct_download_of_a_symlink_out_of_the_dataset_is_refused(linked: World, outside: Path, path: str) -> None:
    with leaves_no_trace(linked, outside):
        response = linked.user.get(f"{linked.ds_url}/download", params={"path": path})
        assert_error(response, 400, "resolves")
        assert SECRET not in response.content


def test_direct_download_of_a_folder_skips_symlinks_out_of_it(linked: World, outside: Path) -> None:
    with leaves_no_trace(linked, outside):
        response = linked.user.get(f"{linked.ds_url}/download", params={"path": "folder"})
        assert response.status_code == 200, response.text
        assert zip_contents(response.content) == {"folder/ok.txt": b"ok"}


@pytest.mark.parametrize("path", ["link.txt", "linkdir", "linkdir/secret.txt", "folder/inner-link.txt",
                                  "folder/into-ddb"])
def test_bulk_download_of_a_symlink_out_of_the_dataset_is_refused(linked: World, path: str) -> None:
    response = linked.submit("bulk-download", {"paths": [path]})
    assert_error(response, 400, "resolves")
    assert no_tasks(linked)


@pytest.mark.parametrize("params", [{"paths": ["folder"]}, {}], ids=["folder", "whole-dataset"])
def test_bulk_download_of_a_folder_or_dataset_skips_symlinks_out_of_it(
    linked: World, outside: Path, params: dict[str, Any]
) -> None:
    (linked.root / ".ddb" / "meta.json").write_bytes(b"{}")  # whole-dataset archives keep .ddb
    with leaves_no_trace(linked, outside):
        response = linked.submit("bulk-download", params)
        assert response.status_code == 202, response.text
        status = linked.wait(response.json()["taskId"])
        assert status["state"] == "Succeeded", status
        contents = zip_contents(linked.user.get(response.json()["resultUrl"]).content)
    assert all(SECRET not in data for data in contents.values())
    names = set(contents)
    assert names.isdisjoint({"link.txt", "folder/inner-link.txt"}), names
    assert not any(n.startswith(("linkdir/", "folder/inner-dir/")) for n in names), names
    if params:  # a selection never reaches into .ddb, not even through a link
        assert contents == {"folder/ok.txt": b"ok"}
    else:  # the whole dataset includes .ddb (a link into it only repeats what is included)
        assert {n for n in names if not n.startswith("folder/into-ddb/")} == {"folder/ok.txt", ".ddb/meta.json"}


# --- oversized bodies --------------------------------------------------------------------------


def chunks(payload: bytes, size: int = 1000) -> Iterator[bytes]:
    for i in range(0, len(payload), size):
        yield payload[i:i + size]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_json_body_above_the_limit_is_413(make_server, chunked: bool) -> None:
    live: LiveServer = make_server(max_json_body_bytes=1000)
    w = new_world(live)
    big = json.dumps({"toolId": "bulk-download", "params": {"archiveName": "x" * 150},
                      "padding": " " * 2000}).encode()
    bodies = {
        w.tasks_url: big,
        "/orgs": json.dumps({"slug": "o" + uuid.uuid4().hex[:8], "name": "n" * 2000}).encode(),
        f"/orgs/{w.org}/ds": json.dumps({"slug": "big", "visibility": "private", "x": "y" * 2000}).encode(),
        f"/orgs/{w.org}/members": json.dumps({"username": "u" * 2000}).encode(),
    }
    with leaves_no_trace(w):
        for url, body in bodies.items():
            content = chunks(body) if chunked else body
            response = w.user.post(url, content=content, headers={"content-type": "application/json"})
            assert_error(response, 413, "1000 bytes")
        response = w.admin.post("/users", content=chunks(big) if chunked else big)
        assert_error(response, 413, "1000 bytes")
    assert no_tasks(w)
    small = w.user.post("/orgs", json={"slug": "o" + uuid.uuid4().hex[:8], "name": "n" * 100})
    assert small.status_code == 201, "a body under the limit is still accepted"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("size", [10_001, 200_000])
def test_upload_above_the_limit_is_413_and_leaves_nothing(make_server, chunked: bool, size: int) -> None:
    live: LiveServer = make_server(max_upload_bytes=10_000)
    w = new_world(live)
    payload = os.urandom(size)
    with leaves_no_trace(w):
        for path in ("big.bin", "deep/er/big.bin"):
            response = w.user.put(f"{w.ds_url}/files/{path}", content=chunks(payload) if chunked else payload)
            assert_error(response, 413, "10000 bytes")
            assert w.user.get(f"{w.ds_url}/files/{path}").status_code == 404
    assert not (w.root / "deep").exists()
    assert no_entries(w)
    assert w.user.put(f"{w.ds_url}/files/exact.bin", content=payload[:10_000]).status_code == 201


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_reupload_keeps_the_previous_file_and_entry(make_server, chunked: bool) -> None:
    live: LiveServer = make_server(max_upload_bytes=10_000)
    w = new_world(live)
    first = w.upload("keep.bin", b"first version")
    payload = os.urandom(30_000)
    with leaves_no_trace(w):
        response = w.user.put(f"{w.ds_url}/files/keep.bin", content=chunks(payload) if chunked else payload)
        assert_error(response, 413)
    assert w.user.get(f"{w.ds_url}/files/keep.bin").content == b"first version"
    listed = w.user.get(f"{w.ds_url}/entries").json()
    assert [(e["path"], e["hash"], e["size"]) for e in listed] == [("keep.bin", first["hash"], 13)]


# --- malformed and mistyped submissions -------------------------------------------------------

MALFORMED = [
    (b"{", "malformed JSON"),
    (b'{"toolId": "bulk-download",}', "malformed JSON"),
    (b"", "JSON body is required"),
    (b"   \n", "JSON body is required"),
    (b"\xff\xfe{}", "malformed JSON"),
    (b"[]", "JSON object"),
    (b'["bulk-download"]', "JSON object"),
    (b'"bulk-download"', "JSON object"),
    (b"5", "JSON object"),
    (b"null", "JSON object"),
    (b"[" * 100_000 + b"]" * 100_000, "JSON"),
    (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "JSON"),
    (b'{"toolId": "bulk-download", "params": {"archiveName": "\\ud800"}}', "JSON"),
    (b'{"toolId": "bulk-download", "params": {"paths": ["a\\udfff"]}}', "JSON"),
]


@pytest.mark.parametrize(("body", "reason"), MALFORMED, ids=[b[:30].decode("latin-1") for b, _ in MALFORMED])
def test_malformed_json_is_400(world: World, body: bytes, reason: str) -> None:
    world.upload("a", b"a")
    with leaves_no_trace(world):
        response = world.user.post(world.tasks_url, content=body, headers={"content-type": "application/json"})
        assert_error(response, 400, reason)
    assert no_tasks(world)


@pytest.mark.parametrize("route", ["users", "orgs", "members", "datasets"])
@pytest.mark.parametrize("body", [b"{", b"[]", b'"x"', b"null", b"[" * 100_000], ids=["open", "array", "string", "null", "deep"])
def test_malformed_json_on_platform_routes_is_400(world: World, route: str, body: bytes) -> None:
    url = {"users": "/users", "orgs": "/orgs", "members": f"/orgs/{world.org}/members",
           "datasets": f"/orgs/{world.org}/ds"}[route]
    assert_error(world.admin.post(url, content=body), 400)


WRONG_TYPES = [
    ({"toolId": 5}, "toolId"),
    ({"toolId": None}, "toolId"),
    ({}, "toolId"),
    ({"toolId": ""}, "toolId"),
    ({"toolId": ["bulk-download"]}, "toolId"),
    ({"toolId": "bulk-download", "params": []}, "params"),
    ({"toolId": "bulk-download", "params": "paths=a"}, "params"),
    ({"toolId": "bulk-download", "force": "yes"}, "force"),
    ({"toolId": "bulk-download", "force": 1}, "force"),
    ({"toolId": "bulk-download", "version": []}, "version"),
    ({"toolId": "bulk-download", "version": {"v": 1}}, "version"),
    ({"toolId": "bulk-download", "path": 5}, "path"),
    ({"toolId": "bulk-download", "parms": {}}, "parms"),
    ({"toolId": "bulk-download", "toolid": "bulk-download"}, "toolid"),
    ({"toolId": "bulk-download", "params": {}, "priority": 1}, "priority"),
]


@pytest.mark.parametrize(("body", "reason"), WRONG_TYPES, ids=[json.dumps(b)[:60] for b, _ in WRONG_TYPES])
def test_wrong_types_and_unknown_fields_are_400(world: World, body: dict[str, Any], reason: str) -> None:
    world.upload("a", b"a")
    response = world.user.post(world.tasks_url, json=body)
    assert_error(response, 400, reason)
    assert no_tasks(world)


SCHEMA_ERRORS = [
    ({"paths": "a"}, "paths", "is not of type"),
    ({"paths": ["a", 5]}, "paths/1", "is not of type"),
    ({"paths": []}, "paths", "should be non-empty"),
    ({"paths": [""]}, "paths/0", "should be non-empty"),
    ({"paths": {"a": 1}}, "paths", "is not of type"),
    ({"archiveName": 7}, "archiveName", "is not of type"),
    ({"archiveName": ["a"]}, "archiveName", "is not of type"),
    ({"archiveName": "x" * 201}, "archiveName", "is too long"),
    ({"path": ["a"]}, "", "'path' was unexpected"),
    ({"paths": ["a"], "archivename": "a"}, "", "'archivename' was unexpected"),
    ({"paths": ["a"], "compression": 9}, "", "'compression' was unexpected"),
]


@pytest.mark.parametrize(("params", "where", "message"), SCHEMA_ERRORS,
                         ids=[json.dumps(p)[:50] for p, _, _ in SCHEMA_ERRORS])
def test_schema_errors_are_400_with_details(world: World, params: dict[str, Any], where: str, message: str) -> None:
    world.upload("a", b"a")
    response = world.submit("bulk-download", params)
    body = assert_error(response, 400, "invalid parameters for bulk-download")
    details = body["details"]
    assert isinstance(details, list) and details, body
    assert all(set(d) == {"path", "message"} for d in details), details
    assert any(d["path"] == where and message in d["message"] for d in details), details
    assert no_tasks(world)


def test_every_schema_problem_is_listed(world: World) -> None:
    response = world.submit("bulk-download", {"paths": "a", "archiveName": 7, "pahts": ["a"]})
    details = assert_error(response, 400)["details"]
    assert {d["path"] for d in details} == {"paths", "archiveName", ""}, details


@pytest.mark.parametrize(("body", "reason"), [
    ({"toolId": "no-such-tool"}, "unknown tool 'no-such-tool'"),
    ({"toolId": "bulk_download"}, "unknown tool"),
    ({"toolId": "../bulk-download"}, "unknown tool"),
    ({"toolId": "bulk-download\x00"}, "control character"),
    ({"toolId": "x" * 5000}, "unknown tool"),
    ({"toolId": "bulk-download", "version": "7"}, "no version '7' (known: 1)"),
    ({"toolId": "bulk-download", "version": 2}, "no version '2'"),
    ({"toolId": "bulk-download", "version": "1.0"}, "no version"),
    ({"toolId": "bulk-download", "version": True}, "version"),
])
def test_unknown_tools_and_versions_are_400(world: World, body: dict[str, Any], reason: str) -> None:
    response = world.user.post(world.tasks_url, json=body)
    assert_error(response, 400, reason)
    assert no_tasks(world)


# --- archiveName --------------------------------------------------------------------------------


ARCHIVE_NAMES = [("a/b", "archiveName"), ("../a", "archiveName"), ("..", "archiveName"), (".", "archiveName"),
                 ("*.zip", "archiveName"), ("a?.zip", "archiveName"), ("[ab].zip", "archiveName"),
                 ("a\\b", "archiveName"), ("line\nbreak", "archiveName"), ("", "archiveName"),
                 ("   ", "archiveName"), ("é" * 200, "archiveName"), ("a\x00b", "control character")]


@pytest.mark.parametrize(("name", "reason"), ARCHIVE_NAMES, ids=[repr(n)[:30] for n, _ in ARCHIVE_NAMES])
def test_bad_archive_names_are_400(world: World, name: str, reason: str) -> None:
    world.upload("a", b"a")
    with leaves_no_trace(world):
        response = world.submit("bulk-download", {"paths": ["a"], "archiveName": name})
        assert_error(response, 400, reason)
    assert no_tasks(world)


# --- bad Range headers ---------------------------------------------------------------------------

HUGE = "9" * 5000  # more digits than int() accepts by default


def bad_ranges(kind: str, n: int) -> tuple[list[str], int]:
    """Range headers of one kind for a file of ``n`` bytes, and the status they must get."""
    return {
        "garbage": (["garbage", "bytes=abc", "bytes=1-2-3", "bytes=--5", "bytes=+1-2", "items=0-5",
                     "bytes=", "bytes=,", "bytes=0x10-0x20", "bytes 0-5", "bytes=1_0-20", "bytes=-",
                     "bytes=" + ",".join(["0-0"] * 101)], 200),
        "unsatisfiable": ([f"bytes={n}-", f"bytes={n + 5000}-{n + 6000}", "bytes=-0",
                           f"bytes={n}-,{n + 5}-", f"bytes={HUGE}-", f"bytes={HUGE}-{HUGE}"], 416),
        "reversed": (["bytes=10-5", f"bytes={n - 1}-0", f"bytes=0-1,{HUGE}-5"], 200),
        "huge-but-satisfiable": ([f"bytes=0-{HUGE}", f"bytes=-{HUGE}", "bytes=" + "0" * 5000 + "-"], 206),
    }[kind]


@pytest.fixture(params=["file", "result"])
def ranged_url(request: pytest.FixtureRequest, world: World) -> tuple[World, str, bytes]:
    payload = os.urandom(1000)
    world.upload("r.bin", payload)
    if request.param == "file":
        return world, f"{world.ds_url}/files/r.bin", payload
    task = world.submit("bulk-download", {"paths": ["r.bin"]}).json()
    assert world.wait(task["taskId"])["state"] == "Succeeded"
    return world, task["resultUrl"], world.user.get(task["resultUrl"]).content


@pytest.mark.parametrize("kind", ["garbage", "unsatisfiable", "reversed", "huge-but-satisfiable"])
def test_bad_range_headers(ranged_url: tuple[World, str, bytes], kind: str) -> None:
    world, url, full = ranged_url
    headers, status = bad_ranges(kind, len(full))
    for header in headers:
        response = world.user.get(url, headers={"Range": header})
        assert response.status_code == status, (header[:40], response.status_code, response.text[:200])
        if status == 200:
            assert response.content == full, header[:40]
        elif status == 416:
            assert response.headers["content-range"] == f"bytes */{len(full)}", header[:40]
            assert response.content == b""
        else:
            assert response.content == full and response.headers["content-range"] == (
                f"bytes 0-{len(full) - 1}/{len(full)}"), header[:40]


# --- other users' tasks, bad query parameters, unknown ids ------------------------------------


@pytest.fixture
def finished_task(world: World) -> tuple[World, str]:
    world.upload("t.txt", b"t")
    task_id = world.submit("bulk-download", {"paths": ["t.txt"]}).json()["taskId"]
    assert world.wait(task_id)["state"] == "Succeeded"
    return world, task_id


def test_stranger_cannot_see_or_cancel_a_private_task(server: LiveServer, finished_task: tuple[World, str]) -> None:
    world, task_id = finished_task
    stranger = new_world(server)
    anonymous = server.client(None)
    base = f"{world.tasks_url}/{task_id}"
    for client in (stranger.user, anonymous):
        for url in (base, f"{base}/log", f"{base}/result", world.tasks_url, f"{world.tasks_url}/tools"):
            assert_error(client.get(url), 404, "not found")
        assert client.head(f"{base}/result").status_code == 404
    assert_error(stranger.user.delete(base), 404, "not found")
    assert_error(anonymous.delete(base), 401)
    assert_error(stranger.user.post(f"{world.tasks_url}/clear"), 404)
    # the same task id under the stranger's own dataset is unknown there
    assert_error(stranger.user.get(f"{stranger.tasks_url}/{task_id}"), 404)
    assert_error(stranger.user.delete(f"{stranger.tasks_url}/{task_id}"), 404)
    assert world.user.get(base).json()["state"] == "Succeeded"


def test_org_member_who_is_not_the_owner_cannot_cancel(server: LiveServer, finished_task: tuple[World, str]) -> None:
    world, task_id = finished_task
    member = new_world(server)
    assert world.user.post(f"/orgs/{world.org}/members", json={"username": member.username}).status_code == 201
    base = f"{world.tasks_url}/{task_id}"
    assert member.user.get(base).status_code == 200  # may see it
    assert_error(member.user.delete(base), 403, "task owner")
    assert world.user.get(base).json()["state"] == "Succeeded"
    assert world.user.get(f"{base}/result").status_code == 200


@pytest.mark.parametrize(("suffix", "params", "reason"), [
    ("/log", {"since": "abc"}, "since"),
    ("/log", {"since": "1.5"}, "since"),
    ("/log", {"since": "0x10"}, "since"),
    ("", {"take": "abc"}, "take"),
    ("", {"skip": "abc"}, "skip"),
    ("", {"take": "1e3"}, "take"),
    ("", {"state": "Bogus"}, "state"),
])
def test_bad_query_parameters_are_400(finished_task: tuple[World, str], suffix: str, params: dict[str, str], reason: str) -> None:
    world, task_id = finished_task
    url = f"{world.tasks_url}/{task_id}{suffix}" if suffix else world.tasks_url
    assert_error(world.user.get(url, params=params), 400, reason)


@pytest.mark.parametrize(("suffix", "params"), [
    ("/log", {"since": HUGE[:40]}),
    ("/log", {"since": "-5"}),
    ("", {"skip": HUGE[:40]}),
    ("", {"take": HUGE[:40]}),
    ("", {"skip": "-3", "take": "-3"}),
])
def test_out_of_range_numbers_are_clamped_not_500(finished_task: tuple[World, str], suffix: str, params: dict[str, str]) -> None:
    world, task_id = finished_task
    url = f"{world.tasks_url}/{task_id}{suffix}" if suffix else world.tasks_url
    response = world.user.get(url, params=params)
    assert response.status_code == 200, response.text


def test_admin_task_listing_rejects_bad_numbers(world: World) -> None:
    assert_error(world.admin.get("/sys/tasks", params={"userId": "abc"}), 400, "userId")
    assert_error(world.admin.get("/sys/tasks", params={"take": "x"}), 400, "take")
    for params in ({"userId": HUGE[:40]}, {"skip": HUGE[:40]}):
        response = world.admin.get("/sys/tasks", params=params)
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("task_id", ["f661af8c-dc57-4fe1-906c-0b83e6b84071", "not-a-uuid", "x" * 300, "%2e%2e", "..%2F..%2Fx"])
def test_unknown_task_id_is_404(world: World, task_id: str) -> None:
    base = f"{world.tasks_url}/{task_id}"
    for method, url in (("GET", base), ("GET", f"{base}/log"), ("GET", f"{base}/result"),
                        ("HEAD", f"{base}/result"), ("DELETE", base)):
        response = raw_request(world.user, method, url)
        assert response.status_code == 404, (method, url, response.status_code, response.text)


@pytest.mark.parametrize("where", ["no-such-org/ds/ds", "{org}/ds/no-such-ds", "{long}/ds/x", "{org}/ds/{long}",
                                   "{org}/ds/NOT_A_SLUG"])
def test_unknown_org_or_dataset_is_404(world: World, where: str) -> None:
    base = "/orgs/" + where.format(org=world.org, long="o" * 300)
    for method, url, body in (
        ("GET", base, None), ("GET", f"{base}/entries", None), ("GET", f"{base}/files/a.txt", None),
        ("PUT", f"{base}/files/a.txt", b"a"), ("DELETE", f"{base}/files/a.txt", None),
        ("GET", f"{base}/download?path=a.txt", None), ("GET", f"{base}/tasks", None),
        ("GET", f"{base}/tasks/tools", None), ("GET", f"{base}/tasks/{uuid.uuid4()}", None),
        ("POST", f"{base}/tasks", b'{"toolId": "bulk-download"}'), ("POST", f"{base}/tasks/clear", None),
    ):
        response = raw_request(world.user, method, url, content=body)
        assert_error(response, 404, "not found")
    org = "/orgs/" + where.split("/")[0].format(org="no-such-org", long="o" * 300)
    assert_error(world.user.post(f"{org}/members", json={"username": world.username}), 404)
    assert_error(world.user.post(f"{org}/ds", json={"slug": "x"}), 404)


@pytest.mark.parametrize("url", [
    "/orgs/%00/ds/ds", "/orgs/{org}/ds/%00/entries", "/orgs/{org}/ds/ds/tasks/%00",
    "/orgs/{org}/ds/ds/tasks/%00/log", "/orgs/{org}/ds/ds/tasks?toolId=%00", "/orgs/{org}/ds/ds/tasks?state=%00",
    "/orgs/{org}/ds/ds/entries?type=%00", "/sys/tasks?toolId=%00", "/orgs/{org}/ds/ds/files/a%00",
])
def test_nul_anywhere_in_the_url_is_400(world: World, url: str) -> None:
    """No file path and no text column of the index (PostgreSQL) can hold a NUL."""
    for method in ("GET", "DELETE", "POST"):
        response = raw_request(world.admin, method, url.format(org=world.org), content=b"{}")
        assert_error(response, 400, "control character")


@pytest.mark.parametrize(("url", "body"), [
    ("/users", {"username": "a\x00b"}),
    ("/orgs", {"slug": "nul-{uid}", "name": "a\x00b"}),
    ("/orgs/{org}/members", {"username": "a\x00b"}),
    ("/orgs/{org}/ds", {"slug": "a\x00b"}),
    ("/orgs/{org}/ds/ds/tasks", {"toolId": "bulk-download", "params": {"paths": None}, "x\x00": 1}),
])
def test_nul_in_a_json_string_is_400(world: World, url: str, body: dict[str, Any]) -> None:
    uid = uuid.uuid4().hex[:8]
    body = {k: v.format(uid=uid) if isinstance(v, str) else v for k, v in body.items()}
    response = world.admin.post(url.format(org=world.org), json=body)
    assert_error(response, 400, "control character")
    assert world.admin.post("/orgs", json={"slug": f"nul-{uid}"}).status_code == 201, "nothing was created"


# --- authentication ---------------------------------------------------------------------------------


@pytest.mark.parametrize("visibility", ["private", "public"])
def test_anonymous_submit_is_401(server: LiveServer, visibility: str) -> None:
    world = new_world(server, visibility=visibility)
    world.upload("a", b"a")
    response = server.client(None).post(world.tasks_url, json={"toolId": "bulk-download", "params": {"paths": ["a"]}})
    assert_error(response, 401, "authentication required")
    assert no_tasks(world)


@pytest.mark.parametrize("authorization", ["Bearer not-a-token", "bearer not-a-token", "Bearer", "Bearer a b", "Basic dXNlcjpwYXNz", "token"])
def test_bad_credentials_are_401(server: LiveServer, world: World, authorization: str) -> None:
    world.upload("a", b"a")
    client = server.client(None)
    headers = {"Authorization": authorization}
    body = {"toolId": "bulk-download", "params": {"paths": ["a"]}}
    assert_error(client.post(world.tasks_url, json=body, headers=headers), 401)
    assert_error(client.get(world.ds_url, headers=headers), 401)
    assert_error(client.put(f"{world.ds_url}/files/b", content=b"b", headers=headers), 401)
    assert_error(client.post("/orgs", json={"slug": "nope"}, headers=headers), 401)
    assert no_tasks(world)
    assert world.user.get(f"{world.ds_url}/files/b").status_code == 404
