"""Serve a file from disk with validators, conditional requests and byte ranges.

Every route that serves a file (dataset file download, task artifact download)
goes through :func:`file_response`.  Behaviour, by RFC 9110 section:

* Headers on 200/206: ``ETag: "<etag>"`` (strong, opaque string supplied by the
  caller), ``Last-Modified`` (file mtime), ``Accept-Ranges: bytes``,
  ``Content-Length``, ``Content-Type`` (given, else guessed with
  :mod:`mimetypes`, else ``application/octet-stream``; a compressed suffix such
  as ``.tar.gz`` gives the compression's type, never a ``Content-Encoding``) and
  ``Content-Disposition`` (``attachment`` or ``inline`` with ``filename="..."``
  and, when that fallback is not the name itself, ``filename*=UTF-8''...``,
  RFC 6266 §4.3 / RFC 8187, which carries the exact name).
* The ASCII ``filename`` fallback is always a plain base name (RFC 6266 §4.3:
  recipients must not use directory information; this one never carries any):
  accents are stripped by compatibility decomposition, but what that turns into
  a separator (``／`` U+FF0F → ``/``, ``﹨`` U+FE68 → ``\\``; ``:`` too, a drive
  or a separator elsewhere) becomes ``_``, as do ``%`` (some recipients
  percent-decode, Appendix D), quotes and control characters; runs of dots
  collapse to one and leading or trailing dots and spaces go (``‥`` U+2025 →
  ``..``), so it is never a dot-segment or a hidden file; a name with no letter
  or digit left becomes :data:`FALLBACK_NAME`.
* HEAD gets exactly the headers GET would get, and no body.
* ``If-None-Match`` (``*`` or a list of tags, weak comparison) matching → 304
  with ``ETag`` and ``Last-Modified``.  ``If-Modified-Since`` is honoured only
  when ``If-None-Match`` is absent (§13.2.2).
* ``Range: bytes=...`` (§14.1.2):

  - one satisfiable range → 206 with ``Content-Range: bytes a-b/size``;
  - several → 206 ``multipart/byteranges``.  Overlapping *and adjacent* ranges
    are coalesced and parts are sent in ascending offset order (each part
    carries its own ``Content-Range``); if coalescing leaves one range the
    response is a plain single-part 206;
  - unsatisfiable ranges are dropped; if none is left (or the file is empty)
    → 416 with ``Content-Range: bytes */size``;
  - a malformed header (unit other than ``bytes``, garbage, signs, non-ASCII
    digits, ``last < first``, no range at all) is ignored → 200 full body;
  - more than :data:`MAX_RANGES` range specs → header ignored → 200 full body
    (abuse guard; coalescing also keeps overlapping ranges from amplifying).

* ``If-Range`` (§13.1.5): an entity tag must equal ours by *strong* comparison
  (a weak tag never matches); an HTTP-date must *exactly* equal our
  ``Last-Modified`` (to the second), as RFC 9110 requires — a later date does
  not match, because a file whose mtime went backwards is a different file.
  No match (or an unparsable value) → the Range is ignored → 200 full body.
* Range and conditional headers are evaluated for GET and HEAD only; other
  methods get the plain 200 response.

Why not Starlette's ``FileResponse`` (checked against Starlette 1.10): it
answers a malformed Range with 400 instead of ignoring it, answers 416 if *any*
range is unsatisfiable, accepts ``int()`` syntax such as ``+5``, ``1_0`` and
negative numbers in ranges, matches ``If-Range`` dates by string equality only,
ignores ``If-None-Match`` entirely and emits ``filename*`` without an ASCII
``filename`` fallback.  Its multipart ``Content-Length`` and HEAD handling are
correct, but fixing the rest would mean overriding its private methods.  So
this module decides status and headers itself and reuses only Starlette's
plain ``Response`` (304/416/HEAD) and ``StreamingResponse`` (bodies; it also
handles client disconnects).

Bodies are streamed in :data:`CHUNK_SIZE` chunks read in a worker thread, never
whole.  The file is opened once, when the response is built, and its headers
come from ``fstat`` of that open file, so a file atomically replaced (renamed
over) afterwards is still served consistently.  In-place truncation during a
transfer raises :class:`FileChangedError`, which aborts the connection rather
than sending fewer bytes than ``Content-Length`` announced.
"""

from __future__ import annotations

import math
import mimetypes
import os
import re
import secrets
import stat
import unicodedata
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

import anyio.to_thread
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from procplat.errors import NotFound

