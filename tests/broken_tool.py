"""A test-only tool with a bug: it divides by zero, in its run or (``inPiece``) in a piece it
fans out over the cluster. It stands for an unexpected exception in a real tool (the service
has no way to provoke one on purpose)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tools.contract import Plan, ToolContext, ToolResult, ToolSpec
from tools.runtime.fanout import fan_out

SPEC = ToolSpec(
    id="broken-tool", version="1", title="A tool with a bug", required_access="Read",
    produces_artifact=False, result_extension=None,
    input_schema={"type": "object", "additionalProperties": False,
                  "properties": {"inPiece": {"type": "boolean"}}},
)


def validate(params: dict[str, Any], dataset_root: Path) -> Plan:
    return Plan()


def ratio(files: int) -> float:
    return 1 / files


def run(params: dict[str, Any], ctx: ToolContext) -> ToolResult:
    ctx.reporter.log("about to divide")
    files = len(list(ctx.work_dir.iterdir()))  # 0: the work folder is empty
    if params.get("inPiece"):
        (value,) = fan_out(ratio, [(files,)], reporter=ctx.reporter,
                           key_prefix=f"broken-{ctx.task_id}")
    else:
        value = 1 / files
    return ToolResult(summary={"ratio": value})
