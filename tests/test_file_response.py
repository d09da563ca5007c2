"""Tests for :func:`procplat.api.file_response.file_response`.

A tiny Starlette app serves files created in ``tmp_path``; requests go through
``starlette.testclient.TestClient`` (httpx), and one test goes through a real
uvicorn server so that h11 checks every ``Content-Length`` against the body.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import anyio
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from procplat.api import file_response as file_response_module
from procplat.api.file_response import (
    FileChangedError,
    ascii_filename,
    file_response,
    parse_range_header,
)
from procplat.errors import NotFound

SIZE = 100_000
ETAG = "3f786850e387550fdab836ed7e6dc881de23001b"
MTIME = 1_700_000_000.75
LAST_MODIFIED = "Tue, 14 Nov 2023 22:13:20 GMT"


# --- fixtures and helpers ----------------------------------------------------


@pytest.fixture
def content() -> bytes:
    return random.Random(1234).randbytes(SIZE)


@pytest.fixture
def data_file(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    os.utime(path, (MTIME, MTIME))
    return path


@pytest.fixture
def empty_file(tmp_path: Path) -> Path:
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    return path


def make_app(path: Path, **options: Any) -> Starlette:
    """An app serving ``path`` at ``/file``; ``options`` go to file_response."""
    options.setdefault("etag", ETAG)

    async def serve(request: Request) -> Response:
        return file_response(request, path, **options)

    return Starlette(routes=[Route("/file", serve)])


def client_for(path: Path, **options: Any) -> TestClient:
    return TestClient(make_app(path, **options))


@pytest.fixture
def client(data_file: Path) -> TestClient:
    return client_for(data_file)


def get(client: TestClient, **headers: str) -> httpx.Response:
    return client.get("/file", headers={k.replace("_", "-"): v for k, v in headers.items()})


def parse_multipart(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart/byteranges body into (part headers, part bytes)."""
    match = re.fullmatch(r"multipart/byteranges; boundary=(\S+)", response.headers["content-type"])
    assert match is not None
    delimiter = b"--" + match.group(1).encode()
    body = response.content
    closing = b"\r\n" + delimiter + b"--\r\n"
    assert body.startswith(delimiter) and body.endswith(closing)
    parts = []
    for raw in body[len(delimiter) : -len(closing)].split(b"\r\n" + delimiter):
        assert raw.startswith(b"\r\n")
        head, separator, data = raw[2:].partition(b"\r\n\r\n")
        assert separator
        fields = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n"))
        parts.append(({k.lower(): v for k, v in fields.items()}, data))
    return parts


def assert_full(response: httpx.Response, content: bytes) -> None:
    assert response.status_code == 200
    assert response.content == content
    assert response.headers["content-length"] == str(len(content))
    assert "content-range" not in response.headers


# --- full responses and headers -----------------------------------------------


def test_full_get_returns_whole_file_with_validators(client: TestClient, content: bytes) -> None:
    response = get(client)
    assert_full(response, content)
    assert response.headers["etag"] == f'"{ETAG}"'
    assert response.headers["last-modified"] == LAST_MODIFIED
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-type"] == "application/octet-stream"
    assert "content-disposition" not in response.headers


def test_head_returns_get_headers_without_body(client: TestClient) -> None:
    head = client.head("/file")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers == get(client).headers


def test_empty_file_full_get_is_empty_200(empty_file: Path) -> None:
    response = get(client_for(empty_file))
    assert_full(response, b"")


# --- single ranges -------------------------------------------------------------


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [
        ("bytes=0-0", 0, 1),
        ("bytes=100-199", 100, 200),
        ("bytes=1000-", 1000, SIZE),
        ("bytes=-500", SIZE - 500, SIZE),
        ("bytes=-1000000", 0, SIZE),
        ("bytes=99990-1000000", 99990, SIZE),
        ("BYTES = 5-9", 5, 10),
    ],
    ids=["first-byte", "bounded", "open", "suffix", "long-suffix", "clamped-end", "loose-unit"],
)
def test_single_range_returns_206_with_content_range(
    client: TestClient, content: bytes, range_header: str, start: int, end: int
) -> None:
    response = get(client, range=range_header)
    assert response.status_code == 206
    assert response.content == content[start:end]
    assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{SIZE}"
    assert response.headers["content-length"] == str(end - start)
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["etag"] == f'"{ETAG}"'


def test_suffix_range_returns_last_bytes(client: TestClient, content: bytes) -> None:
    response = get(client, range="bytes=-500")
    assert response.status_code == 206
    assert response.content == content[-500:]


