"""A test-only tool: archive-extract, with the task's cancel request arriving right after the
move into the dataset (the race a real cancel can lose by a few milliseconds), made certain."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from distributed import Event

from procplat.engine.worker import CANCEL_CHECK_INTERVAL
from tools import archive_extract
from tools.contract import Plan, ToolContext, ToolResult

SPEC = archive_extract.SPEC


def validate(params: dict[str, Any], dataset_root: Path) -> Plan:
    return archive_extract.validate(params, dataset_root)


def run(params: dict[str, Any], ctx: ToolContext) -> ToolResult:
    result = archive_extract.run(params, ctx)
    assert ctx.cancel_event is not None
    Event(ctx.cancel_event).set()
    time.sleep(2 * CANCEL_CHECK_INTERVAL)  # the reporter's cached answer expires
    assert ctx.reporter.cancelled()
    return result
