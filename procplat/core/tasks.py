"""Tasks from the client's side: submit (validation, dedup, quotas in one transaction),
status, incremental log, listing, cancel, clear."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy.orm import Session

from procplat.core.artifacts import Artifacts
from procplat.core.auth import Principal, require_admin, require_user
from procplat.core.datasets import DatasetRef, Datasets
from procplat.core.paging import clamp_take, int_param
from procplat.core.registry import RegisteredTool, Registry
from procplat.core.supervisor import Supervisor
from procplat.core.views import (
    LOG_TAIL_LINES,
    FeaturesView,
    LogView,
    Page,
    SubmittedView,
    TaskView,
    task_urls,
    task_view,
)
from procplat.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
)
from procplat.index import queries as q
from procplat.index.db import Database, utcnow
from procplat.index.models import Artifact, Task
from procplat.settings import Settings
from procplat.states import TaskState

BULK_DOWNLOAD_TOOLS = {"bulk-download"}
TASK_ID_PREFIX = re.compile(r"^[0-9a-f-]{1,36}$")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_hash(tool_id: str, version: str, params: dict[str, Any]) -> str:
    text = f"{tool_id}|{version}|{canonical_json(params)}"
    return hashlib.sha256(text.encode()).hexdigest()


class Tasks:
    def __init__(
        self, *, settings: Settings, db: Database, registry: Registry, datasets: Datasets,
        artifacts: Artifacts, supervisor: Supervisor,
    ) -> None:
        self.settings = settings
        self.db = db
        self.registry = registry
        self.datasets = datasets
        self.artifacts = artifacts
        self.supervisor = supervisor

    # submit -----------------------------------------------------------------------------------
    async def submit(
        self, caller: Principal | None, org: str, ds: str, body: Any
    ) -> SubmittedView:
        user = require_user(caller)
        ref, task, created = await anyio.to_thread.run_sync(
            self._validate_and_insert, caller, user, org, ds, body
        )
        if created:
            await self.supervisor.start_task(task, ref)
        status_url, result_url = task_urls(ref.org_slug, ref.slug, task.id)
        return SubmittedView(
            task_id=task.id, tool_id=task.tool_id, version=task.version, created=created,
            status_url=status_url, result_url=result_url,
            estimated_output_bytes=task.estimated_output_bytes,
        )

    def _validate_and_insert(
        self, caller: Principal | None, user: Principal, org: str, ds: str, body: Any
    ) -> tuple[DatasetRef, Task, bool]:
        """Everything of a submission that touches the index or the disk, in one thread hop."""
        ref = self.datasets.open(caller, org, ds, "Read")
        tool_id, version, params, force = self._parse_submission(body)
        tool = self.registry.get(tool_id, version)
        if tool.spec.required_access == "Write" and not ref.can_write:
            raise Forbidden(f"{tool.spec.id} needs write access to '{org}/{ds}'")
        if body.get("path") is not None and not tool.spec.takes_path:
            raise BadRequest(f"{tool.spec.id} takes no path; name its inputs in params")
        if tool.spec.takes_path and "path" not in params and body.get("path") is not None:
            params["path"] = body["path"]
        plan = tool.check_params(params, ref.root)
        digest = request_hash(tool.spec.id, tool.spec.version, params)
        task, created = self._insert_or_dedup(
            user, ref, tool, params, digest, force, plan.estimated_output_bytes
        )
        return ref, task, created

    @staticmethod
    def _parse_submission(body: Any) -> tuple[str, str | None, dict[str, Any], bool]:
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        unknown = set(body) - {"toolId", "version", "path", "params", "force"}
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
        tool_id = body.get("toolId")
        if not isinstance(tool_id, str) or not tool_id:
            raise BadRequest("toolId is required and must be a string")
        version = body.get("version")
        if version is not None and not isinstance(version, (str, int)):
            raise BadRequest("version must be a string")
        params = body.get("params")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise BadRequest("params must be an object")
        path = body.get("path")
        if path is not None and not isinstance(path, str):
            raise BadRequest("path must be a string")
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise BadRequest("force must be true or false")
        return tool_id, None if version is None else str(version), dict(params), force

    def _insert_or_dedup(
        self, user: Principal, ref: DatasetRef, tool: RegisteredTool, params: dict[str, Any],
        digest: str, force: bool, estimated: int,
    ) -> tuple[Task, bool]:
        st = self.settings
        now = utcnow()
        dedup = st.dedup_enabled and not force
        since = now - timedelta(hours=st.dedup_lookback_hours)
        if dedup:  # most repeats are found without taking the write lock
            with self.db.read() as s:
                existing = q.find_dedup_match(s, ref.dataset_id, digest, since, now)
            if existing is not None:
                return existing, False
        with self.db.write(serialize=True) as s:
            if dedup:  # again under the lock: a twin may have been inserted meanwhile
                existing = q.find_dedup_match(s, ref.dataset_id, digest, since, now)
                if existing is not None:
                    return existing, False
            if estimated > st.max_estimated_output_bytes_per_submit:
                raise PayloadTooLarge(
                    f"estimated output of {estimated} bytes exceeds the limit of "
                    f"{st.max_estimated_output_bytes_per_submit} bytes"
                )
            self._check_concurrency(s, user, ref, tool)
            task = Task(
                id=str(uuid.uuid4()), dataset_id=ref.dataset_id, org_id=ref.org_id,
                user_id=user.user_id, tool_id=tool.spec.id, version=tool.spec.version,
                params=params, path=params.get("path") if isinstance(params.get("path"), str) else None,
                request_hash=digest, state=TaskState.CREATED, active=True, attempts=1,
                estimated_output_bytes=estimated, created_at=now,
            )
            s.add(task)
        return task, True

    def _check_concurrency(
        self, s: Session, user: Principal, ref: DatasetRef, tool: RegisteredTool
    ) -> None:
        st = self.settings
        counts = q.active_counts(s, org_id=ref.org_id, user_id=user.user_id, tool_id=tool.spec.id)
        limits = [
            (counts.total, st.max_concurrent_tasks_global, "tasks on the service"),
            (counts.org, st.max_concurrent_tasks_per_org, f"tasks in org '{ref.org_slug}'"),
            (counts.user, st.max_queued_tasks_per_user, "queued tasks of yours"),
        ]
        if tool.spec.id in BULK_DOWNLOAD_TOOLS:
            limits.append((counts.user_tool, st.max_concurrent_bulk_downloads_per_user,
                           "bulk downloads of yours"))
        for count, limit, what in limits:
            if count >= limit:
                raise TooManyRequests(f"too many active {what} ({count} of {limit}); retry later")

    # reading ---------------------------------------------------------------------------------
    def _task_in(self, s: Session, ref: DatasetRef, task_id: str) -> Task:
        task = q.get_task(s, task_id)
        if task is None or task.dataset_id != ref.dataset_id:
            raise NotFound(f"task '{task_id}' not found")
        return task

    def _status(self, s: Session, task: Task, org_slug: str, ds_slug: str) -> TaskView:
        tail = [line.line for line in q.kept_log_lines(s, task.id, max(0, task.log_cursor - LOG_TAIL_LINES))]
        return task_view(
            task, org_slug=org_slug, ds_slug=ds_slug, artifact=q.get_artifact(s, task.id),
            log_tail=tail, now=utcnow(), dashboard_link=self.supervisor.dashboard_link,
        )

    def status(self, caller: Principal | None, org: str, ds: str, task_id: str) -> TaskView:
        ref = self.datasets.open(caller, org, ds, "Read")
        with self.db.read() as s:
            return self._status(s, self._task_in(s, ref, task_id), ref.org_slug, ref.slug)

    def log(
        self, caller: Principal | None, org: str, ds: str, task_id: str, since: str | None
    ) -> LogView:
        since_n = max(0, int_param(since, "since", 0))
        ref = self.datasets.open(caller, org, ds, "Read")
        with self.db.read() as s:
            task = self._task_in(s, ref, task_id)
            lines = tuple(line.line for line in q.kept_log_lines(s, task.id, since_n))
            return LogView(cursor=task.log_cursor, lines=lines, truncated_from_tail=task.log_evicted)

    def list(
        self, caller: Principal | None, org: str, ds: str, tool_id: str | None, state: str | None,
        skip: str | None, take: str | None, id_prefix: str | None = None,
    ) -> list[TaskView]:
        """The dataset's tasks, newest first; ``id_prefix`` (the ``taskId`` filter) keeps
        those whose id starts with it, which is how a client resolves a short id."""
        ref = self.datasets.open(caller, org, ds, "Read")
        skip_n, take_n = clamp_take(skip, take)
        self._check_state(state)
        if id_prefix is not None and not TASK_ID_PREFIX.match(id_prefix.lower()):
            raise BadRequest("taskId must be the start of a task id (hex digits and '-')")
        with self.db.read() as s:
            rows, _total = q.list_tasks(
                s, dataset_id=ref.dataset_id, tool_id=tool_id, state=state, skip=skip_n,
                take=take_n, id_prefix=id_prefix.lower() if id_prefix else None,
            )
            return [self._status(s, t, ref.org_slug, ref.slug) for t in rows]

    def list_all(
        self, caller: Principal | None, tool_id: str | None, state: str | None,
        user_id: str | None, skip: str | None, take: str | None,
    ) -> Page[TaskView]:
        require_admin(caller)
        skip_n, take_n = clamp_take(skip, take)
        self._check_state(state)
        uid = int_param(user_id, "userId", 0) if user_id not in (None, "") else None
        with self.db.read() as s:
            rows, total = q.list_tasks(
                s, tool_id=tool_id, state=state, user_id=uid, skip=skip_n, take=take_n
            )
            slugs = self._slugs(s, {t.dataset_id for t in rows})
            items = tuple(self._status(s, t, *slugs[t.dataset_id]) for t in rows)
        return Page(items=items, total=total, skip=skip_n, take=take_n)

    def _slugs(self, s: Session, dataset_ids: set[int]) -> dict[int, tuple[str, str]]:
        refs = (self.datasets.ref_of(s, dataset_id) for dataset_id in dataset_ids)
        return {ref.dataset_id: (ref.org_slug, ref.slug) for ref in refs}

    @staticmethod
    def _check_state(state: str | None) -> None:
        if state and state not in tuple(TaskState):
            raise BadRequest(f"unknown state '{state}' (known: {', '.join(TaskState)})")

    def artifact_file(
        self, caller: Principal | None, org: str, ds: str, task_id: str
    ) -> tuple[Artifact, Path]:
        ref = self.datasets.open(caller, org, ds, "Read")
        with self.db.read() as s:
            task = self._task_in(s, ref, task_id)
            artifact = q.get_artifact(s, task.id)
            if task.state != TaskState.SUCCEEDED or artifact is None:
                raise NotFound(f"task '{task_id}' has no artifact (state {task.state})")
        return artifact, self.artifacts.file_of(artifact, task_id)

    # cancel and clear ------------------------------------------------------------------------
    async def cancel(self, caller: Principal | None, org: str, ds: str, task_id: str) -> TaskView:
        user = require_user(caller)
        ref = await anyio.to_thread.run_sync(self.datasets.open, caller, org, ds, "Read")
        with self.db.read() as s:
            task = self._task_in(s, ref, task_id)
        if not (user.is_admin or task.user_id == user.user_id or ref.org_owner_id == user.user_id):
            raise Forbidden("only the task owner, the org owner or an admin can cancel a task")
        await self.supervisor.cancel(task.id, by=user.username)
        with self.db.read() as s:
            return self._status(s, self._task_in(s, ref, task_id), ref.org_slug, ref.slug)

    async def clear(self, caller: Principal | None, org: str, ds: str, tool_id: str | None) -> int:
        """Remove the dataset's terminal tasks (of one tool) and their artifacts; how many."""
        ref = await anyio.to_thread.run_sync(self.datasets.open, caller, org, ds, "Write")
        with self.db.write() as s:
            ids = q.terminal_task_ids(s, dataset_id=ref.dataset_id, tool_id=tool_id)
            paths = self.artifacts.stored_paths(s, ids)
            q.delete_tasks(s, ids)
        self.artifacts.remove(paths)
        return len(ids)

    def features(self) -> FeaturesView:
        from procplat import __version__

        return FeaturesView(
            task_tools=tuple(sorted({t.spec.id for t in self.registry.all()})),
            version=__version__,
            dedup_enabled=self.settings.dedup_enabled,
            artifact_ttl_hours=self.settings.artifact_ttl_hours,
            dashboard_link=self.supervisor.dashboard_link,
        )
