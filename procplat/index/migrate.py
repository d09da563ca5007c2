"""The index schema is made and changed by Alembic migrations only, run from here.

The scripts are in ``procplat/index/migrations`` (``env.py``, ``versions/NNNN_slug.py``),
found by path from this package and configured in code: no ``alembic.ini``. Revision
``0001`` is the baseline, the schema as ``Base.metadata.create_all`` made it until migrations
came; every later schema change is one more revision. On SQLite the revisions alter tables in
batch mode (copy, drop, rename); they run with foreign keys off, as SQLite's own recipe for
altering a table says, or dropping the old copy of ``tasks`` would cascade to its log lines
and artifacts, and ``PRAGMA foreign_key_check`` must pass before the commit.

Who runs them: ``Database(url)`` upgrades to head before it is used (so ``procplat serve``
with nothing set upgrades silently on start), ``procplat db upgrade`` runs them alone, and
``procplat serve --no-migrate`` only checks (:func:`require_current`) and refuses to start
when the index is behind, naming ``procplat db upgrade``.

One process at a time: several replicas may start at once on one index. On PostgreSQL the
upgrade holds ``pg_advisory_lock(MIGRATE_LOCK_KEY)`` on its own connection for its whole run
(released by the server if the process dies); on SQLite it holds an ``flock`` on
``<database>-migrate.lock`` beside the database file and runs in one ``BEGIN EXCLUSIVE``
transaction. Each process reads the revision only once it holds the lock, so the second
finds the first one's work done. Every revision runs in the same transaction: a failed
upgrade leaves the index as it was (both databases have transactional DDL).

Databases made before migrations (tables, no ``alembic_version``) are adopted: the baseline
creates only what is missing of its schema (on an empty database, all of it; on an older
index, what ``create_all`` never added to an existing database: the ``entry_builds`` table
before 2f47dfd, the ``ix_tasks_active`` index before 1b0ab6b), checks that the tables it finds
have its columns, and is recorded; later revisions then run as on any index.

Adding a schema change: edit :mod:`procplat.index.models`, then
``python -m procplat.index.migrate revision "what changed"`` writes the next revision by
autogenerate against a scratch database at head; review it (batch ops on SQLite, data moves).
``tests/test_migrations.py`` fails while the models and the migrations disagree.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData, create_engine, event, make_url, text
from sqlalchemy.pool import NullPool

from procplat.index.models import Base

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
BASELINE = "0001"
MIGRATE_LOCK_KEY = 0x6D696772  # "migr"; the submit lock of db.py is another key

log = logging.getLogger("procplat.index")


class SchemaNotCurrent(Exception):
    """The index is not at the revision this code needs, and it may not upgrade it here."""


@dataclass(frozen=True, kw_only=True)
class SchemaStatus:
    url: str  # without its password
    current: str | None  # None: no migration has run (an empty or a pre-migration index)
    head: str
    known: bool  # False: ``current`` is a revision this code does not have (newer code ran)

    @property
    def behind(self) -> bool:
        return self.known and self.current != self.head

    @property
    def describe(self) -> str:
        at = f"revision {self.current}" if self.current else "no revision (not migrated yet)"
        return f"the index {self.url} is at {at}; this procplat needs {self.head}"


@dataclass(frozen=True, kw_only=True)
class UpgradeResult:
    before: str | None
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


def _config(script_location: Path, connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    config.attributes["connection"] = connection
    return config


def head_revision(script_location: Path = MIGRATIONS_DIR) -> str:
    head = ScriptDirectory.from_config(_config(script_location)).get_current_head()
    assert head is not None, f"no revisions in {script_location}"
    return head


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _engine(url: str) -> Engine:
    """An engine of its own for the migration: one connection, closed afterwards. On SQLite
    with foreign keys off (set outside any transaction, where SQLite honours it) and
    transactions begun by the ``sqlite_begin`` execution option (``BEGIN`` by default)."""
    if not url.startswith("sqlite"):
        return create_engine(url, poolclass=NullPool)
    database = _sqlite_file(url)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        for pragma in ("journal_mode=WAL", "busy_timeout=60000", "foreign_keys=OFF"):
            dbapi_connection.execute(f"PRAGMA {pragma}")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(conn.get_execution_options().get("sqlite_begin", "BEGIN"))

    return engine


@contextmanager
def _locked(url: str) -> Iterator[Connection]:
    """A connection holding the migration lock, with a transaction begun on it."""
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                conn.execution_options(sqlite_begin="BEGIN EXCLUSIVE")
                with _file_lock(_sqlite_file(url)), conn.begin():
                    yield conn
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"the migration broke foreign keys: {broken[:5]}")
                return
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATE_LOCK_KEY})
            conn.commit()
            try:
                with conn.begin():
                    yield conn
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATE_LOCK_KEY})
                conn.commit()
    finally:
        engine.dispose()


@contextmanager
def _file_lock(database: Path | None) -> Iterator[None]:
    if database is None:
        yield
        return
    with open(database.with_name(database.name + "-migrate.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes (or the process dies)
        yield


@contextmanager
def _quiet_alembic() -> Iterator[None]:
    """Alembic logs every step at INFO; the service logs one line of its own instead."""
    logger = logging.getLogger("alembic")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _status(conn: Connection, url: str, script_location: Path) -> SchemaStatus:
    current = MigrationContext.configure(conn).get_current_revision()
    script = ScriptDirectory.from_config(_config(script_location))
    known = current is None or any(r.revision == current for r in script.walk_revisions())
    return SchemaStatus(
        url=make_url(url).render_as_string(hide_password=True), current=current,
        head=head_revision(script_location), known=known,
    )


def schema_status(url: str, script_location: Path = MIGRATIONS_DIR) -> SchemaStatus:
    """Where the index is (read without the lock; it changes nothing)."""
    database = _sqlite_file(url)
    if database is not None and not database.exists():
        return SchemaStatus(url=url, current=None, head=head_revision(script_location), known=True)
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            return _status(conn, url, script_location)
    finally:
        engine.dispose()


def require_current(url: str) -> SchemaStatus:
    """The status, if the index is at head; else :class:`SchemaNotCurrent` saying what to do."""
    status = schema_status(url)
    if status.current == status.head:
        return status
    raise SchemaNotCurrent(_advice(status))


def _advice(status: SchemaStatus) -> str:
    if not status.known:
        return (f"{status.describe}, but {status.current} is newer than this procplat: "
                "run the procplat version that upgraded it (or newer)")
    return (f"{status.describe}: run `procplat db upgrade` with the same settings "
            "(PROCPLAT_DATA, PROCPLAT_DATABASE_URL, PROCPLAT_CONFIG), or start "
            "`procplat serve` without --no-migrate")


def upgrade(url: str, revision: str = "head", *,
            script_location: Path = MIGRATIONS_DIR) -> UpgradeResult:
    """Upgrade the index at ``url`` to ``revision`` (under the migration lock, in one
    transaction); a no-op when it is there already."""
    with _quiet_alembic(), _locked(url) as conn:
        status = _status(conn, url, script_location)
        if not status.known:
            raise SchemaNotCurrent(_advice(status))
        command.upgrade(_config(script_location, conn), revision)
        after = MigrationContext.configure(conn).get_current_revision()
    assert after is not None
    result = UpgradeResult(before=status.current, after=after)
    if result.changed:
        log.info("index schema upgraded from %s to %s", result.before or "nothing", result.after)
    return result


def differences(url: str, models: MetaData = Base.metadata) -> list[Any]:
    """What autogenerate finds between the index at ``url`` and the models (empty: they agree)."""
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, models))
    finally:
        engine.dispose()


def new_revision(message: str, script_location: Path = MIGRATIONS_DIR) -> Path:
    """Write the next revision, autogenerated from the models against a scratch SQLite index
    at head (batch operations, which PostgreSQL runs as plain ALTERs)."""
    number = f"{int(head_revision(script_location)) + 1:04d}"
    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite:///{scratch}/index.sqlite"
        upgrade(url, script_location=script_location)
        with _quiet_alembic(), _locked(url) as conn:
            script = command.revision(_config(script_location, conn), message,
                                      autogenerate=True, rev_id=number)
    assert script is not None and not isinstance(script, list)
    return Path(script.path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m procplat.index.migrate",
                                     description="Write the next index migration (developers).")
    commands = parser.add_subparsers(dest="command", required=True)
    revision = commands.add_parser("revision", help="autogenerate the next revision")
    revision.add_argument("message", help="what changed, e.g. 'tasks.priority'")
    args = parser.parse_args(argv)
    print(new_revision(args.message))
    return 0


if __name__ == "__main__":
    sys.exit(main())