__all__ = [
    "CHUNK_SIZE",
    "FALLBACK_NAME",
    "MAX_RANGES",
    "FileChangedError",
    "ascii_filename",
    "file_response",
    "parse_range_header",
]

CHUNK_SIZE = 256 * 1024
"""Bytes read from disk and sent per body message."""

MAX_RANGES = 100
"""A Range header with more range specs than this is ignored (full 200)."""

FALLBACK_NAME = "download"
"""The ASCII ``filename`` of a name with no letter or digit left in ASCII."""

_DEFAULT_MEDIA_TYPE = "application/octet-stream"
_ENCODING_MEDIA_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "br": "application/x-brotli",
    "compress": "application/x-compress",
}
_ETAGC = re.compile(r"[\x21\x23-\x7e]+")
_LISTED_ETAG = re.compile(r'(?:W/)?"([^"]*)"')
_INT_RANGE = re.compile(r"([0-9]+)-([0-9]*)")
_SUFFIX_RANGE = re.compile(r"-([0-9]+)")
# RFC 5987 attr-char punctuation; quote() always keeps ALPHA / DIGIT / "_.-~".
_ATTR_CHAR_PUNCT = "!#$&+^`|"
_NOT_IN_FALLBACK = re.compile(r"[/\\:%]")
_DOT_RUN = re.compile(r"\.{2,}")
_CONDITIONAL_METHODS = frozenset({"GET", "HEAD"})

# A body is a sequence of literal byte strings and (start, end) file spans,
# ``end`` exclusive.
_Span = tuple[int, int]
_Piece = bytes | _Span


class FileChangedError(RuntimeError):
    """The file got shorter while it was being sent."""


class _MalformedRange(ValueError):
    """A range spec that makes the whole Range header ignorable."""


@dataclass(frozen=True)
class _Validators:
    """What identifies the served representation: size, ETag, mtime."""

    size: int
    etag: str  # quoted, as sent
    mtime: int  # whole seconds, as in Last-Modified
    last_modified: str


def file_response(
    request: Request,
    source: Path | BinaryIO,
    *,
    etag: str,
    filename: str | None = None,
    media_type: str | None = None,
    attachment: bool = False,
) -> Response:
    """Build the response serving ``source`` for ``request`` (GET or HEAD).

    ``source`` is a path, or a regular file the caller opened for reading (the
    response owns and closes it): serving that very file keeps ``etag`` and the
    bytes of one version even when the path is replaced meanwhile.  ``etag`` is
    the opaque tag without quotes (e.g. a sha256 hex); it must change whenever
    the content changes.  Raises :class:`~procplat.errors.NotFound` if a path is
    missing or not a regular file and ``ValueError`` for an ``etag`` that is not
    a valid opaque tag.
    """
    if isinstance(source, Path):
        path, file = source, _open_regular_file(source)
    else:
        path, file = Path(source.name), source
    try:
        validators = _validators(file, etag)
        headers = _representation_headers(validators, path, filename, media_type, attachment)
        response = _select_response(request, file, validators, headers)
    except BaseException:
        file.close()
        raise
    return response


def _select_response(
    request: Request, file: BinaryIO, validators: _Validators, headers: dict[str, str]
) -> Response:
    """Apply conditionals and Range; hands ``file`` to the body or closes it."""
    is_head = request.method == "HEAD"
    conditional = request.method in _CONDITIONAL_METHODS
    if conditional and _not_modified(request.headers, validators):
        file.close()
        return Response(status_code=304, headers=_not_modified_headers(validators))
    spans = _effective_ranges(request.headers, validators) if conditional else None
    if spans is not None and not spans:
        file.close()
        return Response(status_code=416, headers={"content-range": f"bytes */{validators.size}"})
    status, pieces, headers = _plan_body(spans, validators.size, headers)
    headers["content-length"] = str(_body_length(pieces))
    if is_head:
        file.close()
        return Response(status_code=status, headers=headers)
    return StreamingResponse(_stream_pieces(file, pieces), status_code=status, headers=headers)


# --- file and representation headers ---------------------------------------


def _open_regular_file(path: Path) -> BinaryIO:
    """Open ``path`` for reading; a missing or non-regular file is NotFound."""
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed by the body stream
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise NotFound("file not found") from None
    if not _is_regular(file):
        file.close()
        raise NotFound("file not found")
    return file


def _is_regular(file: BinaryIO) -> bool:
    return stat.S_ISREG(os.fstat(file.fileno()).st_mode)


