"""Signed, expiring links to one task artifact or one dataset file, for tools that cannot
send an ``Authorization`` header (GDAL's ``/vsicurl/``, QGIS, a browser).

A link's token is the signed tuple (kind, dataset id, task id or path, ETag of the version
linked, expiry). Making one goes through the same access checks as the authenticated
download; opening one checks the signature (403 when tampered with), the expiry (410) and
that the target is still the version linked (410 once the task is cleared, its artifact
expired, or the file deleted or replaced). The content is served by
:func:`procplat.api.file_response.file_response`, like the authenticated routes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Literal
from urllib.parse import quote

from itsdangerous import BadSignature, URLSafeSerializer

from procplat.core.auth import Principal
from procplat.core.datasets import Datasets, user_path
from procplat.core.tasks import Tasks
from procplat.errors import BadRequest, Forbidden, Gone, NotFound
from procplat.index import queries as q
from procplat.index.db import utcnow
from procplat.index.models import Dataset

__all__ = ["LINK_PREFIX", "Link", "LinkTarget", "Links"]

LINK_PREFIX = "/links"
_SALT = "procplat.link.v1"
LinkKind = Literal["result", "file"]


@dataclass(frozen=True, kw_only=True)
class Link:
    """A link made for a caller: its path (under :data:`LINK_PREFIX`) and when it expires."""

    path: str
    expires_at: datetime


@dataclass(frozen=True, kw_only=True)
class LinkTarget:
    """What a valid link serves: the open file (or its path), its ETag and name."""

    source: Path | BinaryIO
    etag: str
    filename: str
    attachment: bool


class Links:
    def __init__(self, *, tasks: Tasks, secret: str, max_expiry_seconds: float) -> None:
        self.tasks = tasks
        self.datasets: Datasets = tasks.datasets
        self.max_expiry_seconds = max_expiry_seconds
        self._serializer = URLSafeSerializer(secret, salt=_SALT)

    # making links ---------------------------------------------------------------------------
    def expiry(self, expires_in: object) -> float:
        """Seconds a link lives: ``expiresIn`` (default and bound: the setting)."""
        if expires_in is None:
            return self.max_expiry_seconds
        if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) \
                or not math.isfinite(expires_in) or expires_in <= 0:
            raise BadRequest("expiresIn must be a positive number of seconds")
        if expires_in > self.max_expiry_seconds:
            raise BadRequest(
                f"expiresIn must be at most {self.max_expiry_seconds:g} seconds "
                "(setting LINK_MAX_EXPIRY_SECONDS)"
            )
        return float(expires_in)

    def result_link(
        self, caller: Principal | None, org: str, ds: str, task_id: str, expires_in: object
    ) -> Link:
        """A link to a task's artifact, for a caller who may download it."""
        seconds = self.expiry(expires_in)
        ref = self.datasets.open(caller, org, ds, "Read")
        artifact, _path = self.tasks.artifact_file(caller, org, ds, task_id)
        until = min(time.time() + seconds, artifact.expires_at.replace(tzinfo=UTC).timestamp())
        return self._link("result", ref.dataset_id, artifact.task_id, artifact.sha256,
                          artifact.file_name, until)

    def file_link(
        self, caller: Principal | None, org: str, ds: str, path: str, expires_in: object
    ) -> Link:
        """A link to the current version of a dataset file, for a caller who may read it."""
        seconds = self.expiry(expires_in)
        ref = self.datasets.open(caller, org, ds, "Read")
        rel = user_path(path)
        opened = self.datasets.open_file(ref, rel)
        opened.file.close()
        return self._link("file", ref.dataset_id, rel, opened.etag, opened.name,
                          time.time() + seconds)

    def _link(
        self, kind: LinkKind, dataset_id: int, target: str, etag: str, name: str, until: float
    ) -> Link:
        expires = math.floor(until)
        token = self._serializer.dumps([kind, dataset_id, target, etag, expires])
        return Link(
            path=f"{LINK_PREFIX}/{token}/{quote(name, safe='')}",
            expires_at=datetime.fromtimestamp(expires, UTC).replace(tzinfo=None),
        )

    # opening links --------------------------------------------------------------------------
    def open(self, token: str) -> LinkTarget:
        """What the link serves; Forbidden when it is not a link this service signed, Gone
        when it expired or its target is no longer the version linked."""
        try:
            kind, dataset_id, target, etag, expires = self._serializer.loads(token)
        except (BadSignature, ValueError, TypeError):
            raise Forbidden("this link is not valid") from None
        if time.time() >= expires:
            raise Gone("this link has expired")
        if kind == "result":
            return self._open_result(dataset_id, target, etag)
        if kind == "file":
            return self._open_file(dataset_id, target, etag)
        raise Forbidden("this link is not valid")

    def _open_result(self, dataset_id: int, task_id: str, sha256: str) -> LinkTarget:
        with self.datasets.db.read() as s:
            task = q.get_task(s, task_id)
            artifact = q.get_artifact(s, task_id) if task is not None else None
        if task is None or task.dataset_id != dataset_id or task.state != "Succeeded" \
                or artifact is None or artifact.sha256 != sha256:
            raise Gone("the artifact of this link is no longer available")
        if artifact.expired or artifact.expires_at <= utcnow():
            raise Gone("the artifact of this link has expired")
        path = Path(artifact.storage_path)
        if not path.is_file():
            raise Gone("the artifact of this link is no longer available")
        return LinkTarget(source=path, etag=sha256, filename=artifact.file_name, attachment=True)

    def _open_file(self, dataset_id: int, rel: str, etag: str) -> LinkTarget:
        with self.datasets.db.read() as s:
            if s.get(Dataset, dataset_id) is None:
                raise Gone("the dataset of this link is gone")
            ref = self.datasets.ref_of(s, dataset_id, can_write=False)
        try:
            opened = self.datasets.open_file(ref, rel)
        except NotFound:
            raise Gone("the file of this link was deleted") from None
        if opened.etag != etag:
            opened.file.close()
            raise Gone("the file of this link was replaced since the link was made")
        return LinkTarget(source=opened.file, etag=etag, filename=opened.name, attachment=False)
