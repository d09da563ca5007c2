"""Opening the index: SQLite in WAL mode by default, PostgreSQL when scaled.

Reads and writes go through two context managers. ``read()`` is a transaction that sees one
snapshot (REPEATABLE READ on PostgreSQL).
``write()`` is a transaction that may write: on SQLite it begins ``IMMEDIATE`` (so it never
has to upgrade a read lock, the cause of "database is locked") under a process-wide lock;
with ``serialize=True`` on PostgreSQL it takes a transaction-scoped advisory lock, so checks
and inserts that must not interleave (dedup, quotas) run one at a time across processes.

Opening upgrades the schema to head through the migrations (:mod:`procplat.index.migrate`),
or with ``migrate=False`` only checks that it is there (``procplat serve --no-migrate``).

Path locks (:meth:`Database.lock_paths`) make a change to a dataset's file and to its entry
one step for every other request, in any number of API processes: a writer holds the path
exclusively (and its ancestor folders shared, so a folder delete cannot interleave) from
before it touches the file until its transaction commits; a reader of a file and its entry
holds the path shared (in :meth:`Database.locking`). On PostgreSQL they are transaction-scoped
advisory locks keyed on (dataset id, 32-bit hash of the path), taken in key order so that
transactions never wait on each other in a cycle (a hash collision only serialises two paths);
on SQLite the write transaction is itself exclusive across threads and processes.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc, text
from sqlalchemy.orm import Session, sessionmaker

from procplat.index.migrate import require_current, upgrade

SUBMIT_LOCK_KEY = 0x70726F63  # "proc"
# What the index raises when it cannot be reached or used for now (the server is down or
# restarting, a connection broke, the pool is exhausted): the API answers 503, the supervisor
# retries its writes. SQLAlchemy wraps the driver's errors in these.
INDEX_UNAVAILABLE: tuple[type[Exception], ...] = (
    exc.OperationalError, exc.InterfaceError, exc.TimeoutError)


def _path_key(path: str) -> int:
    """A path's advisory lock key: a signed 32-bit hash."""
    digest = hashlib.blake2b(path.encode("utf-8", "surrogatepass"), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


def utcnow() -> datetime:
    """Naive UTC now: the index stores UTC without a zone."""
    return datetime.now(UTC).replace(tzinfo=None)


class Database:
    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.engine = self._create_engine(url)
        self._immediate = self.engine.execution_options(sqlite_begin="BEGIN IMMEDIATE")
        # Reads see one snapshot (SQLite's WAL readers always do; PostgreSQL needs REPEATABLE
        # READ, else a task's log lines and its cursor can come from different commits).
        snapshot = self.engine if self.is_sqlite else self.engine.execution_options(
            isolation_level="REPEATABLE READ")
        self._snapshot_sessions = sessionmaker(snapshot, expire_on_commit=False)
        self._plain_sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(self._immediate, expire_on_commit=False)
        self._write_lock = threading.RLock()
        if migrate:
            upgrade(url)
        else:
            require_current(url)

    def _create_engine(self, url: str) -> Engine:
        if not self.is_sqlite:
            return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"timeout": 60, "check_same_thread": False}, pool_size=16
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql(conn.get_execution_options().get("sqlite_begin", "BEGIN"))

        return engine

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._snapshot_sessions() as session, session.begin():
            yield session

    @contextmanager
    def write(self, *, serialize: bool = False) -> Iterator[Session]:
        if self.is_sqlite:
            with self._write_lock, self._write_sessions() as session, session.begin():
                yield session
            return
        with self._plain_sessions() as session, session.begin():
            if serialize:
                session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SUBMIT_LOCK_KEY})
            yield session

    @contextmanager
    def locking(self) -> Iterator[Session]:
        """A transaction that reads under path locks (:meth:`lock_paths` with ``shared``).
        It must see every commit made before its locks were granted: on PostgreSQL it is
        READ COMMITTED (a snapshot would date from before the wait), on SQLite a write
        transaction (the only lock a writer's transaction makes it wait for)."""
        with self.write() as session:
            yield session

    def lock_paths(
        self, session: Session, dataset_id: int, paths: Iterable[str], *, shared: bool = False
    ) -> None:
        """Lock dataset paths until ``session``'s transaction ends: for a writer each path
        exclusively and its ancestor folders shared; for a reader (``shared``) each path
        shared (a folder delete moves a file away but never changes it, so a reader needs no
        lock on the folders). Call it before touching the files, in a :meth:`write` (or
        :meth:`locking`) transaction."""
        if self.is_sqlite:
            session.connection()  # BEGIN IMMEDIATE now, not at the first statement
            return
        exclusive: dict[int, bool] = {}
        for path in paths:
            parts = path.split("/")
            for depth in range(1, 1 if shared else len(parts)):
                exclusive.setdefault(_path_key("/".join(parts[:depth])), False)
            key = _path_key(path)
            exclusive[key] = exclusive.get(key, False) or not shared
        for key in sorted(exclusive):
            function = "pg_advisory_xact_lock" if exclusive[key] else "pg_advisory_xact_lock_shared"
            session.execute(text(f"SELECT {function}(:d, :k)"), {"d": dataset_id, "k": key})

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