def _validators(file: BinaryIO, etag: str) -> _Validators:
    """Size and mtime from the open file, and the quoted strong ETag."""
    if not _ETAGC.fullmatch(etag):
        raise ValueError(f"etag must be a non-empty opaque tag without quotes: {etag!r}")
    st = os.fstat(file.fileno())
    mtime = math.floor(st.st_mtime)
    return _Validators(
        size=st.st_size,
        etag=f'"{etag}"',
        mtime=mtime,
        last_modified=formatdate(mtime, usegmt=True),
    )


def _representation_headers(
    validators: _Validators,
    path: Path,
    filename: str | None,
    media_type: str | None,
    attachment: bool,
) -> dict[str, str]:
    """Headers shared by 200 and 206 responses (Content-Length excluded)."""
    headers = {
        "accept-ranges": "bytes",
        "etag": validators.etag,
        "last-modified": validators.last_modified,
        "content-type": media_type or _guess_media_type(filename or path.name),
    }
    disposition = _content_disposition(filename, attachment)
    if disposition is not None:
        headers["content-disposition"] = disposition
    return headers


def _not_modified_headers(validators: _Validators) -> dict[str, str]:
    return {"etag": validators.etag, "last-modified": validators.last_modified}


def _guess_media_type(name: str) -> str:
    """Media type from the name; a compressed file is typed as its compression."""
    guessed, encoding = mimetypes.guess_type(name, strict=False)
    if encoding is not None:
        return _ENCODING_MEDIA_TYPES.get(encoding, _DEFAULT_MEDIA_TYPE)
    return guessed or _DEFAULT_MEDIA_TYPE


def _content_disposition(filename: str | None, attachment: bool) -> str | None:
    """``attachment``/``inline`` with an ASCII ``filename`` and RFC 5987 ``filename*``."""
    kind = "attachment" if attachment else "inline"
    if filename is None:
        return kind if attachment else None
    fallback = ascii_filename(filename)
    value = f'{kind}; filename="{fallback}"'
    if fallback != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe=_ATTR_CHAR_PUNCT)}"
    return value


def ascii_filename(filename: str) -> str:
    """The ``filename`` fallback of ``filename``: a quoted-string-safe ASCII base name,
    never a path, a dot-segment, a hidden name or empty (see the module docstring)."""
    transliterated = "".join(_ascii_char(ch) for ch in filename)
    plain = _DOT_RUN.sub(".", _NOT_IN_FALLBACK.sub("_", transliterated)).strip(" .")
    return plain if any(ch.isalnum() for ch in plain) else FALLBACK_NAME


def _ascii_char(ch: str) -> str:
    if _is_quotable_ascii(ch):
        return ch
    base = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode("ascii")
    return base if base and all(_is_quotable_ascii(c) for c in base) else "_"


def _is_quotable_ascii(ch: str) -> bool:
    return " " <= ch <= "~" and ch not in '"\\'


# --- conditional requests ----------------------------------------------------


def _not_modified(headers: Headers, validators: _Validators) -> bool:
    """If-None-Match (weak comparison), else If-Modified-Since."""
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        return _etag_listed(if_none_match, validators.etag)
    since = _parse_http_date(headers.get("if-modified-since"))
    if since is None or since > datetime.now(timezone.utc).timestamp():
        return False
    return validators.mtime <= since


def _etag_listed(header: str, etag: str) -> bool:
    """Whether ``etag`` weakly matches ``*`` or one tag of the list."""
    if header.strip() == "*":
        return True
    opaque = etag[1:-1]
    return any(tag == opaque for tag in _LISTED_ETAG.findall(header))


def _if_range_matches(value: str, validators: _Validators) -> bool:
    """Strong ETag equality, or an HTTP-date exactly equal to Last-Modified."""
    value = value.strip()
    if value.startswith(('"', "W/")):
        return value == validators.etag
    return _parse_http_date(value) == validators.mtime


def _parse_http_date(value: str | None) -> int | None:
    """Seconds since the epoch, or None when absent or unparsable."""
    if value is None:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return math.floor(parsed.timestamp())


# --- ranges ------------------------------------------------------------------


def _effective_ranges(headers: Headers, validators: _Validators) -> list[_Span] | None:
    """Spans to serve: None = full body, [] = unsatisfiable (416)."""
    range_header = headers.get("range")
    if range_header is None:
        return None
    if_range = headers.get("if-range")
    if if_range is not None and not _if_range_matches(if_range, validators):
        return None
    return parse_range_header(range_header, validators.size)


