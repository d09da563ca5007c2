"""``/docs``: Swagger UI over ``/openapi.json``, its assets served from the
``swagger-ui-bundle`` package (nothing from a CDN, so it works offline)."""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

__all__ = ["ROUTES"]

_ASSETS = Path(swagger_ui_bundle.swagger_ui_path)
_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>procplat API</title>
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script src="/docs/init.js"></script>
</body>
</html>
"""
_INIT = """window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
});
"""


def docs_page(_request: Request) -> Response:
    return HTMLResponse(_PAGE)


def docs_init(_request: Request) -> Response:
    return Response(_INIT, media_type="text/javascript")


def docs_slash(_request: Request) -> Response:
    return RedirectResponse("/docs", status_code=308)


ROUTES: list[BaseRoute] = [
    Route("/docs", docs_page, methods=["GET"]),
    Route("/docs/", docs_slash, methods=["GET"]),
    Route("/docs/init.js", docs_init, methods=["GET"]),
    Mount("/docs/assets", app=StaticFiles(directory=_ASSETS), name="swagger-assets"),
]