def test_open_range_returns_rest_of_file(client: TestClient, content: bytes) -> None:
    response = get(client, range="bytes=99000-")
    assert response.status_code == 206
    assert response.content == content[99000:]
    assert response.headers["content-range"] == f"bytes 99000-{SIZE - 1}/{SIZE}"


def test_head_with_range_returns_206_headers_without_body(client: TestClient) -> None:
    response = client.head("/file", headers={"range": "bytes=10-19"})
    assert response.status_code == 206
    assert response.content == b""
    assert response.headers["content-range"] == f"bytes 10-19/{SIZE}"
    assert response.headers["content-length"] == "10"


# --- multiple ranges -------------------------------------------------------------


def test_multi_range_returns_multipart_with_exact_bytes(client: TestClient, content: bytes) -> None:
    response = get(client, range="bytes=0-99, 5000-5999,-10")
    assert response.status_code == 206
    assert response.headers["content-length"] == str(len(response.content))
    assert "content-range" not in response.headers
    parts = parse_multipart(response)
    expected = [(0, 100), (5000, 6000), (SIZE - 10, SIZE)]
    assert [data for _, data in parts] == [content[a:b] for a, b in expected]
    for (headers, _), (start, end) in zip(parts, expected, strict=True):
        assert headers == {
            "content-type": "application/octet-stream",
            "content-range": f"bytes {start}-{end - 1}/{SIZE}",
        }


def test_multi_range_parts_are_sorted_by_offset(client: TestClient, content: bytes) -> None:
    parts = parse_multipart(get(client, range="bytes=900-999,0-9"))
    assert [headers["content-range"] for headers, _ in parts] == [
        f"bytes 0-9/{SIZE}",
        f"bytes 900-999/{SIZE}",
    ]
    assert [data for _, data in parts] == [content[0:10], content[900:1000]]


def test_multi_range_parts_use_the_files_media_type(data_file: Path) -> None:
    response = get(client_for(data_file, media_type="image/tiff"), range="bytes=0-1,10-11")
    assert {headers["content-type"] for headers, _ in parse_multipart(response)} == {"image/tiff"}


def test_overlapping_and_adjacent_ranges_are_coalesced(client: TestClient, content: bytes) -> None:
    response = get(client, range="bytes=0-9,5-19,20-29,100-109")
    parts = parse_multipart(response)
    assert [headers["content-range"] for headers, _ in parts] == [
        f"bytes 0-29/{SIZE}",
        f"bytes 100-109/{SIZE}",
    ]
    assert [data for _, data in parts] == [content[0:30], content[100:110]]


def test_ranges_coalescing_to_one_give_single_part_206(client: TestClient, content: bytes) -> None:
    response = get(client, range="bytes=0-,0-,0-,10-20")
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes 0-{SIZE - 1}/{SIZE}"
    assert response.content == content


def test_multi_range_head_announces_the_get_body_length(client: TestClient) -> None:
    headers = {"range": "bytes=0-99,200-299"}
    head = client.head("/file", headers=headers)
    body = client.get("/file", headers=headers)
    assert head.status_code == 206
    assert head.content == b""
    assert head.headers["content-type"].startswith("multipart/byteranges; boundary=")
    # The boundary is random, but has a fixed length.
    assert head.headers["content-length"] == str(len(body.content))


def test_unsatisfiable_ranges_among_others_are_dropped(client: TestClient, content: bytes) -> None:
    response = get(client, range=f"bytes=10-19,{SIZE}-,-0")
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes 10-19/{SIZE}"
    assert response.content == content[10:20]


# --- unsatisfiable and malformed ranges --------------------------------------------


@pytest.mark.parametrize(
    "range_header", [f"bytes={SIZE}-", f"bytes={SIZE + 5}-{SIZE + 9}", "bytes=-0"]
)
def test_unsatisfiable_range_returns_416_with_size(client: TestClient, range_header: str) -> None:
    response = get(client, range=range_header)
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{SIZE}"
    assert response.content == b""


@pytest.mark.parametrize("range_header", ["bytes=0-", "bytes=0-0", "bytes=-1", "bytes=0-0,-5"])
def test_any_range_on_empty_file_is_416(empty_file: Path, range_header: str) -> None:
    response = get(client_for(empty_file), range=range_header)
    assert response.status_code == 416
    assert response.headers["content-range"] == "bytes */0"


