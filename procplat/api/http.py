"""Request and response helpers shared by the routes: JSON bodies with a size limit, the
caller, query parameters, and error rendering from the one status table in
:mod:`procplat.errors`."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from procplat.core.auth import Principal, authenticate
from procplat.errors import BadRequest, PayloadTooLarge, ProcplatError, ServiceUnavailable
from procplat.index.db import INDEX_UNAVAILABLE

log = logging.getLogger("procplat.api")
# A token's user is cached this long per API process: short, because a token revoked in the
# index (``procplat token reset``, from any process) must stop working promptly.
PRINCIPAL_CACHE_SECONDS = 1.0


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


async def read_json(request: Request) -> Any:
    """The request body as JSON, refusing bodies above the configured limit."""
    limit = request.app.state.settings.max_json_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("invalid Content-Length")
        if int(declared) > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise BadRequest("a JSON body is required")
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None
    _check_strings(value)
    return value


async def read_json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object (400 for anything else)."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _check_strings(value: Any) -> None:
    """Refuse strings no file name, hash or index column can hold: NUL (PostgreSQL text) and
    unpaired surrogates such as ``\\ud800`` (not UTF-8). Walks without recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                raise BadRequest("malformed JSON: a string contains a control character (NUL)")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise BadRequest(f"malformed JSON: {exc}") from None


class RejectNulInUrl:
    """ASGI middleware: a NUL in the URL's path or query (percent-encoded) is a 400 before any
    route runs, since no file path and no PostgreSQL text column can hold one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            "\x00" in scope["path"] or b"%00" in scope.get("query_string", b"")
        ):
            response = error_response(BadRequest("the URL contains a control character (NUL)"))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


_MISS = object()


def _cached_caller(request: Request) -> Any:
    """The caller if the token cache (or the lack of a header) answers, else ``_MISS``."""
    header = request.headers.get("authorization")
    if not header:
        return None
    hit = request.app.state.principal_cache.get(header)
    if hit is not None and time.monotonic() - hit[0] < PRINCIPAL_CACHE_SECONDS:
        return hit[1]
    return _MISS


def caller(request: Request) -> Principal | None:
    """The authenticated caller (cached briefly by token), or None when anonymous."""
    cached = _cached_caller(request)
    if cached is not _MISS:
        return cached
    header = request.headers["authorization"]
    cache: dict[str, tuple[float, Principal | None]] = request.app.state.principal_cache
    now = time.monotonic()
    principal = authenticate(request.app.state.db, header)
    if len(cache) > 10000:
        cache.clear()
    cache[header] = (now, principal)
    return principal


async def caller_async(request: Request) -> Principal | None:
    """:func:`caller` for async routes: a cached token is answered on the event loop, only a
    token the cache does not hold goes to a thread (the index read)."""
    cached = _cached_caller(request)
    if cached is not _MISS:
        return cached
    return await run_in_threadpool(caller, request)


def query(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    return value if value not in (None, "") else None


def query_bool(request: Request, name: str, default: bool = False) -> bool:
    value = query(request, name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise BadRequest(f"{name} must be true or false")


def error_response(exc: ProcplatError) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def on_procplat_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProcplatError)
    return error_response(exc)


async def on_http_exception(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def on_client_disconnect(_request: Request, _exc: Exception) -> Response:
    return JSONResponse({"error": "client disconnected"}, status_code=400)


async def on_index_unavailable(request: Request, exc: Exception) -> Response:
    """The index cannot be reached (e.g. PostgreSQL is restarting): a 503 to retry, logged
    as one line without a traceback (the pool reconnects by itself once it is back)."""
    log.warning("the index is unavailable on %s %s: %s", request.method, request.url.path,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return error_response(ServiceUnavailable("the index is unavailable; retry shortly"))


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)


EXCEPTION_HANDLERS = {
    ProcplatError: on_procplat_error,
    HTTPException: on_http_exception,
    ClientDisconnect: on_client_disconnect,
    **{kind: on_index_unavailable for kind in INDEX_UNAVAILABLE},
    Exception: on_unexpected,
}