def parse_range_header(header: str, size: int) -> list[_Span] | None:
    """Parse ``Range`` for a file of ``size`` bytes into coalesced, sorted spans.

    Returns None when the header must be ignored (malformed, not ``bytes``, or
    more than :data:`MAX_RANGES` specs) and ``[]`` when no range is satisfiable.
    Spans are ``(start, end)`` with ``end`` exclusive.
    """
    unit, sep, range_set = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    specs = [spec.strip(" \t") for spec in range_set.split(",")]
    specs = [spec for spec in specs if spec]
    if not specs or len(specs) > MAX_RANGES:
        return None
    try:
        parsed = [_parse_range_spec(spec, size) for spec in specs]
    except _MalformedRange:
        return None
    return _coalesce([span for span in parsed if span is not None])


def _parse_range_spec(spec: str, size: int) -> _Span | None:
    """One spec → its span, or None if unsatisfiable; raises _MalformedRange."""
    suffix = _SUFFIX_RANGE.fullmatch(spec)
    if suffix is not None:
        length = _decimal(suffix.group(1))
        return (max(size - length, 0), size) if length > 0 and size > 0 else None
    bounded = _INT_RANGE.fullmatch(spec)
    if bounded is None:
        raise _MalformedRange(spec)
    first = _decimal(bounded.group(1))
    last = _decimal(bounded.group(2)) if bounded.group(2) else None
    if last is not None and last < first:
        raise _MalformedRange(spec)
    if first >= size:
        return None
    return (first, size if last is None else min(last + 1, size))


def _decimal(digits: str) -> int:
    """ASCII digits as an int; numbers longer than any file size saturate at 10**30
    (``int()`` refuses strings of more than 4300 digits)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 30 else 10**30


def _coalesce(spans: list[_Span]) -> list[_Span]:
    """Sort spans and merge the overlapping or adjacent ones."""
    merged: list[_Span] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


# --- bodies ------------------------------------------------------------------


def _plan_body(
    spans: list[_Span] | None, size: int, headers: dict[str, str]
) -> tuple[int, list[_Piece], dict[str, str]]:
    """Status, body pieces and headers for a full, single-range or multipart body."""
    if spans is None:
        return 200, [(0, size)], headers
    if len(spans) == 1:
        start, end = spans[0]
        return 206, [(start, end)], {**headers, "content-range": _content_range(start, end, size)}
    boundary = secrets.token_hex(16)
    pieces = _multipart_pieces(spans, size, headers["content-type"], boundary)
    return 206, pieces, {**headers, "content-type": f"multipart/byteranges; boundary={boundary}"}


def _content_range(start: int, end: int, size: int) -> str:
    return f"bytes {start}-{end - 1}/{size}"


def _multipart_pieces(
    spans: Sequence[_Span], size: int, content_type: str, boundary: str
) -> list[_Piece]:
    """``--boundary`` + part headers + data + CRLF per span, then the close delimiter."""
    pieces: list[_Piece] = []
    for start, end in spans:
        part_head = (
            f"--{boundary}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Range: {_content_range(start, end, size)}\r\n"
            "\r\n"
        )
        pieces += [part_head.encode("latin-1"), (start, end), b"\r\n"]
    pieces.append(f"--{boundary}--\r\n".encode("latin-1"))
    return pieces


def _body_length(pieces: Sequence[_Piece]) -> int:
    return sum(len(p) if isinstance(p, bytes) else p[1] - p[0] for p in pieces)


async def _stream_pieces(file: BinaryIO, pieces: Sequence[_Piece]) -> AsyncIterator[bytes]:
    """Yield the body; owns ``file`` and closes it when done or abandoned."""
    try:
        for piece in pieces:
            if isinstance(piece, bytes):
                yield piece
            else:
                async for chunk in _read_span(file, *piece):
                    yield chunk
    finally:
        file.close()


async def _read_span(file: BinaryIO, start: int, end: int) -> AsyncIterator[bytes]:
    """Read ``[start, end)`` in :data:`CHUNK_SIZE` chunks in a worker thread."""
    offset = start
    while offset < end:
        wanted = min(CHUNK_SIZE, end - offset)
        chunk = await anyio.to_thread.run_sync(_read_at, file, offset, wanted)
        if len(chunk) != wanted:
            raise FileChangedError(f"{file.name!r} shrank while being sent")
        offset += wanted
        yield chunk


def _read_at(file: BinaryIO, offset: int, size: int) -> bytes:
    file.seek(offset)
    return file.read(size)