@pytest.mark.parametrize(
    "range_header",
    [
        "bytes 0-10",
        "items=0-10",
        "bytes=",
        "bytes=,",
        "bytes=abc",
        "bytes=-",
        "bytes=--5",
        "bytes=-5-10",
        "bytes=+1-2",
        "bytes=1_0-20",
        "bytes=0x10-20",
        "bytes=\u0663-5",
        "bytes=20-10",
        "bytes=0-9,20-10",
        "bytes=0-9,junk",
        f"bytes={SIZE}-,garbage",
    ],
)
def test_malformed_range_is_ignored_and_full_file_served(
    client: TestClient, content: bytes, range_header: str
) -> None:
    response = client.get("/file", headers={"range": range_header.encode("utf-8")})
    assert_full(response, content)


def test_too_many_ranges_are_ignored_and_full_file_served(
    client: TestClient, content: bytes
) -> None:
    limit = file_response_module.MAX_RANGES
    many = ",".join(f"{2 * i}-{2 * i}" for i in range(limit + 1))
    assert_full(get(client, range=f"bytes={many}"), content)
    at_limit = ",".join(f"{2 * i}-{2 * i}" for i in range(limit))
    assert len(parse_multipart(get(client, range=f"bytes={at_limit}"))) == limit


def test_parse_range_header_distinguishes_ignored_from_unsatisfiable() -> None:
    assert parse_range_header("bytes=5-1", 10) is None
    assert parse_range_header("bytes=10-", 10) == []
    assert parse_range_header("bytes=8-,0-1,2-3", 10) == [(0, 4), (8, 10)]


# --- conditional requests ----------------------------------------------------------


@pytest.mark.parametrize(
    "if_none_match",
    [f'"{ETAG}"', f'W/"{ETAG}"', f'"other", "{ETAG}"', f'"a",W/"{ETAG}" , "b"', "*"],
)
def test_if_none_match_matching_returns_304(client: TestClient, if_none_match: str) -> None:
    response = get(client, if_none_match=if_none_match)
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == f'"{ETAG}"'
    assert "content-length" not in response.headers


def test_if_none_match_on_head_returns_304(client: TestClient) -> None:
    assert client.head("/file", headers={"if-none-match": f'"{ETAG}"'}).status_code == 304


def test_if_none_match_other_tag_serves_file(client: TestClient, content: bytes) -> None:
    assert_full(get(client, if_none_match='"other", W/"also-other"'), content)


def test_if_none_match_is_evaluated_before_range(client: TestClient) -> None:
    assert get(client, if_none_match=f'"{ETAG}"', range="bytes=0-9").status_code == 304


def test_if_modified_since_not_modified_returns_304(client: TestClient) -> None:
    assert get(client, if_modified_since=LAST_MODIFIED).status_code == 304


def test_if_modified_since_older_date_serves_file(client: TestClient, content: bytes) -> None:
    assert_full(get(client, if_modified_since="Tue, 14 Nov 2023 22:13:19 GMT"), content)


def test_if_modified_since_is_ignored_when_if_none_match_present(
    client: TestClient, content: bytes
) -> None:
    response = get(client, if_none_match='"other"', if_modified_since=LAST_MODIFIED)
    assert_full(response, content)


@pytest.mark.parametrize("if_range", [f'"{ETAG}"', LAST_MODIFIED], ids=["etag", "date"])
def test_if_range_matching_honours_range(client: TestClient, content: bytes, if_range: str) -> None:
    response = get(client, range="bytes=10-19", if_range=if_range)
    assert response.status_code == 206
    assert response.content == content[10:20]


@pytest.mark.parametrize(
    "if_range",
    [
        '"stale-etag"',
        f'W/"{ETAG}"',
        "Tue, 14 Nov 2023 22:13:19 GMT",
        "Tue, 14 Nov 2023 22:13:21 GMT",
        "not a date",
    ],
    ids=["stale-etag", "weak-etag", "older-date", "later-date", "garbage"],
)
def test_if_range_stale_serves_full_file(client: TestClient, content: bytes, if_range: str) -> None:
    assert_full(get(client, range="bytes=10-19", if_range=if_range), content)


# --- Content-Disposition and media types ---------------------------------------------


def test_content_disposition_non_ascii_name_has_rfc5987_filename(data_file: Path) -> None:
    client = client_for(data_file, filename='Évian "nord" 北.tif', attachment=True)
    disposition = get(client).headers["content-disposition"]
    assert disposition == (
        "attachment; filename=\"Evian _nord_ _.tif\"; "
        "filename*=UTF-8''%C3%89vian%20%22nord%22%20%E5%8C%97.tif"
    )


