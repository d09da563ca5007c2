"""One resumable, sha256-verified download of a task's result (see :mod:`procplat.client`)."""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from procplat.client._api import Client

from procplat.client._constants import CHUNK_SIZE
from procplat.client._errors import IntegrityError, TransportError, error_from_response
from procplat.client._progress import _isatty

_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_UNSATISFIED_RANGE = re.compile(r"bytes \*/(\d+)")


class _Download:
    """One resumable, verified download of a result to ``target`` via ``target.part``."""

    def __init__(
        self, client: Client, url: str, target: Path, sha256: str, *, retries: int,
        progress_file: IO[str] | None,
    ) -> None:
        self.client = client
        self.url = url
        self.target = target
        self.part = target.with_name(target.name + ".part")
        self.expected = sha256
        self.retries = retries
        self.progress_file = progress_file

    def run(self) -> Path:
        for redo in (False, True):
            digest, etag = self._fetch()
            wanted = etag if _SHA256.fullmatch(etag or "") else self.expected
            if digest == wanted:
                os.replace(self.part, self.target)
                return self.target
            self.part.unlink(missing_ok=True)
            if redo:
                break
        raise IntegrityError(
            f"{self.target.name}: sha256 {digest} of the downloaded file is not {wanted}"
        )

    def _fetch(self) -> tuple[str, str | None]:
        """Bring the part file to the whole artifact; returns its sha256 and the ETag."""
        failures = 0
        while True:
            try:
                done = self._transfer()
            except httpx.TransportError as exc:
                failures += 1
                if failures > self.retries:
                    raise TransportError(
                        f"download of {self.url} interrupted ({exc or type(exc).__name__}); "
                        f"{self._part_size()} bytes kept in {self.part}, call again to resume"
                    ) from exc
                time.sleep(min(0.2 * 2**failures, 5.0))
                continue
            if done is not None:
                return done

    def _part_size(self) -> int:
        try:
            return self.part.stat().st_size
        except FileNotFoundError:
            return 0

    def _transfer(self) -> tuple[str, str | None] | None:
        """One request; None when the part file was discarded and a new request is needed."""
        offset = self._part_size()
        # Identity encoding and raw bytes: a Range counts bytes of the file as stored.
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers |= {"Range": f"bytes={offset}-", "If-Range": f'"{self.expected}"'}
        with self.client._http.stream("GET", self.url, headers=headers) as response:
            etag = _unquote_etag(response.headers.get("etag"))
            if response.status_code == 416:
                response.read()
                total = _UNSATISFIED_RANGE.fullmatch(response.headers.get("content-range", ""))
                if total is not None and int(total.group(1)) == offset:
                    return _file_sha256(self.part), etag or self.expected
                self.part.unlink(missing_ok=True)  # longer than the artifact: not ours
                return None
            if response.status_code >= 400:
                response.read()
                raise error_from_response(response)
            hasher = hashlib.sha256()
            if response.status_code == 206:
                match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", ""))
                if match is None or int(match.group(1)) != offset:
                    self.part.unlink(missing_ok=True)
                    return None
                _hash_file(self.part, hasher)
                mode = "ab"
            else:
                offset, mode = 0, "wb"
            length = int(response.headers.get("content-length", 0)) + offset or None
            bar = self._bar(length, offset)
            try:
                with open(self.part, mode) as out:
                    for chunk in response.iter_raw():  # as received: nothing held back
                        out.write(chunk)
                        hasher.update(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
            return hasher.hexdigest(), etag

    def _bar(self, total: int | None, initial: int) -> Any:
        if self.progress_file is None or not _isatty(self.progress_file):
            return None
        from tqdm import tqdm

        return tqdm(
            total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
            file=self.progress_file, desc=self.target.name, mininterval=0.5,
        )


def _unquote_etag(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if value.startswith("W/"):
        return None  # a weak tag says nothing about the bytes
    return value.strip('"')


def _hash_file(path: Path, hasher: Any) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            hasher.update(chunk)


def _file_sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    _hash_file(path, hasher)
    return hasher.hexdigest()
