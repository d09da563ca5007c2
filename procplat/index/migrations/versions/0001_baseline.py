"""Baseline: the index schema as ``Base.metadata.create_all`` made it before migrations.

Revision ID: 0001
Revises:
Create Date: 2026-12-01

It creates what is missing of this schema: everything on an empty database; on an index made
before migrations (no ``alembic_version``), the parts ``create_all`` never added to an
existing database (``entry_builds``, new before 2f47dfd; ``ix_tasks_active``, new before
1b0ab6b). A table it finds must already have all its columns (no column was ever added before
migrations), else this is not a procplat index it can adopt.

The tables are a frozen copy of the models of that day, on a MetaData of their own: later
model changes go into later revisions, never here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

schema = sa.MetaData()

sa.Table(
    "users", schema,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("username", sa.String(64), nullable=False, unique=True),
    sa.Column("is_admin", sa.Boolean(), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
)
sa.Table(
    "tokens", schema,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("created_at", sa.DateTime(), nullable=False),
)
sa.Table(
    "orgs", schema,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("slug", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("owner_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
)
sa.Table(
    "members", schema,
    sa.Column("org_id", sa.Integer(), sa.ForeignKey("orgs.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"),
              primary_key=True),
)
sa.Table(
    "datasets", schema,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("org_id", sa.Integer(), sa.ForeignKey("orgs.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("slug", sa.String(64), nullable=False),
    sa.Column("visibility", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.UniqueConstraint("org_id", "slug"),
)
sa.Table(
    "entries", schema,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("dataset_id", sa.Integer(), sa.ForeignKey("datasets.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("path", sa.String(1024), nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("size", sa.BigInteger(), nullable=False),
    sa.Column("hash", sa.String(64), nullable=True),
    sa.Column("mtime", sa.DateTime(), nullable=False),
    sa.Column("properties", sa.JSON(), nullable=False),
    sa.UniqueConstraint("dataset_id", "path"),
)
sa.Table(
    "entry_builds", schema,
    sa.Column("dataset_id", sa.Integer(), sa.ForeignKey("datasets.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("path", sa.String(1024), primary_key=True),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("missing", sa.String(64), nullable=True),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("outputs", sa.JSON(), nullable=False),
    sa.Column("updated_at", sa.DateTime(), nullable=False),
)
sa.Table(
    "tasks", schema,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("dataset_id", sa.Integer(), sa.ForeignKey("datasets.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("org_id", sa.Integer(), nullable=False),
    sa.Column("user_id", sa.Integer(), nullable=True),
    sa.Column("tool_id", sa.String(64), nullable=False),
    sa.Column("version", sa.String(16), nullable=False),
    sa.Column("params", sa.JSON(), nullable=False),
    sa.Column("path", sa.String(1024), nullable=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("active", sa.Boolean(), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("estimated_output_bytes", sa.BigInteger(), nullable=False),
    sa.Column("progress_percent", sa.Integer(), nullable=False),
    sa.Column("progress_phase", sa.String(200), nullable=True),
    sa.Column("log_cursor", sa.Integer(), nullable=False),
    sa.Column("log_evicted", sa.Integer(), nullable=False),
    sa.Column("log_bytes", sa.Integer(), nullable=False),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("result", sa.JSON(), nullable=True),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("started_at", sa.DateTime(), nullable=True),
    sa.Column("finished_at", sa.DateTime(), nullable=True),
    sa.Index("ix_tasks_dataset_created", "dataset_id", "created_at"),
    sa.Index("ix_tasks_dedup", "dataset_id", "request_hash"),
    sa.Index("ix_tasks_state", "state"),
    sa.Index("ix_tasks_active", "active"),
)
sa.Table(
    "task_log_lines", schema,
    sa.Column("task_id", sa.String(36), sa.ForeignKey("tasks.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("seq", sa.Integer(), primary_key=True),
    sa.Column("line", sa.Text(), nullable=False),
    sa.Column("nbytes", sa.Integer(), nullable=False),
)
sa.Table(
    "artifacts", schema,
    sa.Column("task_id", sa.String(36), sa.ForeignKey("tasks.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("file_name", sa.String(255), nullable=False),
    sa.Column("storage_path", sa.String(2048), nullable=False),
    sa.Column("size_bytes", sa.BigInteger(), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("expires_at", sa.DateTime(), nullable=False),
    sa.Column("expired", sa.Boolean(), nullable=False),
)


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    for table in schema.sorted_tables:
        if not inspector.has_table(table.name):
            table.create(bind)  # with its indexes
            continue
        found = {c["name"] for c in inspector.get_columns(table.name)}
        lacking = sorted(c.name for c in table.columns if c.name not in found)
        if lacking:
            raise RuntimeError(
                f"table {table.name} has no column {', '.join(lacking)}: "
                "this database is not a procplat index that can be adopted"
            )
        indexes = {i["name"] for i in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(bind)


def downgrade() -> None:
    schema.drop_all(op.get_bind())