def test_content_disposition_ascii_name_has_only_filename(data_file: Path) -> None:
    client = client_for(data_file, filename="report.csv", attachment=True)
    assert get(client).headers["content-disposition"] == 'attachment; filename="report.csv"'


def test_content_disposition_inline_when_not_attachment(data_file: Path) -> None:
    client = client_for(data_file, filename="report.csv")
    assert get(client).headers["content-disposition"] == 'inline; filename="report.csv"'


def test_attachment_without_filename_sends_bare_attachment(data_file: Path) -> None:
    response = get(client_for(data_file, attachment=True))
    assert response.headers["content-disposition"] == "attachment"


def test_control_characters_in_filename_cannot_inject_headers(data_file: Path) -> None:
    client = client_for(data_file, filename="a\r\nX-Evil: 1.txt", attachment=True)
    response = get(client)
    assert "x-evil" not in response.headers
    assert "%0D%0A" in response.headers["content-disposition"]


# (hostile name, its ASCII fallback): compatibility forms of separators and dots, dots,
# nothing, control characters, quotes, CR/LF, percent signs
HOSTILE_NAMES = [
    ("\uff0e\uff0e\uff0f\uff0e\uff0e\uff0fevil.zip", "_._evil.zip"),  # ．．／．．／ → ../../
    ("\uff0fetc\uff0fpasswd.tif", "_etc_passwd.tif"),  # ／ FULLWIDTH SOLIDUS → /
    ("\u2025\uff0f\u2025\uff0fevil.tif", "_._evil.tif"),  # ‥ TWO DOT LEADER → ..
    ("\u2025", "download"),
    ("\u2024", "download"),  # ․ ONE DOT LEADER → .
    ("a\u2215b.txt", "a_b.txt"),  # ∕ DIVISION SLASH (no compatibility form)
    ("a\u29f8b.txt", "a_b.txt"),  # ⧸ BIG SOLIDUS
    ("a\ufe68b.txt", "a_b.txt"),  # ﹨ SMALL REVERSE SOLIDUS → \\
    ("a\uff3cb.txt", "a_b.txt"),  # ＼ FULLWIDTH REVERSE SOLIDUS → \\
    ("..", "download"),
    (".", "download"),
    ("", "download"),
    ("...tif", "tif"),
    (".hidden", "hidden"),
    ("trailing. ", "trailing"),
    ("a..b.txt", "a.b.txt"),
    ("a\x00b\x1f\x7f.txt", "a_b__.txt"),
    ('say "hi".txt', "say _hi_.txt"),
    ("a\r\nb.txt", "a__b.txt"),
    ("%2e%2e%2fevil.txt", "_2e_2e_2fevil.txt"),  # some recipients percent-decode
    ("\uff05\uff12\uff46.txt", "_2f.txt"),  # ％２ｆ
    ("C:\\evil.txt", "C__evil.txt"),  # a drive, and a separator
]


@pytest.mark.parametrize(("name", "fallback"), HOSTILE_NAMES,
                         ids=[n.encode("unicode_escape").decode() or "empty" for n, _ in HOSTILE_NAMES])
def test_ascii_fallback_is_a_plain_base_name(name: str, fallback: str) -> None:
    assert ascii_filename(name) == fallback
    assert fallback.isascii() and fallback not in ("", ".", "..")
    assert not any(c in fallback for c in '/\\"%') and not fallback.startswith(".")
    assert ".." not in fallback
    assert all(" " <= c <= "~" for c in fallback)


@pytest.mark.parametrize("name", [n for n, _ in HOSTILE_NAMES if n],
                         ids=[n.encode("unicode_escape").decode() for n, _ in HOSTILE_NAMES if n])
def test_filename_star_keeps_the_exact_name_beside_the_fallback(data_file: Path, name: str) -> None:
    header = get(client_for(data_file, filename=name, attachment=True)).headers["content-disposition"]
    fallback = header.split('filename="', 1)[1].split('"', 1)[0]
    assert fallback == ascii_filename(name)
    exact = header.split("filename*=UTF-8''", 1)[1]
    assert unquote(exact, errors="strict") == name
    assert not any(c in exact for c in "/\\\"; \r\n")


def test_percent_sign_alone_still_gets_the_exact_name(data_file: Path) -> None:
    header = get(client_for(data_file, filename="100%.csv")).headers["content-disposition"]
    assert header == "inline; filename=\"100_.csv\"; filename*=UTF-8''100%25.csv"


