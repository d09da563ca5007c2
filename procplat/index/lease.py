"""The supervisor lease: which one process of a fleet on one index is the supervisor.

On PostgreSQL it is a session advisory lock held on a connection of its own, named after the
holder (``application_name``), so every replica can read who holds it from ``pg_locks``; it
goes the moment the holder's connection does (a SIGKILL closes the socket). On SQLite it is
an exclusive ``flock`` on a file beside the database, with the holder's name written in it;
the kernel drops it when the process dies. Both work between processes; neither needs a
clock or a heartbeat row, and a holder checks it still holds the lease with
:meth:`Lease.still_held`.

A PostgreSQL lock also goes when the index restarts (or the session is ended) while its holder
lives. A thread watches the lease's idle connection, on which the server speaks only to end
the session, and calls :attr:`Lease.on_lost` the moment it does: before the server can take a
new holder. A process that takes the lease from a running one (not at its own start) waits
:attr:`Lease.takeover_grace` before acting besides, so two processes never supervise at once.
A ``flock`` goes only with its process: no grace.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.pool import NullPool

SUPERVISOR_LOCK_KEY = 0x73757076  # "supv": below 2**31, so pg_locks shows it as objid
APPLICATION_PREFIX = "procplat supervisor "
CHECK_INTERVAL = 1.0  # how often a holder checks it still holds the lease (and others try it)


class Lease(Protocol):
    on_lost: Callable[[], None] | None  # called (from any thread) when a held lease goes

    @property
    def takeover_grace(self) -> float:
        """Seconds a process taking the lease from a running one waits before acting: a
        previous holder that lost the lease without dying has stopped by then."""
        ...

    def try_acquire(self) -> bool:
        """Take the lease if nobody holds it; whether this process holds it now."""
        ...

    def still_held(self) -> bool: ...

    def holder(self) -> str | None:
        """The name of the process holding the lease (None: nobody)."""
        ...

    def release(self) -> None: ...


class PostgresLease:
    takeover_grace = 2 * CHECK_INTERVAL

    def __init__(self, url: str, name: str) -> None:
        self.name = name
        self.on_lost: Callable[[], None] | None = None
        application = (APPLICATION_PREFIX + name)[:63]
        self._engine = create_engine(url, poolclass=NullPool,
                                     connect_args={"application_name": application})
        self._conn: Connection | None = None
        self._lost = threading.Event()  # of the connection held now

    def try_acquire(self) -> bool:
        if self.still_held():
            return True
        conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                    {"k": SUPERVISOR_LOCK_KEY}).scalar())
        except Exception:
            conn.close()
            raise
        if got:
            self._conn = conn
            self._lost = threading.Event()
            threading.Thread(target=self._watch, args=(conn.connection.dbapi_connection,
                                                       self._lost),
                             name="procplat-lease-watch", daemon=True).start()
        else:
            conn.close()
        return got

    def _watch(self, raw: Any, lost: threading.Event) -> None:
        """Wait for the server to end the lease's session (it sends nothing else on an idle
        connection, bar a rare parameter change), then report the lease lost."""
        from psycopg.pq import ConnStatus  # PostgreSQL's driver is an optional dependency

        watch = select.poll()  # not select.select: it fails on descriptors >= FD_SETSIZE
        watch.register(raw.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
        while not lost.is_set():
            readable = watch.poll(CHECK_INTERVAL * 1000)
            if lost.is_set():
                return  # released meanwhile
            if not readable:
                continue
            try:
                raw.pgconn.consume_input()
                ended = raw.pgconn.status != ConnStatus.OK
            except Exception:
                ended = True
            if ended:
                lost.set()
                if self.on_lost is not None:
                    self.on_lost()

    def still_held(self) -> bool:
        if self._conn is not None and self._lost.is_set():
            self._drop()  # the session ended, and the lock with it
        return self._conn is not None

    def holder(self) -> str | None:
        with self._engine.connect() as conn:
            application = conn.execute(text(
                "SELECT a.application_name FROM pg_locks l"
                " JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0"
                " AND l.objid = :k AND l.objsubid = 1"
                " AND l.database = (SELECT oid FROM pg_database"
                "                   WHERE datname = current_database())"
            ), {"k": SUPERVISOR_LOCK_KEY}).scalar()
        if application is None:
            return None
        return str(application).removeprefix(APPLICATION_PREFIX)

    def release(self) -> None:
        self._drop()  # the session's end releases its lock
        self._engine.dispose()

    def _drop(self) -> None:
        self._lost.set()  # the watcher stops
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


class FileLease:
    """An exclusive ``flock`` on ``path`` (per open file, so it also excludes a second
    service in the same process), holding the holder's name."""

    takeover_grace = 0.0
    on_lost: Callable[[], None] | None = None  # never called: the lock goes with its process

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, self.name.encode(), 0)
        self._fd = fd
        return True

    def still_held(self) -> bool:
        return self._fd is not None

    def holder(self) -> str | None:
        if self._fd is not None:
            return self.name
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # held: by whom is written in the file
                return os.pread(fd, 4096, 0).decode(errors="replace") or None
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def lease_for(url: str, name: str, *, fallback_dir: Path) -> Lease:
    """The lease for the index at ``url``, held under ``name``."""
    if not url.startswith("sqlite"):
        return PostgresLease(url, name)
    database = url.removeprefix("sqlite:///")
    path = Path(database) if database and database != ":memory:" and url.startswith(
        "sqlite:///") else fallback_dir / "procplat.sqlite"
    return FileLease(path.with_name(path.name + ".supervisor"), name)
