"""The states of a task (SPEC §2), defined once for every layer: the index's queries, the
supervisor's state machine, the views the API renders, ``/sys/features`` and the client.

    Created → Enqueued → Scheduled → Processing → Succeeded | Failed | Deleted

A :class:`TaskState` is a ``str``: it is stored in the index's ``state`` column and rendered
in JSON as its value. This module imports nothing of the service, so the client and the
index layer can both use it.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ACTIVE", "TERMINAL", "TaskState"]


class TaskState(StrEnum):
    CREATED = "Created"  # the row is written
    ENQUEUED = "Enqueued"  # handed to the Dask scheduler
    SCHEDULED = "Scheduled"  # waiting for a retry back-off or a free slot
    PROCESSING = "Processing"  # running on a worker
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    DELETED = "Deleted"  # cancelled, or deleted after it ended

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


ACTIVE: tuple[TaskState, ...] = (
    TaskState.CREATED, TaskState.ENQUEUED, TaskState.SCHEDULED, TaskState.PROCESSING,
)
TERMINAL: tuple[TaskState, ...] = (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.DELETED)
