"""Uploads, downloads and deletes of one path racing each other over real HTTP, in one API
process and in two on one index (SQLite and PostgreSQL), and an upload into a full disk.

What must hold whatever the interleaving: every answer is 200/201/204/404 (never a 500), a
file's ETag is the sha256 of exactly the bytes served with it, and afterwards the index
describes exactly what is on disk (paths, sizes, hashes).
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from procplat.client import Client, InsufficientStorage
from tests.conftest import (
    DATABASES,
    LiveServer,
    fresh_database_url,
    new_world,
    settings_for,
    small_filesystem,
    start_server,
)
from tests.processes import ServiceProcess, start_service

OK_STATUSES = {200, 201, 204, 404}
Tree = dict[str, tuple[str, int, str | None]]  # path -> (kind, size, sha256)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _bodies(count: int, seed: int) -> list[bytes]:
    """Distinct bodies: half of them of one size (so only the hash tells them apart)."""
    rng = random.Random(seed)
    return [
        rng.randbytes(40_000 if i % 2 else 20_000 + 997 * i) for i in range(count)
    ]


def disk_tree(root: Path) -> Tree:
    """What is in the dataset folder (without ``.ddb``)."""
    found: Tree = {}
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root).as_posix()
        prefix = "" if rel == "." else rel + "/"
        if not prefix:
            dirs[:] = [d for d in dirs if d != ".ddb"]
        for name in dirs:
            found[prefix + name] = ("directory", 0, None)
        for name in files:
            data = (Path(folder) / name).read_bytes()
            found[prefix + name] = ("file", len(data), _sha(data))
    return found


def index_tree(client: httpx.Client, ds_url: str) -> Tree:
    response = client.get(f"{ds_url}/entries", params={"recursive": "true"})
    assert response.status_code == 200, response.text
    return {
        e["path"]: ("directory", 0, None) if e["type"] == "directory" else ("file", e["size"], e["hash"])
        for e in response.json()
    }


def assert_index_equals_disk(client: httpx.Client, ds_url: str, root: Path) -> None:
    assert index_tree(client, ds_url) == disk_tree(root)


def check_get(client: httpx.Client, url: str) -> int:
    """GET a file; when it is served, its ETag must be the sha256 of the bytes served."""
    response = client.get(url)
    assert response.status_code in (200, 404), response.text
    if response.status_code == 200:
        assert response.headers["etag"] == f'"{_sha(response.content)}"'
    return response.status_code


def race(calls: list[Callable[[], int]]) -> list[int]:
    """Run ``calls`` at once (released together) and return their statuses."""
    start = threading.Barrier(len(calls))

    def run(call: Callable[[], int]) -> int:
        start.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def put(client: httpx.Client, url: str, body: bytes) -> Callable[[], int]:
    return lambda: client.put(url, content=body).status_code


def delete(client: httpx.Client, url: str) -> Callable[[], int]:
    return lambda: client.delete(url).status_code


def get(client: httpx.Client, url: str) -> Callable[[], int]:
    return lambda: check_get(client, url)


# --- one API process ---------------------------------------------------------------------


def test_parallel_uploads_to_one_path_leave_the_entry_describing_the_served_bytes(
    make_server: Callable[..., LiveServer],
) -> None:
    world = new_world(make_server())
    url = f"{world.ds_url}/files/same.bin"
    for round_ in range(3):
        bodies = _bodies(20, seed=round_)
        statuses = race([put(world.user, url, b) for b in bodies] + [get(world.user, url)] * 4)
        assert set(statuses) <= {200, 201, 404}, statuses
        served = world.user.get(url)
        entry = world.user.get(f"{world.ds_url}/entries/same.bin").json()
        assert served.content in bodies
        assert served.headers["etag"] == f'"{_sha(served.content)}"'
        assert (entry["hash"], entry["size"]) == (_sha(served.content), len(served.content))
        stale = next(b for b in bodies if b != served.content)
        assert world.user.get(url, headers={"If-None-Match": f'"{_sha(stale)}"'}).status_code == 200
        assert_index_equals_disk(world.user, world.ds_url, world.root)


def test_put_racing_delete_and_folder_delete_racing_file_delete_answer_no_500(
    make_server: Callable[..., LiveServer],
) -> None:
    world = new_world(make_server())
    files = f"{world.ds_url}/files"
    bodies = _bodies(6, seed=7)
    for round_ in range(4):
        for name in ("x.bin", "y.bin", "deep/z.bin"):
            world.upload(f"a/{name}", bodies[round_])
        calls = [
            *(put(world.user, f"{files}/a/x.bin", b) for b in bodies),
            *(delete(world.user, f"{files}/a/x.bin") for _ in range(4)),
            *(delete(world.user, f"{files}/a/deep/z.bin") for _ in range(2)),
            *(delete(world.user, f"{files}/a/y.bin") for _ in range(2)),
            *(delete(world.user, f"{files}/a/deep") for _ in range(2)),
            *(delete(world.user, f"{files}/a") for _ in range(2)),
            *(get(world.user, f"{files}/a/x.bin") for _ in range(2)),
        ]
        random.Random(round_).shuffle(calls)
        statuses = race(calls)
        assert set(statuses) <= OK_STATUSES, statuses
        assert_index_equals_disk(world.user, world.ds_url, world.root)


def test_indexing_a_tool_output_that_vanished_unindexes_it(
    make_server: Callable[..., LiveServer],
) -> None:
    """What the supervisor does with a tool's outputs when one was deleted meanwhile."""
    from procplat.index import queries as q

    live = make_server()
    world = new_world(live)
    world.upload("out/kept.bin", b"kept")
    world.upload("out/gone.bin", b"gone")
    (world.root / "out" / "gone.bin").unlink()  # e.g. by a tool of another task
    (world.root / "out" / "new.bin").write_bytes(b"new")
    datasets, db = live.app_state.datasets, live.app_state.db
    with db.read() as s:
        org = q.org_by_slug(s, world.org)
        ref = datasets.ref_of(s, q.dataset_by_slug(s, org.id, world.ds).id)
    datasets.index_paths(ref, ["out/gone.bin", "out/new.bin", "out/never.bin"])
    assert_index_equals_disk(world.user, world.ds_url, world.root)


