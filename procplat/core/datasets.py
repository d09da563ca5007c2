"""Orgs, datasets and their entries: visibility and access, uploads streamed to disk, the
entry index kept in step with the files, and what tools report about entries (detected
properties, builds) applied to it."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio

from procplat.core.auth import Principal, require_user
from procplat.core.paging import clamp_take, page
from procplat.errors import BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge, Unauthorized
from procplat.index import queries as q
from procplat.index.db import Database, utcnow
from procplat.index.models import Entry, EntryBuild
from tools.build import BUILDABLE_TYPES
from tools.contract import BuildState, EntryUpdate, IndexedEntry, InvalidParams
from tools.detect import ENTRY_TYPES, detect
from tools.hashing import sha256_file
from tools.safepath import SERVICE_FOLDER, normalize_relpath, resolve_in_dataset

SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
VISIBILITIES = ("private", "public")
UPLOAD_CHUNK = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class DatasetRef:
    """A dataset as seen by one caller."""

    org_id: int
    org_slug: str
    org_owner_id: int
    dataset_id: int
    slug: str
    visibility: str
    created_at: datetime
    root: Path
    can_write: bool

    @property
    def tmp_dir(self) -> Path:
        return self.root / SERVICE_FOLDER / "tmp"

    def describe(self) -> dict[str, Any]:
        return {
            "org": self.org_slug,
            "slug": self.slug,
            "visibility": self.visibility,
            "createdAt": iso(self.created_at),
            "canWrite": self.can_write,
        }


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def check_slug(value: object, what: str) -> str:
    if not isinstance(value, str) or not SLUG.match(value):
        raise BadRequest(f"{what} must be 1-64 lowercase letters, digits, '_' or '-'")
    return value


def user_path(path: str, *, allow_root: bool = False) -> str:
    """A user path checked by the one safe-path function (400 when unsafe)."""
    try:
        return normalize_relpath(path, allow_root=allow_root)
    except InvalidParams as exc:
        raise BadRequest(str(exc)) from None


def entry_json(entry: Entry, build: EntryBuild | None = None) -> dict[str, Any]:
    return {
        "path": entry.path,
        "type": entry.type,
        "size": entry.size,
        "hash": entry.hash,
        "mtime": iso(entry.mtime),
        "properties": entry.properties or {},
        "build": build_json(entry, build),
    }


def build_json(entry: Entry, build: EntryBuild | None) -> dict[str, Any] | None:
    """An entry's build state: None for types that have no build; ``missing`` (never built),
    ``stale`` (built from another version), ``built``, ``pending`` or ``failed``."""
    if entry.type not in BUILDABLE_TYPES:
        return None
    if build is None:
        return {"state": "missing"}
    state = build.state if build.hash == entry.hash else "stale"
    found: dict[str, Any] = {"state": state, "hash": build.hash, "outputs": build.outputs or []}
    if build.missing:
        found["missing"] = build.missing
    if build.error:
        found["error"] = build.error
    return found


def _member(s: Any, caller: Principal | None, org: Any) -> bool:
    """Whether the caller may see all of the org's datasets and write to them."""
    return caller is not None and (
        caller.is_admin or org.owner_id == caller.user_id or q.is_member(s, org.id, caller.user_id)
    )


def _not_found(what: str, caller: Principal | None) -> str:
    """The 404 message; an anonymous caller is told why a private dataset may be hidden (the
    same words whether or not it exists, so they reveal nothing)."""
    if caller is None:
        return f"{what} not found (no token was sent; private datasets are visible to members only)"
    return f"{what} not found"


def _posix_seconds(moment: datetime) -> float:
    return moment.replace(tzinfo=UTC).timestamp()


