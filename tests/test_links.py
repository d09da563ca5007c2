"""Signed links over real HTTP: GDAL's /vsicurl/ and curl open them without a token, they
behave as the authenticated routes (Range, ETag, HEAD), and a tampered, expired or revoked
link never serves the content."""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from tests.conftest import World, new_world
from tests.test_raster_export_service import write_rgbn


@pytest.fixture(scope="module")
def raster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rgbn(tmp_path_factory.mktemp("links") / "field.tif", 600)


def _exported(world: World, raster: Path) -> dict:
    world.upload("field.tif", raster.read_bytes())
    submitted = world.submit("raster-export", {"bands": "1,2,3"}, path="field.tif")
    assert submitted.status_code == 202, submitted.text
    status = world.wait(submitted.json()["taskId"], timeout=240)
    assert status["state"] == "Succeeded", status
    return status


def _link(world: World, url: str, **body: object) -> str:
    made = world.user.post(f"{url}/link", json=body) if body else world.user.post(f"{url}/link")
    assert made.status_code == 201, made.text
    link = made.json()["url"]
    assert link.startswith(world.server.url + "/links/")
    return link


def test_artifact_link_opens_in_gdal_vsicurl_like_the_download(
    world: World, raster: Path, tmp_path: Path
) -> None:
    status = _exported(world, raster)
    link = _link(world, status["artifact"]["resultUrl"], expiresIn=600)
    assert "link" not in status["artifact"]
    ready = world.user.get(f"{world.tasks_url}/{status['taskId']}?link=true").json()["artifact"]
    assert world.server.client(token=None).head(ready["link"]["url"]).status_code == 200
    downloaded = tmp_path / "download.tif"
    downloaded.write_bytes(world.user.get(status["artifact"]["resultUrl"]).content)
    window = Window(300, 200, 400, 300)
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", GDAL_HTTP_MAX_RETRY="0"):
        with rasterio.open(f"/vsicurl/{link}") as remote, rasterio.open(downloaded) as local:
            assert remote.overviews(1) == local.overviews(1) and local.overviews(1)
            assert np.array_equal(remote.read(window=window), local.read(window=window))
            assert remote.read(window=window).any()
        with rasterio.open(f"/vsicurl/{link}", overview_level=0) as remote, \
                rasterio.open(downloaded, overview_level=0) as local:
            assert remote.width == local.width < 600
            assert np.array_equal(remote.read(), local.read())


def test_a_link_answers_head_range_and_etag_as_the_authenticated_route(world: World) -> None:
    content = bytes(range(256)) * 400
    world.upload("docs/data.bin", content)
    url = f"{world.ds_url}/files/docs/data.bin"
    link = _link(world, url)
    anonymous = world.server.client(token=None)
    authed_head, link_head = world.user.head(url), anonymous.head(link)
    assert link_head.status_code == authed_head.status_code == 200
    for header in ("etag", "content-length", "accept-ranges", "last-modified", "content-type"):
        assert link_head.headers[header] == authed_head.headers[header], header
    ranged = anonymous.get(link, headers={"Range": "bytes=1000-1999"})
    assert ranged.status_code == 206 and ranged.content == content[1000:2000]
    assert ranged.headers["content-range"] == f"bytes 1000-1999/{len(content)}"
    etag = link_head.headers["etag"]
    assert anonymous.get(link, headers={"If-None-Match": etag}).status_code == 304
    assert anonymous.get(link, headers={"Range": "bytes=999999-"}).status_code == 416
    assert hashlib.sha256(anonymous.get(link).content).hexdigest() == hashlib.sha256(content).hexdigest()


def test_curl_resumes_a_download_through_a_link(world: World, tmp_path: Path) -> None:
    content = np.random.default_rng(3).bytes(3_000_000)
    world.upload("big.bin", content)
    link = _link(world, f"{world.ds_url}/files/big.bin")
    partial = tmp_path / "big.bin"
    partial.write_bytes(content[:1_234_567])  # an interrupted download
    done = subprocess.run(["curl", "-sS", "-f", "-C", "-", "-o", str(partial), link],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert partial.read_bytes() == content


def test_tampered_expired_and_revoked_links_never_serve(world: World, raster: Path) -> None:
    anonymous = world.server.client(token=None)
    world.upload("a.txt", b"first version")
    file_url = f"{world.ds_url}/files/a.txt"
    link = _link(world, file_url)
    assert anonymous.get(link).content == b"first version"
    token = link.split("/links/")[1].split("/")[0]
    tampered = link.replace(token, token[:-2] + ("AA" if token[-2:] != "AA" else "BB"))
    assert anonymous.get(tampered).status_code == 403
    other_name = link.rsplit("/", 1)[0] + "/b.txt"  # the name in the URL names nothing
    assert anonymous.get(other_name).content == b"first version"

    world.upload("a.txt", b"second version")  # replaced: the old link is revoked
    assert anonymous.get(link).status_code == 410
    assert anonymous.head(link).status_code == 410
    fresh = _link(world, file_url)
    assert anonymous.get(fresh).content == b"second version"
    assert world.user.delete(file_url).status_code == 204
    assert anonymous.get(fresh).status_code == 410

    world.upload("c.txt", b"short-lived")
    short = _link(world, f"{world.ds_url}/files/c.txt", expiresIn=1)
    time.sleep(1.1)
    assert anonymous.get(short).status_code == 410

    status = _exported(world, raster)
    result_link = _link(world, status["artifact"]["resultUrl"])
    assert anonymous.head(result_link).status_code == 200
    assert world.user.post(f"{world.tasks_url}/clear").json()["cleared"] >= 1
    assert anonymous.get(result_link).status_code == 410


def test_making_links_checks_access_and_the_expiry_bound(world: World) -> None:
    world.upload("p.txt", b"private")
    url = f"{world.ds_url}/files/p.txt"
    outsider = new_world(world.server)
    assert outsider.user.post(f"{url}/link").status_code == 404
    assert world.server.client(token=None).post(f"{url}/link").status_code == 404
    limit = world.server.settings.link_max_expiry_seconds
    too_long = world.user.post(f"{url}/link", json={"expiresIn": limit + 1})
    assert too_long.status_code == 400 and "at most" in too_long.json()["error"]
    for bad in (0, -5, "60", True):
        assert world.user.post(f"{url}/link", json={"expiresIn": bad}).status_code == 400
    assert world.user.post(f"{world.tasks_url}/00000000-0000-0000-0000-000000000000/result/link"
                           ).status_code == 404
    assert world.user.post(f"{world.ds_url}/files/nothing.txt/link").status_code == 404