@pytest.mark.parametrize(
    ("filename", "media_type"),
    [
        ("scene.tif", "image/tiff"),
        ("table.csv", "text/csv"),
        ("bundle.tar.gz", "application/gzip"),
        ("mystery.qqq", "application/octet-stream"),
    ],
)
def test_media_type_guessed_from_filename(data_file: Path, filename: str, media_type: str) -> None:
    response = get(client_for(data_file, filename=filename))
    assert response.headers["content-type"] == media_type
    assert "content-encoding" not in response.headers


def test_explicit_media_type_wins(data_file: Path) -> None:
    response = get(client_for(data_file, filename="a.tif", media_type="application/x-netcdf"))
    assert response.headers["content-type"] == "application/x-netcdf"


# --- errors -----------------------------------------------------------------------


@pytest.mark.parametrize("etag", ["", 'has"quote', "has space", "W/\"x\""])
def test_invalid_etag_raises_value_error(data_file: Path, etag: str) -> None:
    with pytest.raises(ValueError):
        get(client_for(data_file, etag=etag))


def test_missing_file_or_directory_raises_not_found(tmp_path: Path) -> None:
    for path in (tmp_path / "missing.bin", tmp_path):
        with pytest.raises(NotFound):
            get(client_for(path))


def test_file_shrinking_during_transfer_raises(data_file: Path) -> None:
    async def serve(request: Request) -> Response:
        response = file_response(request, data_file, etag=ETAG)
        with open(data_file, "r+b") as file:
            file.truncate(10)
        return response

    client = TestClient(Starlette(routes=[Route("/file", serve)]))
    with pytest.raises(FileChangedError):
        client.get("/file")


def test_file_replaced_after_response_built_is_served_as_opened(
    data_file: Path, content: bytes
) -> None:
    async def serve(request: Request) -> Response:
        response = file_response(request, data_file, etag=ETAG)
        replacement = data_file.with_suffix(".new")
        replacement.write_bytes(b"new content")
        os.replace(replacement, data_file)
        return response

    assert_full(TestClient(Starlette(routes=[Route("/file", serve)])).get("/file"), content)


# --- streaming --------------------------------------------------------------------


async def collect_body_messages(app: Starlette, headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """Call ``app`` as ASGI directly and return the body of every message sent."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/file",
        "raw_path": b"/file",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("test", 1),
        "server": ("test", 80),
    }
    bodies: list[bytes] = []

    async def receive() -> dict[str, Any]:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            bodies.append(message.get("body", b""))

    await app(scope, receive, send)
    return bodies


@pytest.mark.parametrize("range_header", [None, "bytes=10-", "bytes=0-4999,7000-"])
def test_body_is_streamed_in_chunks(
    data_file: Path, content: bytes, monkeypatch: pytest.MonkeyPatch, range_header: str | None
) -> None:
    monkeypatch.setattr(file_response_module, "CHUNK_SIZE", 4096)
    headers = [] if range_header is None else [(b"range", range_header.encode())]
    bodies = anyio.run(collect_body_messages, make_app(data_file), headers)
    assert max(len(body) for body in bodies) <= 4096
    assert len(bodies) > SIZE // 4096
    body = b"".join(bodies)
    if range_header is None:
        assert body == content
    elif range_header == "bytes=10-":
        assert body == content[10:]
    else:
        assert content[:5000] in body and content[7000:] in body


# --- over a real server --------------------------------------------------------------


@pytest.fixture
def live_url(data_file: Path) -> Iterator[str]:
    """Base URL of a uvicorn server serving ``data_file`` at ``/file``."""
    config = uvicorn.Config(make_app(data_file), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)


def test_real_server_bodies_match_content_length(live_url: str, content: bytes) -> None:
    with httpx.Client(base_url=live_url) as http:
        assert_full(http.get("/file"), content)
        single = http.get("/file", headers={"range": "bytes=-500"})
        assert single.status_code == 206 and single.content == content[-500:]
        multi = http.get("/file", headers={"range": "bytes=0-9,50000-50999,-3"})
        assert multi.headers["content-length"] == str(len(multi.content))
        assert [data for _, data in parse_multipart(multi)] == [
            content[0:10],
            content[50000:51000],
            content[-3:],
        ]
        head = http.head("/file", headers={"range": "bytes=0-9,20-29"})
        assert head.status_code == 206 and head.content == b""
