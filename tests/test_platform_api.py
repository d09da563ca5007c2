"""Users, orgs, datasets, files and entries over real HTTP."""

from __future__ import annotations

import hashlib
import io
import zipfile

import numpy as np

from tests.harness import LiveServer, World, new_world, write_geotiff


def geotiff_bytes(tmp_path, name: str = "ortho.tif") -> bytes:
    path = tmp_path / name
    data = (np.arange(64 * 64 * 3) % 251).astype("uint8").reshape(3, 64, 64)
    return write_geotiff(path, data, pixel=0.1).read_bytes()


def test_first_start_creates_admin_with_configured_token(server: LiveServer) -> None:
    response = server.client().post("/users", json={"username": "someone-admin-made"})
    assert response.status_code == 201
    assert len(response.json()["token"]) > 20


def test_creating_users_needs_an_admin(world: World) -> None:
    assert world.user.post("/users", json={"username": "x1"}).status_code == 403
    assert world.server.client(None).post("/users", json={"username": "x2"}).status_code == 401
    assert world.server.client("bogus").post("/users", json={"username": "x3"}).status_code == 401


def test_upload_then_download_returns_identical_bytes_with_etag(world: World) -> None:
    content = b"hello world\n" * 1000
    entry = world.upload("docs/readme.md", content)
    assert entry["type"] == "markdown"
    assert entry["hash"] == hashlib.sha256(content).hexdigest()
    response = world.user.get(f"{world.ds_url}/files/docs/readme.md")
    assert response.status_code == 200
    assert response.content == content
    assert response.headers["etag"] == f'"{entry["hash"]}"'
    ranged = world.user.get(f"{world.ds_url}/files/docs/readme.md", headers={"Range": "bytes=0-4"})
    assert ranged.status_code == 206 and ranged.content == b"hello"


def test_reupload_replaces_entry_with_200(world: World) -> None:
    world.upload("a.txt", b"one")
    response = world.user.put(f"{world.ds_url}/files/a.txt", content=b"two")
    assert response.status_code == 200
    assert world.user.get(f"{world.ds_url}/files/a.txt").content == b"two"


def test_entries_detect_georaster_and_list_folders(world: World, tmp_path) -> None:
    world.upload("maps/ortho.tif", geotiff_bytes(tmp_path))
    world.upload("notes.md", b"# notes")
    top = world.user.get(f"{world.ds_url}/entries").json()
    assert {e["path"]: e["type"] for e in top} == {"maps": "directory", "notes.md": "markdown"}
    inside = world.user.get(f"{world.ds_url}/entries", params={"path": "maps"}).json()
    assert [e["path"] for e in inside] == ["maps/ortho.tif"]
    raster = inside[0]
    assert raster["type"] == "georaster"
    assert raster["properties"]["crs"] == "EPSG:32633"
    assert raster["properties"]["bandCount"] == 3
    only = world.user.get(f"{world.ds_url}/entries", params={"type": "georaster", "recursive": "true"}).json()
    assert [e["path"] for e in only] == ["maps/ortho.tif"]


def test_delete_removes_file_and_entry(world: World) -> None:
    world.upload("f/x.txt", b"x")
    assert world.user.delete(f"{world.ds_url}/files/f").status_code == 204
    assert world.user.get(f"{world.ds_url}/files/f/x.txt").status_code == 404
    assert world.user.get(f"{world.ds_url}/entries", params={"recursive": "true"}).json() == []


def test_private_dataset_is_invisible_to_strangers(server: LiveServer, world: World) -> None:
    world.upload("secret.txt", b"s")
    stranger = new_world(server)
    for url in (world.ds_url, f"{world.ds_url}/files/secret.txt", f"{world.ds_url}/entries",
                f"{world.tasks_url}", f"{world.tasks_url}/tools"):
        assert stranger.user.get(url).status_code == 404, url
        assert server.client(None).get(url).status_code == 404, url
    assert stranger.user.put(f"{world.ds_url}/files/x.txt", content=b"x").status_code == 404


def test_public_dataset_is_readable_but_not_writable_by_strangers(server: LiveServer) -> None:
    owner = new_world(server, visibility="public")
    owner.upload("open.txt", b"o")
    stranger = new_world(server)
    assert stranger.user.get(f"{owner.ds_url}/files/open.txt").content == b"o"
    assert server.client(None).get(f"{owner.ds_url}/files/open.txt").status_code == 200
    assert stranger.user.put(f"{owner.ds_url}/files/y.txt", content=b"y").status_code == 403
    assert server.client(None).put(f"{owner.ds_url}/files/y.txt", content=b"y").status_code == 401


def test_members_can_write(server: LiveServer, world: World) -> None:
    other = new_world(server)
    assert world.user.post(f"/orgs/{world.org}/members", json={"username": other.username}).status_code == 201
    assert other.user.put(f"{world.ds_url}/files/m.txt", content=b"m").status_code == 201
    assert other.user.post(f"/orgs/{world.org}/members", json={"username": "admin"}).status_code == 403


def test_direct_download_streams_a_zip_of_the_selection(world: World) -> None:
    world.upload("a/1.txt", b"one")
    world.upload("a/b/2.txt", b"two")
    world.upload("c.txt", b"three")
    response = world.user.get(f"{world.ds_url}/download", params=[("path", "a"), ("path", "c.txt")])
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert sorted(archive.namelist()) == ["a/1.txt", "a/b/2.txt", "c.txt"]
    assert archive.read("a/b/2.txt") == b"two"


def test_health_features_and_openapi(server: LiveServer) -> None:
    anonymous = server.client(None)
    health = anonymous.get("/sys/health")
    assert health.status_code == 200
    assert health.json()["index"] and health.json()["dask"]
    features = anonymous.get("/sys/features").json()
    assert {"value": "Processing", "terminal": False} in features["taskStates"]
    assert {"value": "Deleted", "terminal": True} in features["taskStates"]
    assert "bulk-download" in features["taskTools"]
    spec = anonymous.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    assert "post" in spec["paths"]["/orgs/{org}/ds/{ds}/tasks"]
    assert "/orgs/{org}/ds/{ds}/tasks/{task}/result" in spec["paths"]
