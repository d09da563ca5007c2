"""The index's read transactions see one snapshot on every database: what a read returns
(e.g. a task's log lines and its cursor) cannot mix two commits."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from procplat.index.db import Database, utcnow
from procplat.index.models import User
from tests.conftest import DATABASES, fresh_database_url


@pytest.mark.parametrize("kind", DATABASES)
def test_a_read_does_not_see_a_write_committed_while_it_runs(kind: str, tmp_path: Path) -> None:
    url = fresh_database_url(kind) or f"sqlite:///{tmp_path / 'index.sqlite'}"
    db = Database(url)
    try:
        with db.write() as s:
            s.add(User(username="first", is_admin=False, created_at=utcnow()))
        with db.read() as s:
            before = s.scalar(select(func.count()).select_from(User))
            with db.write() as w:  # another request commits meanwhile
                w.add(User(username="second", is_admin=False, created_at=utcnow()))
            during = s.scalar(select(func.count()).select_from(User))
        with db.read() as s:
            after = s.scalar(select(func.count()).select_from(User))
    finally:
        db.dispose()
    assert (before, during, after) == (1, 1, 2)

