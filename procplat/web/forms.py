"""Submit forms generated from a tool's JSON schema, and the API's validation errors placed
beside the fields they concern. The form only turns text into JSON values by the schema's
types; whether they are valid is decided by the core's submission (schema and tool checks),
exactly as for the API."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Field", "errors_by_field", "fields_of", "params_from_form"]

Widget = Literal["text", "select", "checkbox", "number", "list"]


@dataclass(frozen=True, kw_only=True)
class Field:
    name: str
    label: str
    widget: Widget
    description: str
    required: bool
    choices: tuple[str, ...] = ()
    suggest_rasters: bool = False  # a path field: the dataset's rasters are offered
    value: str = ""
    error: str | None = None


def _types(schema: Mapping[str, Any]) -> set[str]:
    kinds: set[str] = set()
    declared = schema.get("type")
    if isinstance(declared, str):
        kinds.add(declared)
    elif isinstance(declared, list):
        kinds.update(str(t) for t in declared)
    for option in schema.get("anyOf", []) + schema.get("oneOf", []):
        kinds |= _types(option)
    return kinds - {"null"}


def _widget(schema: Mapping[str, Any]) -> Widget:
    if isinstance(schema.get("enum"), list):
        return "select"
    kinds = _types(schema)
    if kinds == {"boolean"}:
        return "checkbox"
    if kinds and kinds <= {"integer", "number"}:
        return "number"
    if kinds == {"array"}:
        return "list"
    return "text"


def _label(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", " ", name).capitalize()


def _is_path(name: str) -> bool:
    return name == "path" or name.endswith("Path") and not name.startswith("output")


def fields_of(
    schema: Mapping[str, Any], values: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
) -> list[Field]:
    """One field per property of the schema, with the submitted values and their errors."""
    required = set(schema.get("required", []))
    values = values or {}
    errors = errors or {}
    fields = []
    for name, prop in schema.get("properties", {}).items():
        widget = _widget(prop)
        choices = tuple(str(v) for v in prop.get("enum", []) if v is not None)
        default = prop.get("default")
        value = values.get(name, "" if default is None else str(default).lower()
                           if isinstance(default, bool) else str(default))
        fields.append(Field(
            name=name, label=_label(name), widget=widget,
            description=str(prop.get("description", "")), required=name in required,
            choices=choices, suggest_rasters=_is_path(name) and widget == "text",
            value=value, error=errors.get(name),
        ))
    return fields


def _number(text: str) -> int | float | str:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text  # left as text: the schema check reports it beside the field


def params_from_form(schema: Mapping[str, Any], form: Mapping[str, str]) -> dict[str, Any]:
    """The tool parameters a filled-in form stands for: empty fields are left out, numbers,
    booleans and lists are converted by the schema's types."""
    params: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        widget = _widget(prop)
        text = form.get(name, "").strip()
        if widget == "checkbox":
            if text:
                params[name] = True
            continue
        if not text:
            continue
        if widget == "number":
            params[name] = _number(text)
        elif widget == "list":
            params[name] = [part.strip() for part in re.split(r"[\n,]", text) if part.strip()]
        else:
            params[name] = text
    return params


def errors_by_field(
    message: str, details: object, names: list[str]
) -> tuple[dict[str, str], str | None]:
    """The API's errors by field (its schema ``details`` carry the parameter path; a tool's
    own message is placed beside the first parameter it names), and what names no field."""
    found: dict[str, str] = {}
    if isinstance(details, list):
        for item in details:
            if isinstance(item, dict):
                field = str(item.get("path", "")).split("/")[0]
                text = str(item.get("message", ""))
                if field in names:
                    found.setdefault(field, text)
                elif field == "" and "required property" in text:
                    missing = re.search(r"'([^']+)' is a required property", text)
                    if missing and missing.group(1) in names:
                        found.setdefault(missing.group(1), "this field is required")
    if not found:
        for name in names:
            if re.search(rf"\b{re.escape(name)}\b", message):
                found[name] = message
                break
    leftover = None if found else message
    return found, leftover
