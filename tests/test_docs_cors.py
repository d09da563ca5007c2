"""/docs serves Swagger UI from the package (offline) over /openapi.json; cross-origin
requests are allowed only for the origins listed in PROCPLAT_CORS_ORIGINS."""

from __future__ import annotations

import re

from procplat.settings import load_settings
from tests.conftest import LiveServer


def test_docs_page_and_its_assets_are_served_locally(server: LiveServer) -> None:
    anonymous = server.client(token=None)
    page = anonymous.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith("/docs/") for s in sources)  # nothing from a CDN
    for source in sources:
        asset = anonymous.get(source)
        assert asset.status_code == 200 and asset.content, source
    assert "SwaggerUIBundle" in anonymous.get("/docs/assets/swagger-ui-bundle.js").text
    assert '"/openapi.json"' in anonymous.get("/docs/init.js").text
    paths = anonymous.get("/openapi.json").json()["paths"]
    assert {"/links/{token}/{name}", "/orgs/{org}/ds/{ds}/tasks/{task}/result/link",
            "/orgs/{org}/ds/{ds}/files/{path}/link"} <= set(paths)


def test_no_cross_origin_access_by_default(server: LiveServer) -> None:
    anonymous = server.client(token=None)
    answer = anonymous.get("/sys/features", headers={"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in answer.headers
    preflight = anonymous.options("/sys/features", headers={
        "Origin": "https://elsewhere.example", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in preflight.headers


def test_listed_origins_may_call_the_api(make_server) -> None:
    live = make_server(cors_origins="https://maps.example, https://qgis.example")
    admin = live.client()
    listed = admin.get("/sys/features", headers={"Origin": "https://qgis.example"})
    assert listed.headers["access-control-allow-origin"] == "https://qgis.example"
    preflight = admin.options("/orgs", headers={
        "Origin": "https://maps.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://maps.example"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    other = admin.get("/sys/features", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    ranged = admin.get("/sys/features", headers={"Origin": "https://maps.example"})
    assert "etag" in ranged.headers["access-control-expose-headers"].lower()


def test_cors_origins_setting_is_read_from_the_environment() -> None:
    settings = load_settings({"PROCPLAT_CORS_ORIGINS": "https://a.example,https://b.example"})
    assert settings.cors_origin_list == ["https://a.example", "https://b.example"]
    assert load_settings({}).cors_origin_list == []
