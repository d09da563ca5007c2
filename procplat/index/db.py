"""Opening the index: SQLite in WAL mode by default, PostgreSQL when scaled.

Reads and writes go through two context managers. ``read()`` is a transaction that sees one
snapshot (REPEATABLE READ on PostgreSQL).
``write()`` is a transaction that may write: on SQLite it begins ``IMMEDIATE`` (so it never
has to upgrade a read lock, the cause of "database is locked") under a process-wide lock;
with ``serialize=True`` on PostgreSQL it takes a transaction-scoped advisory lock, so checks
and inserts that must not interleave (dedup, quotas) run one at a time across processes.

Opening upgrades the schema to head through the migrations (:mod:`procplat.index.migrate`),
or with ``migrate=False`` only checks that it is there (``procplat serve --no-migrate``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from procplat.index.migrate import require_current, upgrade

SUBMIT_LOCK_KEY = 0x70726F63  # "proc"


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

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
