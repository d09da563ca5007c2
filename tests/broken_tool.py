"""A test-only tool with a bug: its run divides by zero. It stands for an unexpected exception
in a real tool (the service has no way to provoke one on purpose)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tools.contract import Plan, ToolContext, ToolResult, ToolSpec

SPEC = ToolSpec(
    id="broken-tool", version="1", title="A tool with a bug", required_access="Read",
    produces_artifact=False, result_extension=None,
    input_schema={"type": "object", "additionalProperties": False, "properties": {}},
)


def validate(params: dict[str, Any], dataset_root: Path) -> Plan:
    return Plan()


def run(params: dict[str, Any], ctx: ToolContext) -> ToolResult:
    ctx.reporter.log("about to divide")
    files = len(list(ctx.work_dir.iterdir()))  # 0: the work folder is empty
    return ToolResult(summary={"ratio": 1 / files})
