"""Every query the service makes. Functions take an open session from :class:`Database`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, case, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from procplat.index.models import (
    Artifact,
    Dataset,
    Entry,
    EntryBuild,
    Member,
    Org,
    Task,
    TaskLogLine,
    Token,
    User,
)
from procplat.states import TaskState


# users and tokens -----------------------------------------------------------------------
def count_users(s: Session) -> int:
    return s.scalar(select(func.count()).select_from(User)) or 0


def user_by_token_hash(s: Session, token_hash: str) -> User | None:
    return s.scalar(select(User).join(Token, Token.user_id == User.id).where(Token.token_hash == token_hash))


def all_users(s: Session) -> Sequence[User]:
    return s.scalars(select(User).order_by(User.username)).all()


def user_by_name(s: Session, username: str) -> User | None:
    return s.scalar(select(User).where(User.username == username))


def add_user(s: Session, username: str, is_admin: bool, token_hash: str, now: datetime) -> User:
    user = User(username=username, is_admin=is_admin, created_at=now)
    s.add(user)
    s.flush()
    s.add(Token(token_hash=token_hash, user_id=user.id, created_at=now))
    return user


# orgs, members, datasets ------------------------------------------------------------------
# Statements on the hot paths (every request, every submission) are built once, with bound
# parameters: building a statement costs more Python time than running it on SQLite.
_ORG_BY_SLUG = select(Org).where(Org.slug == bindparam("slug"))
_DATASET_BY_SLUG = select(Dataset).where(
    Dataset.org_id == bindparam("org_id"), Dataset.slug == bindparam("slug")
)


def org_by_slug(s: Session, slug: str) -> Org | None:
    return s.scalar(_ORG_BY_SLUG, {"slug": slug})


def add_org(s: Session, slug: str, name: str, owner_id: int, now: datetime) -> Org:
    org = Org(slug=slug, name=name, owner_id=owner_id, created_at=now)
    s.add(org)
    s.flush()
    return org


def is_member(s: Session, org_id: int, user_id: int) -> bool:
    return s.get(Member, (org_id, user_id)) is not None


def add_member(s: Session, org_id: int, user_id: int) -> None:
    if not is_member(s, org_id, user_id):
        s.add(Member(org_id=org_id, user_id=user_id))


def dataset_by_slug(s: Session, org_id: int, slug: str) -> Dataset | None:
    return s.scalar(_DATASET_BY_SLUG, {"org_id": org_id, "slug": slug})


def add_dataset(s: Session, org_id: int, slug: str, visibility: str, now: datetime) -> Dataset:
    ds = Dataset(org_id=org_id, slug=slug, visibility=visibility, created_at=now)
    s.add(ds)
    s.flush()
    return ds


# entries ------------------------------------------------------------------------------------
def entry_by_path(s: Session, dataset_id: int, path: str) -> Entry | None:
    return s.scalar(select(Entry).where(Entry.dataset_id == dataset_id, Entry.path == path))


def upsert_entry(s: Session, dataset_id: int, path: str, **values: Any) -> tuple[Entry, bool]:
    """Insert or update an entry; returns it and whether it was new."""
    entry = entry_by_path(s, dataset_id, path)
    created = entry is None
    if entry is None:
        entry = Entry(dataset_id=dataset_id, path=path)
        s.add(entry)
    for key, value in values.items():
        setattr(entry, key, value)
    s.flush()
    return entry, created


def ensure_folder_entry(s: Session, dataset_id: int, path: str, now: datetime) -> None:
    """Index a folder unless it is indexed: one statement that two transactions may run at
    once (both holding the folder's path lock shared) without a unique-key violation."""
    insert = sqlite_insert if s.get_bind().dialect.name == "sqlite" else postgresql_insert
    s.execute(
        insert(Entry)
        .values(dataset_id=dataset_id, path=path, type="directory", size=0, hash=None,
                mtime=now, properties={})
        .on_conflict_do_nothing(index_elements=["dataset_id", "path"])
    )


def list_entries(
    s: Session, dataset_id: int, folder: str | None, entry_type: str | None, recursive: bool
) -> list[Entry]:
    query = select(Entry).where(Entry.dataset_id == dataset_id)
    prefix = folder + "/" if folder else ""
    if prefix:
        query = query.where(Entry.path.startswith(prefix, autoescape=True))
    if entry_type:
        query = query.where(Entry.type == entry_type)
    rows = s.scalars(query.order_by(Entry.path)).all()
    if recursive:
        return list(rows)
    return [e for e in rows if "/" not in e.path[len(prefix):]]


def delete_entries(s: Session, dataset_id: int, path: str) -> int:
    """Delete an entry and, if it is a folder, everything below it (builds included)."""
    s.execute(
        delete(EntryBuild).where(
            EntryBuild.dataset_id == dataset_id,
            or_(EntryBuild.path == path, EntryBuild.path.startswith(path + "/", autoescape=True)),
        )
    )
    result = s.execute(
        delete(Entry).where(
            Entry.dataset_id == dataset_id,
            or_(Entry.path == path, Entry.path.startswith(path + "/", autoescape=True)),
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def build_of(s: Session, dataset_id: int, path: str) -> EntryBuild | None:
    return s.get(EntryBuild, (dataset_id, path))


def builds_under(s: Session, dataset_id: int, folder: str | None) -> dict[str, EntryBuild]:
    """The builds of the entries under ``folder`` (the whole dataset when empty), by path."""
    query = select(EntryBuild).where(EntryBuild.dataset_id == dataset_id)
    if folder:
        query = query.where(EntryBuild.path.startswith(folder + "/", autoescape=True))
    return {b.path: b for b in s.scalars(query)}


def upsert_build(s: Session, dataset_id: int, path: str, **values: Any) -> EntryBuild:
    build = build_of(s, dataset_id, path)
    if build is None:
        build = EntryBuild(dataset_id=dataset_id, path=path)
        s.add(build)
    for key, value in values.items():
        setattr(build, key, value)
    return build


# tasks ----------------------------------------------------------------------------------------
def find_dedup_match(
    s: Session, dataset_id: int, request_hash: str, since: datetime, now: datetime
) -> Task | None:
    """An active task with this hash, or a Succeeded one since ``since`` whose artifact lives
    (tools without an artifact are only matched while active).

    One query: active tasks first (newest created), then Succeeded ones (newest finished).
    """
    return s.scalar(
        _DEDUP_MATCH,
        {"dataset_id": dataset_id, "request_hash": request_hash, "since": since, "now": now},
    )


_DEDUP_MATCH = (
    select(Task)
    .outerjoin(Artifact, Artifact.task_id == Task.id)
    .where(
        Task.dataset_id == bindparam("dataset_id"),
        Task.request_hash == bindparam("request_hash"),
        or_(
            Task.active,
            and_(
                Task.state == TaskState.SUCCEEDED,
                Task.finished_at >= bindparam("since"),
                # a run without an artifact (a tool that writes into the dataset) is not
                # answered again: running it again is what the user wants
                Artifact.task_id.is_not(None),
                ~Artifact.expired,
                Artifact.expires_at > bindparam("now"),
            ),
        ),
    )
    .order_by(Task.active.desc(), Task.finished_at.desc(), Task.created_at.desc())
    .limit(1)
)


@dataclass(frozen=True)
class ActiveCounts:
    total: int
    org: int
    user: int
    user_tool: int


def _count_where(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


_ACTIVE_COUNTS = select(
    func.count(),
    _count_where(Task.org_id == bindparam("org_id")),
    _count_where(Task.user_id == bindparam("user_id")),
    _count_where(and_(Task.user_id == bindparam("user_id"), Task.tool_id == bindparam("tool_id"))),
).where(Task.active)


def active_counts(s: Session, *, org_id: int, user_id: int, tool_id: str) -> ActiveCounts:
    """Active tasks in all, of an org, of a user, and of a user with one tool: one query."""
    row = s.execute(_ACTIVE_COUNTS, {"org_id": org_id, "user_id": user_id, "tool_id": tool_id}).one()
    return ActiveCounts(*(int(n or 0) for n in row))


def get_task(s: Session, task_id: str, *, for_update: bool = False) -> Task | None:
    if for_update:
        return s.scalar(select(Task).where(Task.id == task_id).with_for_update().execution_options(populate_existing=True))
    return s.get(Task, task_id)


def list_tasks(
    s: Session,
    *,
    dataset_id: int | None = None,
    tool_id: str | None = None,
    state: str | None = None,
    user_id: int | None = None,
    skip: int = 0,
    take: int = 50,
    id_prefix: str | None = None,
) -> tuple[Sequence[Task], int]:
    conditions = []
    if id_prefix:
        conditions.append(Task.id.startswith(id_prefix, autoescape=True))
    if dataset_id is not None:
        conditions.append(Task.dataset_id == dataset_id)
    if tool_id:
        conditions.append(func.lower(Task.tool_id) == tool_id.lower())
    if state:
        conditions.append(Task.state == state)
    if user_id is not None:
        conditions.append(Task.user_id == user_id)
    total = s.scalar(select(func.count()).select_from(Task).where(*conditions)) or 0
    rows = s.scalars(
        select(Task)
        .where(*conditions)
        .order_by(Task.created_at.desc(), Task.id.desc())
        .offset(skip)
        .limit(take)
    ).all()
    return rows, total


def active_tasks(s: Session) -> Sequence[Task]:
    return s.scalars(select(Task).where(Task.active).order_by(Task.created_at)).all()


def kept_log_lines(s: Session, task_id: str, since: int = 0) -> Sequence[TaskLogLine]:
    return s.scalars(
        select(TaskLogLine)
        .where(TaskLogLine.task_id == task_id, TaskLogLine.seq >= since)
        .order_by(TaskLogLine.seq)
    ).all()


def add_log_lines(s: Session, task_id: str, first_seq: int, lines: Iterable[str]) -> None:
    s.add_all(
        TaskLogLine(task_id=task_id, seq=first_seq + i, line=line, nbytes=len(line.encode()))
        for i, line in enumerate(lines)
    )


def drop_log_lines_before(s: Session, task_id: str, seq: int) -> None:
    s.execute(delete(TaskLogLine).where(TaskLogLine.task_id == task_id, TaskLogLine.seq < seq))


def delete_tasks(s: Session, task_ids: Sequence[str]) -> None:
    if not task_ids:
        return
    s.execute(delete(TaskLogLine).where(TaskLogLine.task_id.in_(task_ids)))
    s.execute(delete(Artifact).where(Artifact.task_id.in_(task_ids)))
    s.execute(delete(Task).where(Task.id.in_(task_ids)))


def terminal_task_ids(
    s: Session, *, dataset_id: int | None = None, tool_id: str | None = None,
    finished_before: datetime | None = None,
) -> list[str]:
    query = select(Task.id).where(~Task.active)
    if dataset_id is not None:
        query = query.where(Task.dataset_id == dataset_id)
    if tool_id:
        query = query.where(func.lower(Task.tool_id) == tool_id.lower())
    if finished_before is not None:
        query = query.where(Task.finished_at < finished_before)
    return list(s.scalars(query).all())


def set_task_state(s: Session, task_id: str, **values: Any) -> None:
    s.execute(update(Task).where(Task.id == task_id).values(**values))


# artifacts ------------------------------------------------------------------------------------
def get_artifact(s: Session, task_id: str) -> Artifact | None:
    return s.get(Artifact, task_id)


def artifacts_of(s: Session, task_ids: Sequence[str]) -> Sequence[Artifact]:
    if not task_ids:
        return []
    return s.scalars(select(Artifact).where(Artifact.task_id.in_(task_ids))).all()


def expired_artifacts(s: Session, now: datetime) -> Sequence[Artifact]:
    return s.scalars(
        select(Artifact).where(~Artifact.expired, Artifact.expires_at <= now)
    ).all()


# listing orgs and datasets ------------------------------------------------------------------
def _org_visible_to(user_id: int | None) -> Any:
    """An org is visible when it has a public dataset, or to its owner and members."""
    public = (
        select(Dataset.id)
        .where(Dataset.org_id == Org.id, Dataset.visibility == "public")
        .exists()
    )
    if user_id is None:
        return public
    member = select(Member.user_id).where(Member.org_id == Org.id, Member.user_id == user_id).exists()
    return or_(public, Org.owner_id == user_id, member)


def visible_orgs(
    s: Session, *, user_id: int | None, everything: bool, skip: int, take: int
) -> tuple[list[tuple[Org, str]], int]:
    """A page of the orgs a caller may see (all of them with ``everything``), by slug, each
    with its owner's username; and how many there are in all."""
    conditions = [] if everything else [_org_visible_to(user_id)]
    total = s.scalar(select(func.count()).select_from(Org).where(*conditions)) or 0
    rows = s.execute(
        select(Org, User.username)
        .join(User, User.id == Org.owner_id)
        .where(*conditions)
        .order_by(Org.slug)
        .offset(skip)
        .limit(take)
    ).all()
    return [(org, username) for org, username in rows], total


def datasets_of_org(
    s: Session, org_id: int, *, public_only: bool, skip: int, take: int
) -> tuple[Sequence[Dataset], int]:
    """A page of an org's datasets (its public ones only with ``public_only``), by slug."""
    conditions = [Dataset.org_id == org_id]
    if public_only:
        conditions.append(Dataset.visibility == "public")
    total = s.scalar(select(func.count()).select_from(Dataset).where(*conditions)) or 0
    rows = s.scalars(
        select(Dataset).where(*conditions).order_by(Dataset.slug).offset(skip).limit(take)
    ).all()
    return rows, total


# tokens of one user -------------------------------------------------------------------------
def has_token(s: Session, user_id: int, token_hash: str) -> bool:
    return s.scalar(
        select(Token.token_hash).where(Token.user_id == user_id, Token.token_hash == token_hash)
    ) is not None


def replace_tokens(s: Session, user_id: int, token_hash: str, now: datetime) -> None:
    """Revoke every token of the user and give it this one."""
    s.execute(delete(Token).where(Token.user_id == user_id))
    s.add(Token(token_hash=token_hash, user_id=user_id, created_at=now))


def created_task_ids(s: Session) -> list[str]:
    """Active tasks no supervisor has handed to the cluster yet, oldest first."""
    return list(s.scalars(select(Task.id).where(Task.active, Task.state == TaskState.CREATED)
                          .order_by(Task.created_at)))


def inactive_among(s: Session, task_ids: Sequence[str]) -> list[str]:
    """Those of ``task_ids`` that are no longer active (cancelled, cleared, finished)."""
    if not task_ids:
        return []
    still = set(s.scalars(select(Task.id).where(Task.id.in_(task_ids), Task.active)))
    return [task_id for task_id in task_ids if task_id not in still]
