"""The web console over real HTTP: sign-in in a signed HttpOnly SameSite=Strict cookie, CSRF
on every state-changing form, escaping, the API's permissions, thumbnails and forms from the
tool schemas with the API's validation errors beside their fields."""

from __future__ import annotations

import io
import re
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from PIL import Image

import procplat.web.data
from procplat.web.thumbnails import thumbnail_png
from tests.conftest import ADMIN_TOKEN, World, new_world
from tests.test_raster_export_service import write_rgbn

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Console:
    """A person's browser session with the console (cookies kept, redirects not followed)."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=60)

    def csrf(self, page: str = "/ui/signin") -> str:
        found = _CSRF.search(self.http.get(page).text)
        assert found, page
        return found.group(1)

    def sign_in(self, token: str) -> httpx.Response:
        csrf = self.csrf()
        return self.http.post("/ui/signin", data={"csrf": csrf, "token": token, "next": "/ui/"})

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def console(world: World) -> Console:
    browser = Console(world.server.url)
    signed_in = browser.sign_in(world.token)
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/ui/"
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def raster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rgbn(tmp_path_factory.mktemp("console") / "field.tif", 600)


def test_sign_in_keeps_the_token_in_a_signed_strict_httponly_cookie(world: World) -> None:
    browser = Console(world.server.url)
    assert browser.http.get("/ui/").status_code == 200  # anonymous: public datasets only
    wrong = browser.sign_in("not-a-token")
    assert wrong.status_code == 401 and "invalid token" in wrong.text
    signed_in = browser.sign_in(world.token)
    cookie = signed_in.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
    home = browser.http.get("/ui/")
    assert world.username in home.text and f"{world.org}" in home.text
    forged = httpx.Client(base_url=world.server.url, cookies={"procplat_console": "x" * 40},
                          timeout=60)
    assert world.username not in forged.get("/ui/").text
    assert browser.http.post("/ui/signout", data={"csrf": "wrong"}).status_code == 403
    out = browser.http.post("/ui/signout", data={"csrf": browser.csrf("/ui/")})
    assert out.status_code == 303
    assert world.username not in browser.http.get("/ui/").text
    browser.close()


def test_state_changing_forms_need_the_csrf_token(world: World, console: Console) -> None:
    base = f"/ui/ds/{world.org}/{world.ds}"
    files = {"file": ("a.txt", b"hello")}
    assert console.http.post(f"{base}/upload", files=files, data={"csrf": "no"}).status_code == 403
    assert console.http.post(f"{base}/upload", files=files).status_code == 403
    assert not (world.root / "a.txt").exists()
    done = console.http.post(f"{base}/upload", files=files,
                             data={"csrf": console.csrf(f"{base}/"), "folder": "docs"})
    assert done.status_code == 303
    assert (world.root / "docs" / "a.txt").read_bytes() == b"hello"
    no_csrf = console.http.post(f"{base}/run/bulk-download", data={"archiveName": "x"})
    assert no_csrf.status_code == 403
    assert world.user.get(world.tasks_url).json() == []


def test_names_and_messages_are_escaped(world: World, console: Console) -> None:
    name = "<script>alert(1)</script>.tif"  # its '/' makes it a folder and a file in it
    world.upload(quote(name), b"not really a tiff")
    page = console.http.get(f"/ui/ds/{world.org}/{world.ds}/")
    assert "&lt;script&gt;alert(1)&lt;/" in page.text and "<script>alert(1)" not in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    folder = console.http.get(f"/ui/ds/{world.org}/{world.ds}/",
                              params={"path": "<script>alert(1)<"})
    assert "script&gt;.tif" in folder.text and "<script>alert(1)" not in folder.text
    file_page = console.http.get(f"/ui/ds/{world.org}/{world.ds}/file/{quote(name)}")
    assert file_page.status_code == 200 and "<script>alert(1)" not in file_page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.tif" in file_page.text
    bad = console.http.post(f"/ui/ds/{world.org}/{world.ds}/run/raster-export",
                            data={"csrf": console.csrf(f"/ui/ds/{world.org}/{world.ds}/"),
                                  "path": name})
    assert bad.status_code == 400 and "<script>alert(1)" not in bad.text
    assert "&lt;script&gt;" in bad.text


def test_a_non_member_sees_nothing_of_a_private_dataset(
    world: World, raster: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one org per page, so the home page must page through every org (an admin's server in
    # CI has hundreds, more than one page of the listing)
    monkeypatch.setattr(procplat.web.data, "CONSOLE_TAKE", 1)
    world.upload("field.tif", raster.read_bytes())
    task_id = world.submit("bulk-download", {"paths": ["field.tif"]}).json()["taskId"]
    outsider = new_world(world.server)
    browser = Console(world.server.url)
    browser.sign_in(outsider.token)
    base = f"/ui/ds/{world.org}/{world.ds}"
    assert world.org not in browser.http.get("/ui/").text
    for path in ("/", "/file/field.tif", "/raw/field.tif", "/thumb/field.tif", "/tasks",
                 f"/tasks/{task_id}", f"/tasks/{task_id}/live", f"/tasks/{task_id}/result",
                 "/run/raster-export"):
        answer = browser.http.get(base + path)
        assert answer.status_code == 404, path
        assert "field.tif" not in answer.text and task_id not in answer.text, path
    cancel = browser.http.post(f"{base}/tasks/{task_id}/cancel",
                               data={"csrf": browser.csrf("/ui/")})
    assert cancel.status_code == 404
    admin = Console(world.server.url)
    admin.sign_in(ADMIN_TOKEN)
    assert world.org in admin.http.get("/ui/").text  # an admin sees every dataset
    overview = admin.http.get("/ui/admin")
    assert overview.status_code == 200 and task_id[:8] in overview.text
    assert world.username in overview.text
    assert browser.http.get("/ui/admin").status_code == 403
    browser.close()
    admin.close()


def test_forms_come_from_the_schema_and_show_errors_beside_fields(
    world: World, console: Console, raster: Path
) -> None:
    world.upload("ortho/field.tif", raster.read_bytes())
    base = f"/ui/ds/{world.org}/{world.ds}"
    form = console.http.get(f"{base}/run/raster-export")
    assert '<select name="preset"' in form.text and '<option value="ndvi">' in form.text
    assert '<option value="ortho/field.tif">' in form.text  # the dataset's rasters
    csrf = console.csrf(f"{base}/")
    bad = console.http.post(f"{base}/run/raster-export",
                            data={"csrf": csrf, "path": "ortho/field.tif", "bandFilter": "R G!"})
    assert bad.status_code == 400
    beside = re.search(r'id="error-bandFilter">([^<]+)<', bad.text)
    assert beside and "not valid" in beside.group(1)
    assert 'value="R G!"' in bad.text  # what was typed is kept
    missing = console.http.post(f"{base}/run/raster-export", data={"csrf": csrf})
    assert re.search(r'id="error-path">this field is required<', missing.text)
    done = console.http.post(f"{base}/run/raster-export",
                             data={"csrf": csrf, "path": "ortho/field.tif", "bands": "1,2,3"})
    assert done.status_code == 303
    task_id = done.headers["location"].rsplit("/", 1)[1]
    status = world.wait(task_id, timeout=240)
    assert status["state"] == "Succeeded" and status["params"]["bands"] == "1,2,3"
    page = console.http.get(done.headers["location"])
    assert status["artifact"]["sha256"] in page.text
    live = console.http.get(f"{base}/tasks/{task_id}/live?since=0").json()
    assert live["terminal"] and live["percent"] == 100 and live["lines"]
    result = console.http.get(f"{base}/tasks/{task_id}/result")
    assert result.content == world.user.get(status["artifact"]["resultUrl"]).content
    thumb = console.http.get(f"{base}/tasks/{task_id}/thumb")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    file_thumb = Image.open(io.BytesIO(console.http.get(f"{base}/thumb/ortho/field.tif").content))
    assert file_thumb.mode == "RGBA" and max(file_thumb.size) <= 256
    alpha = np.asarray(file_thumb)[..., 3]
    assert alpha[0, 0] == 0 and alpha[-1, -1] == 255  # the nodata corner is transparent


def test_thumbnails_read_overviews_and_skip_huge_rasters_without_them(tmp_path: Path) -> None:
    import rasterio
    from rasterio.transform import from_origin

    huge = tmp_path / "huge.tif"
    with rasterio.open(huge, "w", driver="GTiff", width=5000, height=5000, count=1,
                       dtype="uint16", crs="EPSG:32633", tiled=True, sparse_ok=True,
                       transform=from_origin(0, 0, 1, 1)) as dst:
        dst.write(np.ones((1, 256, 256), np.uint16), window=((0, 256), (0, 256)))
    assert thumbnail_png([huge]) is None  # no overviews: not read whole
    with rasterio.open(huge, "r+") as dst:
        dst.build_overviews([2, 4, 8, 16, 32])
    png = thumbnail_png([huge])
    assert png is not None and max(Image.open(io.BytesIO(png)).size) == 256


def test_the_package_data_ships_every_template_and_asset() -> None:
    """A non-editable install has the console's files: pyproject's package-data covers them."""
    import tomllib

    import procplat.web

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["package-data"]["procplat.web"]
    web = Path(procplat.web.__file__).parent
    shipped = {p for pattern in patterns for p in web.glob(pattern)}
    needed = {p for folder in ("templates", "static") for p in (web / folder).iterdir()}
    assert needed and needed <= shipped