# --- two API processes on one index ------------------------------------------------------


@pytest.fixture(params=DATABASES)
def two_services(
    request: pytest.FixtureRequest, dask_address: str, tmp_path: Path
) -> Iterator[tuple[ServiceProcess, ServiceProcess, Path]]:
    """Two ``procplat serve`` processes on one data folder, one index and one scheduler."""
    data = tmp_path / "data"
    env = {"PROCPLAT_DASK_ADDRESS": dask_address}
    database_url = fresh_database_url(request.param)
    if database_url is not None:
        env["PROCPLAT_DATABASE_URL"] = database_url
    first = start_service(data, env=env)
    try:
        second = start_service(data, env=env)
    except BaseException:
        first.kill()
        raise
    try:
        yield first, second, data / "datasets"
    finally:
        second.kill()
        first.kill()


def test_two_api_processes_racing_on_one_path_keep_entry_and_disk_in_step(
    two_services: tuple[ServiceProcess, ServiceProcess, Path],
) -> None:
    first, second, datasets = two_services
    one, two = first.client(), second.client()
    assert one.post("/orgs", json={"slug": "acme"}).status_code == 201
    assert one.post("/orgs/acme/ds", json={"slug": "survey"}).status_code == 201
    ds_url, root = "/orgs/acme/ds/survey", datasets / "acme" / "survey"
    url = f"{ds_url}/files/f/same.bin"
    for round_ in range(3):
        bodies = _bodies(16, seed=10 + round_)
        calls = [put(one if i % 2 else two, url, b) for i, b in enumerate(bodies)]
        calls += [delete(two, url), delete(one, f"{ds_url}/files/f"), get(one, url), get(two, url)]
        statuses = race(calls)
        assert set(statuses) <= OK_STATUSES, statuses
        for client in (one, two):
            assert_index_equals_disk(client, ds_url, root)
            served = client.get(url)
            if served.status_code == 200:
                entry = client.get(f"{ds_url}/entries/f/same.bin").json()
                assert served.headers["etag"] == f'"{entry["hash"]}"' == f'"{_sha(served.content)}"'
    one.close()
    two.close()


# --- a full disk -------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB file system (tmpfs), unmounted at the end."""
    with small_filesystem(tmp_path / "small-disk", "16m") as mount_point:
        yield mount_point


@pytest.mark.parametrize("database", DATABASES)
def test_upload_into_a_full_disk_answers_507_and_leaves_no_file_or_entry(
    small_disk: Path, dask_address: str, database: str
) -> None:
    data = small_disk / "data"
    live = start_server(settings_for(data, dask_address, database_url=fresh_database_url(database)))
    try:
        world = new_world(live)
        too_big = os.urandom(24 * 1024 * 1024)
        response = world.user.put(f"{world.ds_url}/files/big/too-big.bin", content=too_big)
        assert response.status_code == 507, response.text
        message: Any = response.json()["error"]
        assert message.startswith("the disk is full"), message
        assert str(small_disk) not in message
        with Client(live.url, token=world.token) as client, pytest.raises(
            InsufficientStorage, match="the disk is full"
        ):
            client.dataset(f"{world.org}/{world.ds}").upload("big/too-big.bin", too_big)
        assert not (world.root / "big").exists()
        assert world.user.get(f"{world.ds_url}/entries/big/too-big.bin").status_code == 404
        assert list((world.root / ".ddb" / "tmp").iterdir()) == []
        small = world.upload("small.bin", b"fits")
        assert small["hash"] == _sha(b"fits")
        assert_index_equals_disk(world.user, world.ds_url, world.root)
    finally:
        live.stop()
