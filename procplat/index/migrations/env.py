"""Alembic's environment for the index: runs on the connection :mod:`procplat.index.migrate`
hands over (it holds the migration lock and the transaction), with batch mode on SQLite so
that revisions can alter tables, and the models as the target of autogenerate."""

from __future__ import annotations

from alembic import context

from procplat.index.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the index migrations through procplat.index.migrate (procplat db upgrade)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
