"""The tool registry: which tools exist, their versions, schemas and validation.

Adding a tool is one module in ``tools/`` plus one line in :data:`BUILTIN_TOOLS`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from procplat.errors import BadRequest
from tools import (
    align_raster,
    archive_extract,
    build,
    bulk_download,
    merge_multispectral,
    raster_export,
    rescan_index,
)
from tools.contract import InvalidParams, Plan, ToolSpec

BUILTIN_TOOLS: list[ModuleType] = [
    align_raster,
    bulk_download,
    raster_export,
    merge_multispectral,
    build,
    rescan_index,
    archive_extract,
]


def version_key(version: str) -> tuple[int, Any]:
    """Numeric versions compare numerically and sort above non-numeric ones."""
    try:
        return (1, tuple(int(p) for p in version.split(".")))
    except ValueError:
        return (0, version)


@dataclass(frozen=True)
class RegisteredTool:
    spec: ToolSpec
    module: ModuleType
    validator: Draft202012Validator

    @property
    def module_name(self) -> str:
        return self.module.__name__

    def check_params(self, params: dict[str, Any], dataset_root: Path) -> Plan:
        """Schema first (all problems listed), then the tool's own validation."""
        errors = sorted(self.validator.iter_errors(params), key=lambda e: list(e.path))
        if errors:
            details = [
                {"path": "/".join(str(p) for p in e.absolute_path), "message": schema_message(e)}
                for e in errors
            ]
            best = best_match(errors)
            where = "/".join(str(p) for p in best.absolute_path)
            raise BadRequest(
                f"invalid parameters for {self.spec.id}: {where + ': ' if where else ''}"
                f"{schema_message(best)}",
                details=details,
            )
        try:
            plan = self.module.validate(params, dataset_root)
        except InvalidParams as exc:
            raise BadRequest(str(exc)) from None
        assert isinstance(plan, Plan)
        return plan


def schema_message(error: ValidationError) -> str:
    """jsonschema's message, but for a value outside an ``enum`` the allowed values as a
    plain list, and for a ``pattern`` mismatch the parameter's description of its syntax."""
    if error.validator == "enum" and isinstance(error.validator_value, list):
        allowed = [str(v) for v in error.validator_value if v is not None]
        nullable = None in error.validator_value
        return (f"{error.instance!r} is not one of: {', '.join(allowed)}"
                + (" (or null)" if nullable else ""))
    if error.validator == "pattern" and isinstance(error.schema, dict) \
            and error.schema.get("description"):
        return f"{error.instance!r} is not valid: {error.schema['description']}"
    return error.message


class Registry:
    def __init__(self, modules: list[ModuleType] | None = None) -> None:
        self._tools: dict[str, dict[str, RegisteredTool]] = {}
        for module in modules if modules is not None else BUILTIN_TOOLS:
            self.register(module)

    def register(self, module: ModuleType) -> None:
        spec: ToolSpec = module.SPEC
        Draft202012Validator.check_schema(spec.input_schema)
        validator = Draft202012Validator(
            spec.input_schema, format_checker=Draft202012Validator.FORMAT_CHECKER
        )
        self._tools.setdefault(spec.id.lower(), {})[spec.version] = RegisteredTool(
            spec, module, validator
        )

    def get(self, tool_id: str, version: str | None = None) -> RegisteredTool:
        versions = self._tools.get(str(tool_id).lower())
        if not versions:
            raise self._unknown(str(tool_id))
        if version is None or version == "":
            return versions[max(versions, key=version_key)]
        tool = versions.get(str(version))
        if tool is None:
            known = ", ".join(sorted(versions, key=version_key))
            raise BadRequest(f"tool '{tool_id}' has no version '{version}' (known: {known})")
        return tool

    def _unknown(self, tool_id: str) -> BadRequest:
        """400 for a tool id nobody registered: the closest id suggested, the known listed
        (``details`` stays the list of schema errors it is elsewhere, so it is not used)."""
        known = sorted(self._tools)
        close = difflib.get_close_matches(tool_id.lower(), known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return BadRequest(f"unknown tool '{tool_id}' ({hint}known: {', '.join(known)})")

    def all(self) -> list[RegisteredTool]:
        return [t for versions in self._tools.values() for t in versions.values()]
