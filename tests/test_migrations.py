"""The index schema is made and upgraded by migrations only, on SQLite and PostgreSQL.

- upgrading an empty database to head gives exactly the models' schema (what autogenerate
  compares: tables, columns, types, indexes, constraints), so a model change without a
  revision fails here;
- an index at the baseline, and indexes made by ``create_all`` before migrations existed
  (at df77525: no ``entry_builds``, no ``ix_tasks_active``; at 1d797d9: today's schema), filled
  with a user and token, an org, a dataset with a file, a finished task with its log and
  artifact, are upgraded by a real service on start and keep all of it, over HTTP;
- two processes upgrading one fresh database at the same moment both succeed, one schema;
- a batch revision that copies ``tasks`` on SQLite keeps the task's log lines and artifact
  (foreign keys off while tables are copied);
- ``procplat serve --no-migrate`` refuses to start on an index that is behind, naming
  ``procplat db upgrade``; after it, it starts.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from procplat.core.auth import hash_token
from procplat.core.tasks import request_hash
from procplat.index import migrate
from procplat.index.db import utcnow
from procplat.index.models import Base
from tests.conftest import DATABASES, fresh_database_url
from tests.harness import cli as harness_cli
from tests.harness import settings_for, start_server
from tests.processes import free_port, wait_state

LEGACY_SCHEMAS = Path(__file__).with_name("legacy_schemas")
TOKEN = "a-token-from-before-the-upgrade"
TASK_ID = "0b6f4c0e-7d2a-4a55-9c51-5e3f1d7a0001"
LOG = ["Collecting 1 file", "Archive: 1 file, 5 bytes", "Done"]
ARCHIVE = b"PK\x05\x06" + bytes(18)  # an empty ZIP: the artifact's bytes are what is checked


def database_url(kind: str, data: Path) -> str:
    return fresh_database_url(kind) or f"sqlite:///{(data / 'procplat.sqlite').resolve()}"


def make_schema(url: str, made_by: str) -> None:
    """An index as some earlier code left it: at the baseline revision, or made by
    ``create_all`` at an old commit (the DDL it emitted, kept in tests/legacy_schemas)."""
    if made_by == "baseline":
        migrate.upgrade(url, migrate.BASELINE)
        return
    engine = sa.create_engine(url)
    ddl = (LEGACY_SCHEMAS / f"{made_by}.{engine.dialect.name}.sql").read_text()
    statements = [s for s in ddl.split(";") if s.strip().removeprefix("--").strip() and "CREATE" in s]
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
    engine.dispose()


def fill(url: str, data: Path) -> dict[str, Any]:
    """A user with a token, an org, a private dataset with one file, and a Succeeded
    bulk-download task with three log lines and its artifact on disk, in plain SQL."""
    now = utcnow()
    root = data / "datasets" / "acme" / "survey"
    root.mkdir(parents=True)
    (root / "a.txt").write_bytes(b"hello")
    artifact = data / "artifacts" / TASK_ID / "survey.zip"
    artifact.parent.mkdir(parents=True)
    artifact.write_bytes(ARCHIVE)
    params = {"paths": ["a.txt"]}
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        def insert(table: str, **values: Any) -> None:
            columns = ", ".join(values)
            conn.execute(sa.text(f"INSERT INTO {table} ({columns}) VALUES "
                                 f"({', '.join(':' + c for c in values)})"), values)

        insert("users", id=7, username="surveyor", is_admin=False, created_at=now)
        insert("tokens", token_hash=hash_token(TOKEN), user_id=7, created_at=now)
        insert("orgs", id=3, slug="acme", name="Acme", owner_id=7, created_at=now)
        insert("members", org_id=3, user_id=7)
        insert("datasets", id=5, org_id=3, slug="survey", visibility="private", created_at=now)
        insert("entries", id=11, dataset_id=5, path="a.txt", type="generic", size=5,
               hash=hashlib.sha256(b"hello").hexdigest(), mtime=now, properties="{}")
        insert("tasks", id=TASK_ID, dataset_id=5, org_id=3, user_id=7, tool_id="bulk-download",
               version="1", params='{"paths": ["a.txt"]}', path=None,
               request_hash=request_hash("bulk-download", "1", params), state="Succeeded",
               active=False, attempts=1, estimated_output_bytes=5, progress_percent=100,
               progress_phase="done", log_cursor=len(LOG), log_evicted=0,
               log_bytes=sum(map(len, LOG)), error=None, result=None, created_at=now,
               started_at=now, finished_at=now)
        for seq, line in enumerate(LOG):
            insert("task_log_lines", task_id=TASK_ID, seq=seq, line=line, nbytes=len(line))
        insert("artifacts", task_id=TASK_ID, file_name="survey.zip", storage_path=str(artifact),
               size_bytes=len(ARCHIVE), sha256=hashlib.sha256(ARCHIVE).hexdigest(),
               expires_at=now + timedelta(hours=20), expired=False)
    engine.dispose()
    return params


@pytest.mark.parametrize("kind", DATABASES)
def test_an_empty_database_upgraded_to_head_has_exactly_the_models_schema(
    kind: str, tmp_path: Path
) -> None:
    url = database_url(kind, tmp_path)
    assert migrate.schema_status(url).behind
    result = migrate.upgrade(url)
    assert (result.before, result.after) == (None, migrate.head_revision())
    assert migrate.differences(url) == []
    assert migrate.upgrade(url).changed is False
    status = migrate.schema_status(url)
    assert (status.current, status.behind) == (migrate.head_revision(), False)


def test_a_model_change_without_a_migration_is_a_difference(tmp_path: Path) -> None:
    url = database_url("sqlite", tmp_path)
    migrate.upgrade(url)
    models = sa.MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(models)
    models.tables["tasks"].append_column(sa.Column("priority", sa.Integer(), nullable=True))
    models.tables["tasks"].append_constraint(sa.Index("ix_tasks_priority", "priority"))
    found = migrate.differences(url, models)
    assert [d[0] for d in found] == ["add_column", "add_index"], found


@pytest.mark.parametrize("made_by", ["baseline", "df77525", "1d797d9"])
@pytest.mark.parametrize("kind", DATABASES)
def test_an_older_index_upgrades_on_start_and_keeps_users_tokens_tasks_logs_artifacts(
    kind: str, made_by: str, tmp_path: Path, dask_address: str
) -> None:
    data = tmp_path / "data"
    url = database_url(kind, data)
    data.mkdir()
    make_schema(url, made_by)
    params = fill(url, data)
    assert migrate.schema_status(url).behind is (made_by != "baseline" or
                                                 migrate.BASELINE != migrate.head_revision())

    live = start_server(settings_for(data, dask_address, database_url=url))
    try:
        user = live.client(TOKEN)
        assert user.get("/orgs/acme/ds/survey").json()["canWrite"] is True
        assert live.client(None).get("/orgs/acme/ds/survey").status_code in (401, 404)
        assert user.get("/orgs/acme/ds/survey/files/a.txt").content == b"hello"
        tasks = "/orgs/acme/ds/survey/tasks"
        status = user.get(f"{tasks}/{TASK_ID}").json()
        assert (status["state"], status["progress"]["percent"], status["logCursor"]) == (
            "Succeeded", 100, 3)
        assert user.get(f"{tasks}/{TASK_ID}/log").json()["lines"] == LOG
        result = user.get(f"{tasks}/{TASK_ID}/result")
        assert result.status_code == 200 and result.content == ARCHIVE
        assert status["artifact"]["sha256"] == hashlib.sha256(ARCHIVE).hexdigest()
        # the old task is found by dedup (ix_tasks_dedup), and new work is written beside it
        again = user.post(tasks, json={"toolId": "bulk-download", "params": params})
        assert (again.status_code, again.json()["taskId"]) == (200, TASK_ID), again.text
        new = user.post(tasks, json={"toolId": "bulk-download", "params": params, "force": True})
        assert new.status_code == 202, new.text
        done = wait_state(user, f"{tasks}/{new.json()['taskId']}", ("Succeeded", "Failed"))
        assert done["state"] == "Succeeded", done
        assert [t["taskId"] for t in user.get(tasks).json()][-1] == TASK_ID
    finally:
        live.stop()
    assert migrate.differences(url) == []  # ix_tasks_active and entry_builds were added
    assert migrate.schema_status(url).current == migrate.head_revision()


RACE = """
import sys, time
from procplat.index import migrate
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
print(migrate.upgrade(sys.argv[1]).before)
"""


@pytest.mark.parametrize("kind", DATABASES)
def test_two_processes_upgrading_one_fresh_database_at_once_both_succeed(
    kind: str, tmp_path: Path
) -> None:
    url = database_url(kind, tmp_path)
    start = time.time() + 3  # both are past their imports by then
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", RACE, url, str(start)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outcomes = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    assert [rc for rc, _, _ in outcomes] == [0, 0], outcomes
    assert sorted(out.strip() for _, out, _ in outcomes) == [migrate.head_revision(), "None"]
    assert migrate.differences(url) == []
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).all() == [
            (migrate.head_revision(),)]
    engine.dispose()


COPY_TASKS = '''
import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:  # a copy on SQLite, as for any change ALTER TABLE cannot make there
    recreate = "always" if op.get_bind().dialect.name == "sqlite" else "auto"
    with op.batch_alter_table("tasks", recreate=recreate) as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("priority")
'''


def scripts_with_a_new_revision(folder: Path) -> tuple[Path, str]:
    """The migrations plus one more revision (as the next release would have)."""
    scripts = folder / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    head = migrate.head_revision()
    revision = f"{int(head) + 1:04d}"
    (scripts / "versions" / f"{revision}_copy_tasks.py").write_text(
        COPY_TASKS.format(revision=revision, down=head))
    return scripts, revision


@pytest.mark.parametrize("kind", DATABASES)
def test_a_revision_that_copies_the_tasks_table_keeps_its_log_lines_and_artifacts(
    kind: str, tmp_path: Path
) -> None:
    """On SQLite batch mode copies ``tasks``, drops the old one and renames the copy; with
    foreign keys on, the drop would cascade to the task's log lines and artifact."""
    scripts, revision = scripts_with_a_new_revision(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    url = database_url(kind, data)
    migrate.upgrade(url)
    fill(url, data)
    assert migrate.upgrade(url, script_location=scripts).after == revision
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        count = {table: conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()
                 for table in ("tasks", "task_log_lines", "artifacts", "users", "tokens")}
        assert "priority" in {c["name"] for c in sa.inspect(conn).get_columns("tasks")}
    engine.dispose()
    assert count == {"tasks": 1, "task_log_lines": len(LOG), "artifacts": 1, "users": 1,
                     "tokens": 1}


def procplat(*args: str, data: Path) -> subprocess.CompletedProcess[str]:
    return harness_cli.procplat(*args, timeout=120, env={
        "PROCPLAT_DATA": str(data), "PYTHONPATH": os.pathsep.join(sys.path)})


@pytest.mark.parametrize("made_by", ["nothing", "df77525"])
def test_serve_no_migrate_refuses_a_behind_index_until_db_upgrade_has_run(
    made_by: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    if made_by != "nothing":
        data.mkdir()
        make_schema(database_url("sqlite", data), made_by)
    refused = procplat("serve", "--no-migrate", data=data)
    assert refused.returncode == 1, refused
    assert "procplat db upgrade" in refused.stderr and "is at no revision" in refused.stderr
    assert (data / "procplat.sqlite").exists() is (made_by != "nothing")  # nothing made
    current = procplat("db", "current", data=data)
    assert current.returncode == 1 and "current: none" in current.stdout, current

    upgraded = procplat("db", "upgrade", data=data)
    assert upgraded.returncode == 0, upgraded
    assert upgraded.stdout == f"upgraded the index from nothing to {migrate.head_revision()}\n"
    current = procplat("db", "current", data=data)
    assert current.returncode == 0 and f"current: {migrate.head_revision()}" in current.stdout
    assert migrate.differences(database_url("sqlite", data)) == []


def test_serve_no_migrate_starts_on_an_index_at_head(tmp_path: Path, dask_address: str) -> None:
    data = tmp_path / "data"
    assert procplat("db", "upgrade", data=data).returncode == 0
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCPLAT_")}
    env |= {"PROCPLAT_DATA": str(data), "PYTHONPATH": os.pathsep.join(sys.path),
            "PROCPLAT_ADMIN_TOKEN": "t", "PROCPLAT_DASK_ADDRESS": dask_address}
    serve = subprocess.Popen(
        [sys.executable, "-m", "procplat.cli", "serve", "--no-migrate", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert serve.poll() is None, serve.stderr.read() if serve.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/sys/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "procplat serve --no-migrate did not start"
            time.sleep(0.2)
    finally:
        os.killpg(serve.pid, 9)
        serve.wait(timeout=30)


def test_serve_refuses_an_index_upgraded_by_newer_code(tmp_path: Path) -> None:
    data = tmp_path / "data"
    scripts, revision = scripts_with_a_new_revision(tmp_path)
    migrate.upgrade(database_url("sqlite", data), script_location=scripts)
    for command in (["serve"], ["serve", "--no-migrate"], ["db", "upgrade"]):
        refused = procplat(*command, data=data)
        assert refused.returncode == 1, refused
        assert f"{revision} is newer than this procplat" in refused.stderr, refused.stderr


@pytest.mark.parametrize("command", [["db"], ["db", "upgrade"], ["db", "current"]])
def test_db_commands_have_help_with_an_example(command: list[str]) -> None:
    shown = harness_cli.cli_help(command)
    assert shown.startswith(f"usage: procplat {' '.join(command)}")
    assert "example:\n  procplat " in shown and "PROCPLAT_DATABASE_URL" in shown
