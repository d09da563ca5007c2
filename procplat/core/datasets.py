"""Orgs, datasets and their entries: visibility and access, uploads streamed to disk, the
entry index kept in step with the files, and what tools report about entries (detected
properties, builds) applied to it."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Literal, TypeVar

import anyio
from sqlalchemy.orm import Session

from procplat.core.auth import Principal, require_user
from procplat.core.paging import clamp_take
from procplat.core.placement import (
    FileFacts,
    FileVersion,
    StagedUpload,
    disk_full_is_507,
    measure,
    move_to_trash,
    open_version,
    remove_trash,
    stage_upload,
    version_of,
)
from procplat.core.views import EntryView, MemberView, OrgView, Page, entry_view
from procplat.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized
from procplat.index import queries as q
from procplat.index.db import Database, utcnow
from procplat.index.models import Dataset, Entry, EntryBuild, Org
from tools.contract import BuildState, EntryUpdate, IndexedEntry, InvalidParams
from tools.detect import ENTRY_TYPES
from tools.runtime.safepath import SERVICE_FOLDER, normalize_relpath, resolve_in_dataset

SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
VISIBILITIES = ("private", "public")
_MEASURE_ATTEMPTS = 3  # tries to index a changing file from outside the lock
_LOCKS_PER_TRANSACTION = 200  # paths locked at once by a batch of index changes
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class OpenedFile:
    """A dataset file opened for serving, with the ETag of the version that is open."""

    file: BinaryIO
    etag: str
    name: str


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


def _member(s: Session, caller: Principal | None, org: Org) -> bool:
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
    def create_org(self, caller: Principal | None, slug: object, name: object) -> OrgView:
        user = require_user(caller)
        slug = check_slug(slug, "slug")
        if name is not None and not isinstance(name, str):
            raise BadRequest("name must be a string")
        with self.db.write() as s:
            if q.org_by_slug(s, slug) is not None:
                raise Conflict(f"org '{slug}' already exists")
            org = q.add_org(s, slug, (name or slug)[:200], user.user_id, utcnow())
            q.add_member(s, org.id, user.user_id)
            created_at = org.created_at
        return OrgView(slug=slug, name=name or slug, owner=user.username, created_at=created_at)

    def add_member(self, caller: Principal | None, org_slug: str, username: object) -> MemberView:
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
        return MemberView(org=org_slug, username=username)

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

    def _ref(self, org: Org, ds: Dataset, *, can_write: bool) -> DatasetRef:
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

    def ref_of(self, s: Session, dataset_id: int, *, can_write: bool = True) -> DatasetRef:
        """The dataset with this id, for the service's own use (no access check)."""
        ds = s.get_one(Dataset, dataset_id)
        return self._ref(s.get_one(Org, ds.org_id), ds, can_write=can_write)

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

    def list_orgs(
        self, caller: Principal | None, skip: str | None, take: str | None
    ) -> Page[OrgView]:
        """A page of the orgs the caller may see: those with a public dataset, and the
        caller's own (all of them for an admin)."""
        skip_n, take_n = clamp_take(skip, take)
        with self.db.read() as s:
            rows, total = q.visible_orgs(
                s, user_id=caller.user_id if caller else None,
                everything=caller is not None and caller.is_admin, skip=skip_n, take=take_n,
            )
            items = tuple(
                OrgView(slug=org.slug, name=org.name, owner=owner, created_at=org.created_at)
                for org, owner in rows
            )
        return Page(items=items, total=total, skip=skip_n, take=take_n)

    def list_datasets(
        self, caller: Principal | None, org_slug: str, skip: str | None, take: str | None
    ) -> Page[DatasetRef]:
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
            items = tuple(self._ref(org, ds, can_write=member) for ds in rows)
        return Page(items=items, total=total, skip=skip_n, take=take_n)

    # files ----------------------------------------------------------------------------------
    # Every change to a file and its entry is one step under the path's lock (see
    # procplat.index.db): the file is moved (or found) and the entry written in one transaction
    # that holds the lock, so no other request sees one without the other.
    def file_path(self, ref: DatasetRef, path: str) -> Path:
        try:
            return resolve_in_dataset(ref.root, path)
        except InvalidParams as exc:
            raise BadRequest(str(exc)) from None

    async def upload(
        self, ref: DatasetRef, path: str, body: AsyncIterator[bytes], max_bytes: int
    ) -> tuple[EntryView, bool]:
        """Stream ``body`` into ``.ddb/tmp`` (hashed and detected there), then move it into
        place and index it in one step. Returns the entry and whether it is new."""
        rel = user_path(path)
        self._check_target(ref, rel, self.file_path(ref, rel))  # before receiving the body
        staged = await stage_upload(ref.tmp_dir, rel, body, max_bytes)
        try:
            return await anyio.to_thread.run_sync(self._place, ref, rel, staged)
        finally:
            staged.discard()

    def _check_target(self, ref: DatasetRef, rel: str, target: Path) -> None:
        """409 when a file cannot be put at ``rel``: it is a folder, or a parent is a file."""
        if target.is_dir():
            raise Conflict(f"'{rel}' is a folder")
        parent = ref.root
        for part in rel.split("/")[:-1]:
            parent = parent / part
            if parent.exists() and not parent.is_dir():
                raise Conflict(f"'{parent.relative_to(ref.root).as_posix()}' is a file")

    def _place(self, ref: DatasetRef, rel: str, staged: StagedUpload) -> tuple[EntryView, bool]:
        """Move a staged upload into place and index it, under the path lock."""
        with self.db.write() as s:
            self.db.lock_paths(s, ref.dataset_id, [rel])
            target = self.file_path(ref, rel)
            self._check_target(ref, rel, target)
            with disk_full_is_507(rel):
                target.parent.mkdir(parents=True, exist_ok=True)
            self.file_path(ref, rel)  # re-check: a parent made meanwhile must not lead out
            os.replace(staged.path, target)
            return self._record_file(s, ref, rel, staged.facts)

    def _record_file(
        self, s: Session, ref: DatasetRef, rel: str, facts: FileFacts
    ) -> tuple[EntryView, bool]:
        now = utcnow()
        parts = rel.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            q.ensure_folder_entry(s, ref.dataset_id, "/".join(parts[:depth]), now)
        entry, created = q.upsert_entry(
            s, ref.dataset_id, rel, type=facts.detected.type, size=facts.version.size,
            hash=facts.sha256, mtime=facts.version.mtime, properties=facts.detected.properties,
        )
        return entry_view(entry, q.build_of(s, ref.dataset_id, rel)), created

    def index_paths(self, ref: DatasetRef, rel_paths: Iterable[str]) -> None:
        """Index files a tool added (as if uploaded); folders are indexed file by file, and a
        path that no longer exists is unindexed."""
        for rel in rel_paths:
            path = ref.root / rel
            if path.is_dir():
                for child in sorted(p for p in path.rglob("*") if p.is_file()):
                    self._index_in_place(ref, child.relative_to(ref.root).as_posix())
            else:
                self._index_in_place(ref, rel)

    def _index_in_place(self, ref: DatasetRef, rel: str) -> None:
        """Hash and detect the file at ``rel`` where it is, then index it under the path lock
        if it is still that version; measured again when it changed meanwhile (the last time
        under the lock)."""
        path = ref.root / rel
        for attempt in range(_MEASURE_ATTEMPTS + 1):
            under_lock = attempt == _MEASURE_ATTEMPTS
            facts = None if under_lock else measure(path)
            with self.db.write() as s:
                self.db.lock_paths(s, ref.dataset_id, [rel])
                current = version_of(path)
                if current is None:
                    if not path.is_dir():
                        q.delete_entries(s, ref.dataset_id, rel)
                    return
                if under_lock:
                    facts = measure(path)
                if facts is not None and facts.version == current:
                    self._record_file(s, ref, rel, facts)
                    return

    def unindex_paths(self, ref: DatasetRef, rel_paths: Iterable[str]) -> None:
        for batch in _batches(list(rel_paths)):
            with self.db.write() as s:
                self.db.lock_paths(s, ref.dataset_id, batch)
                for rel in batch:
                    q.delete_entries(s, ref.dataset_id, rel)

    def delete(self, ref: DatasetRef, path: str) -> None:
        """Delete a file or folder: under the path lock it is moved into ``.ddb/tmp`` and
        unindexed in one transaction; what was moved aside is removed after the commit."""
        rel = user_path(path)
        with self.db.write() as s:
            self.db.lock_paths(s, ref.dataset_id, [rel])
            trash = move_to_trash(self.file_path(ref, rel), ref.tmp_dir)
            q.delete_entries(s, ref.dataset_id, rel)  # an entry whose file is gone goes too
        if trash is None:
            raise NotFound(f"'{rel}' not found")
        remove_trash(trash)

    def open_file(self, ref: DatasetRef, path: str) -> OpenedFile:
        """The file at ``path`` opened for reading, with the ETag of the version opened: its
        entry's sha256 when the entry describes that version (file and entry are read under
        the path lock, so a change cannot fall between them), else one made from the version."""
        rel = user_path(path)
        target = self.file_path(ref, rel)
        opened: tuple[BinaryIO, FileVersion] | None = None
        try:
            with self.db.locking() as s:
                self.db.lock_paths(s, ref.dataset_id, [rel], shared=True)
                opened = open_version(target)
                entry = q.entry_by_path(s, ref.dataset_id, rel) if opened is not None else None
        except BaseException:
            if opened is not None:
                opened[0].close()
            raise
        if opened is None:
            raise NotFound(f"file '{rel}' not found")
        file, version = opened
        etag = version.etag()
        if entry is not None and entry.hash and (entry.size, entry.mtime) == (version.size, version.mtime):
            etag = entry.hash
        return OpenedFile(file=file, etag=etag, name=target.name)

    def entries(
        self, ref: DatasetRef, folder: str | None, entry_type: str | None, recursive: bool
    ) -> list[EntryView]:
        rel = user_path(folder or "", allow_root=True)
        if rel:
            self.file_path(ref, rel)  # a path the dataset's disk cannot hold is refused (400)
        if entry_type is not None and entry_type not in ENTRY_TYPES:
            raise BadRequest(f"unknown entry type '{entry_type}' (known: {', '.join(ENTRY_TYPES)})")
        with self.db.read() as s:
            builds = q.builds_under(s, ref.dataset_id, rel)
            return [
                entry_view(e, builds.get(e.path))
                for e in q.list_entries(s, ref.dataset_id, rel, entry_type, recursive)
            ]

    def entry(self, ref: DatasetRef, rel: str) -> EntryView | None:
        with self.db.read() as s:
            found = q.entry_by_path(s, ref.dataset_id, rel)
            if found is None:
                return None
            return entry_view(found, q.build_of(s, ref.dataset_id, rel))

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
        """Write what a tool found about existing entries, a batch of them per transaction
        under their path locks. An update is skipped when its entry is gone or its hash
        changed since the run started (a newer upload wins). Returns how many were applied."""
        applied = 0
        for batch in _batches(list(updates)):
            with self.db.write() as s:
                self.db.lock_paths(s, ref.dataset_id, [u.path for u in batch])
                for update in batch:
                    entry = q.entry_by_path(s, ref.dataset_id, update.path)
                    if entry is None or entry.hash != update.expected_hash:
                        continue
                    _apply_update(s, ref, entry, update)
                    applied += 1
        return applied


def _batches(items: list[T]) -> Iterator[list[T]]:
    """Slices small enough to lock in one transaction (PostgreSQL's lock table is finite)."""
    for start in range(0, len(items), _LOCKS_PER_TRANSACTION):
        yield items[start:start + _LOCKS_PER_TRANSACTION]


def _build_state(build: EntryBuild | None) -> BuildState | None:
    if build is None:
        return None
    return BuildState(state=build.state, hash=build.hash, missing=build.missing,
                      error=build.error, outputs=tuple(build.outputs or ()))


def _apply_update(s: Session, ref: DatasetRef, entry: Entry, update: EntryUpdate) -> None:
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