class Datasets:
    def __init__(self, db: Database, datasets_dir: Path) -> None:
        self.db = db
        self.datasets_dir = datasets_dir
        self._prepared: set[int] = set()  # datasets whose folders exist

    # orgs and datasets --------------------------------------------------------------------
    def create_org(self, caller: Principal | None, slug: object, name: object) -> dict[str, Any]:
        user = require_user(caller)
        slug = check_slug(slug, "slug")
        if name is not None and not isinstance(name, str):
            raise BadRequest("name must be a string")
        with self.db.write() as s:
            if q.org_by_slug(s, slug) is not None:
                raise Conflict(f"org '{slug}' already exists")
            org = q.add_org(s, slug, (name or slug)[:200], user.user_id, utcnow())
            q.add_member(s, org.id, user.user_id)
        return {"slug": slug, "name": name or slug, "owner": user.username}

    def add_member(self, caller: Principal | None, org_slug: str, username: object) -> dict[str, Any]:
        user = require_user(caller)
        if not isinstance(username, str):
            raise BadRequest("username must be a string")
        with self.db.write() as s:
            org = q.org_by_slug(s, org_slug)
            if org is None:
                raise NotFound(f"org '{org_slug}' not found")
            if not (user.is_admin or org.owner_id == user.user_id):
                if q.is_member(s, org.id, user.user_id):
                    raise Forbidden("only the org owner or an admin can add members")
                raise NotFound(f"org '{org_slug}' not found")
            member = q.user_by_name(s, username)
            if member is None:
                raise BadRequest(f"user '{username}' does not exist")
            q.add_member(s, org.id, member.id)
        return {"org": org_slug, "username": username}

    def create_dataset(
        self, caller: Principal | None, org_slug: str, slug: object, visibility: object
    ) -> DatasetRef:
        user = require_user(caller)
        slug = check_slug(slug, "slug")
        visibility = "private" if visibility is None else visibility
        if visibility not in VISIBILITIES:
            raise BadRequest("visibility must be 'private' or 'public'")
        with self.db.write() as s:
            org = q.org_by_slug(s, org_slug)
            if org is None:
                raise NotFound(f"org '{org_slug}' not found")
            if not (user.is_admin or q.is_member(s, org.id, user.user_id)):
                raise Forbidden(f"you are not a member of org '{org_slug}'")
            if q.dataset_by_slug(s, org.id, slug) is not None:
                raise Conflict(f"dataset '{org_slug}/{slug}' already exists")
            ds = q.add_dataset(s, org.id, slug, str(visibility), utcnow())
            ref = self._ref(org, ds, can_write=True)
        (ref.root / SERVICE_FOLDER / "tmp").mkdir(parents=True, exist_ok=True)
        return ref

    def _ref(self, org: Any, ds: Any, *, can_write: bool) -> DatasetRef:
        return DatasetRef(
            org_id=org.id,
            org_slug=org.slug,
            org_owner_id=org.owner_id,
            dataset_id=ds.id,
            slug=ds.slug,
            visibility=ds.visibility,
            created_at=ds.created_at,
            root=self.datasets_dir / org.slug / ds.slug,
            can_write=can_write,
        )

    def ref_of(self, s: Any, dataset_id: int, *, can_write: bool = True) -> DatasetRef:
        """The dataset with this id, for the service's own use (no access check)."""
        from procplat.index.models import Dataset, Org

        ds = s.get(Dataset, dataset_id)
        return self._ref(s.get(Org, ds.org_id), ds, can_write=can_write)

    def open(
        self, caller: Principal | None, org_slug: str, ds_slug: str,
        access: Literal["Read", "Write"] = "Read",
    ) -> DatasetRef:
        """The dataset if the caller may see it (404 otherwise) and has ``access`` (401/403)."""
        with self.db.read() as s:
            org = q.org_by_slug(s, org_slug)
            ds = q.dataset_by_slug(s, org.id, ds_slug) if org is not None else None
            member = org is not None and _member(s, caller, org)
            if org is None or ds is None or (ds.visibility != "public" and not member):
                raise NotFound(_not_found(f"dataset '{org_slug}/{ds_slug}'", caller))
            if access == "Write" and not member:
                if caller is None:
                    raise Unauthorized("authentication required")
                raise Forbidden(f"you may not write to '{org_slug}/{ds_slug}'")
            ref = self._ref(org, ds, can_write=bool(member))
        if ref.dataset_id not in self._prepared:
            ref.tmp_dir.mkdir(parents=True, exist_ok=True)
            self._prepared.add(ref.dataset_id)
        return ref

    def list_orgs(self, caller: Principal | None, skip: Any, take: Any) -> dict[str, Any]:
        """A page of the orgs the caller may see: those with a public dataset, and the
        caller's own (all of them for an admin)."""
        skip_n, take_n = clamp_take(skip, take)
        with self.db.read() as s:
            rows, total = q.visible_orgs(
                s, user_id=caller.user_id if caller else None,
                everything=caller is not None and caller.is_admin, skip=skip_n, take=take_n,
            )
            items = [
                {"slug": org.slug, "name": org.name, "owner": owner,
                 "createdAt": iso(org.created_at)}
                for org, owner in rows
            ]
        return page(items, total, skip_n, take_n)

    def list_datasets(
        self, caller: Principal | None, org_slug: str, skip: Any, take: Any
    ) -> dict[str, Any]:
        """A page of an org's datasets the caller may see: all of them for its members (and
        admins), its public ones for everyone else. An org none of whose datasets the caller
        may see is invisible (404), as ``GET /orgs`` does not list it."""
        skip_n, take_n = clamp_take(skip, take)
        with self.db.read() as s:
            org = q.org_by_slug(s, org_slug)
            member = org is not None and _member(s, caller, org)
            rows, total = q.datasets_of_org(
                s, org.id, public_only=not member, skip=skip_n, take=take_n
            ) if org is not None else ([], 0)
            if org is None or (not member and total == 0):
                raise NotFound(_not_found(f"org '{org_slug}'", caller))
            items = [self._ref(org, ds, can_write=member).describe() for ds in rows]
        return page(items, total, skip_n, take_n)

    # files ----------------------------------------------------------------------------------
    def file_path(self, ref: DatasetRef, path: str) -> Path:
        try:
            return resolve_in_dataset(ref.root, path)
        except InvalidParams as exc:
            raise BadRequest(str(exc)) from None

    async def upload(
        self, ref: DatasetRef, path: str, body: AsyncIterator[bytes], max_bytes: int
    ) -> tuple[dict[str, Any], bool]:
        """Stream ``body`` to a temporary file, then rename it into place and index it."""
        rel = user_path(path)
        target = self.file_path(ref, rel)
        if target.is_dir():
            raise Conflict(f"'{rel}' is a folder")
        self._check_parents(ref, rel)
        tmp = ref.tmp_dir / f"upload-{uuid.uuid4().hex}"
        digest = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as handle:
                async for chunk in body:
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(f"upload exceeds the limit of {max_bytes} bytes")
                    digest.update(chunk)
                    handle.write(chunk)
            await anyio.to_thread.run_sync(self._move_into_place, ref, rel, tmp)
        finally:
            tmp.unlink(missing_ok=True)
        entry, created = await anyio.to_thread.run_sync(
            self._index_file, ref, rel, digest.hexdigest()
        )
        return entry, created

    def _check_parents(self, ref: DatasetRef, rel: str) -> None:
        parent = ref.root
        for part in rel.split("/")[:-1]:
            parent = parent / part
            if parent.exists() and not parent.is_dir():
                raise Conflict(f"'{ref.root and parent.relative_to(ref.root).as_posix()}' is a file")

    def _move_into_place(self, ref: DatasetRef, rel: str, tmp: Path) -> None:
        target = self.file_path(ref, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.file_path(ref, rel)  # re-check: a parent created meanwhile must not escape
        os.replace(tmp, target)

    def _index_file(self, ref: DatasetRef, rel: str, sha256: str | None = None) -> tuple[dict[str, Any], bool]:
        path = ref.root / rel
        stat = path.stat()
        found = detect(path)
        if sha256 is None:
            sha256 = sha256_file(path)
        with self.db.write() as s:
            self._index_parents(s, ref, rel)
            entry, created = q.upsert_entry(
                s, ref.dataset_id, rel, type=found.type, size=stat.st_size, hash=sha256,
                mtime=datetime.utcfromtimestamp(stat.st_mtime), properties=found.properties,
            )
            return entry_json(entry, q.build_of(s, ref.dataset_id, rel)), created

    def _index_parents(self, s: Any, ref: DatasetRef, rel: str) -> None:
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            folder = "/".join(parts[:i])
            if q.entry_by_path(s, ref.dataset_id, folder) is None:
                q.upsert_entry(s, ref.dataset_id, folder, type="directory", size=0, hash=None,
                               mtime=utcnow(), properties={})

    def index_paths(self, ref: DatasetRef, rel_paths: Iterable[str]) -> None:
        """Index files a tool added (as if uploaded); folders are indexed file by file."""
        for rel in rel_paths:
            path = ref.root / rel
            if path.is_dir():
                for child in sorted(p for p in path.rglob("*") if p.is_file()):
                    self._index_file(ref, child.relative_to(ref.root).as_posix())
            elif path.is_file():
                self._index_file(ref, rel)

    def unindex_paths(self, ref: DatasetRef, rel_paths: Iterable[str]) -> None:
        with self.db.write() as s:
            for rel in rel_paths:
                q.delete_entries(s, ref.dataset_id, rel)

    def delete(self, ref: DatasetRef, path: str) -> None:
        rel = user_path(path)
        target = self.file_path(ref, rel)
        if not target.exists() and not target.is_symlink():
            raise NotFound(f"'{rel}' not found")
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
        self.unindex_paths(ref, [rel])

    def entries(
        self, ref: DatasetRef, folder: str | None, entry_type: str | None, recursive: bool
    ) -> list[dict[str, Any]]:
        rel = user_path(folder or "", allow_root=True)
        if rel:
            self.file_path(ref, rel)  # a path the dataset's disk cannot hold is refused (400)
        if entry_type is not None and entry_type not in ENTRY_TYPES:
            raise BadRequest(f"unknown entry type '{entry_type}' (known: {', '.join(ENTRY_TYPES)})")
        with self.db.read() as s:
            builds = q.builds_under(s, ref.dataset_id, rel)
            return [
                entry_json(e, builds.get(e.path))
                for e in q.list_entries(s, ref.dataset_id, rel, entry_type, recursive)
            ]

    def entry(self, ref: DatasetRef, rel: str) -> dict[str, Any] | None:
        with self.db.read() as s:
            found = q.entry_by_path(s, ref.dataset_id, rel)
            if found is None:
                return None
            return entry_json(found, q.build_of(s, ref.dataset_id, rel))

    # what tools see of the index and report back ---------------------------------------------
    def snapshot(self, ref: DatasetRef) -> tuple[IndexedEntry, ...]:
        """Every entry of the dataset with its build, for a tool that reads the index."""
        with self.db.read() as s:
            builds = q.builds_under(s, ref.dataset_id, None)
            return tuple(
                IndexedEntry(
                    path=e.path, type=e.type, size=e.size, hash=e.hash,
                    mtime=_posix_seconds(e.mtime), properties=dict(e.properties or {}),
                    build=_build_state(builds.get(e.path)),
                )
                for e in q.list_entries(s, ref.dataset_id, None, None, True)
            )

    def apply_updates(self, ref: DatasetRef, updates: Iterable[EntryUpdate]) -> int:
        """Write what a tool found about existing entries, in one transaction. An update is
        skipped when its entry is gone or its hash changed since the run started (a newer
        upload wins). Returns how many were applied."""
        applied = 0
        with self.db.write() as s:
            for update in updates:
                entry = q.entry_by_path(s, ref.dataset_id, update.path)
                if entry is None or entry.hash != update.expected_hash:
                    continue
                _apply_update(s, ref, entry, update)
                applied += 1
        return applied


def _build_state(build: EntryBuild | None) -> BuildState | None:
    if build is None:
        return None
    return BuildState(state=build.state, hash=build.hash, missing=build.missing,
                      error=build.error, outputs=tuple(build.outputs or ()))


def _apply_update(s: Any, ref: DatasetRef, entry: Entry, update: EntryUpdate) -> None:
    if update.type is not None:
        entry.type = update.type
    if update.properties is not None:
        entry.properties = update.properties
    if update.size is not None:
        entry.size = update.size
    if update.hash is not None:
        entry.hash = update.hash
    if update.mtime is not None:
        entry.mtime = datetime.fromtimestamp(update.mtime, UTC).replace(tzinfo=None)
    if update.build is not None:
        b = update.build
        q.upsert_build(s, ref.dataset_id, entry.path, hash=b.hash, state=b.state,
                       missing=b.missing, error=b.error, outputs=list(b.outputs),
                       updated_at=utcnow())

