"""The OpenAPI 3.1 description of every route, built from one table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from procplat import __version__
from procplat.core.registry import Registry

DS = "/orgs/{org}/ds/{ds}"
TASKS = f"{DS}/tasks"
JSON = "application/json"


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    summary: str
    tag: str
    query: tuple[str, ...] = ()
    body: str | None = None  # name of a component schema, or "binary"
    ok: tuple[int, ...] = (200,)
    errors: tuple[int, ...] = (400, 401, 403, 404)
    extra: dict[str, Any] = field(default_factory=dict)


OPERATIONS = [
    Op("post", "/users", "Create a user (admin); returns its API token", "platform",
       body="NewUser", ok=(201,), errors=(400, 401, 403, 409)),
    Op("post", "/orgs", "Create an org owned by the caller", "platform", body="NewOrg",
       ok=(201,), errors=(400, 401, 409)),
    Op("get", "/orgs", "The orgs the caller may see, by slug, paged ({items, total, skip, take})",
       "platform", query=("skip", "take"), errors=(400, 401)),
    Op("post", "/orgs/{org}/members", "Add a member to an org (owner or admin)", "platform",
       body="NewMember", ok=(201,)),
    Op("post", "/orgs/{org}/ds", "Create a dataset", "platform", body="NewDataset",
       ok=(201,), errors=(400, 401, 403, 404, 409)),
    Op("get", "/orgs/{org}/ds", "The org's datasets the caller may see, by slug, paged "
       "({items, total, skip, take})", "platform", query=("skip", "take"), errors=(400, 401, 404)),
    Op("get", DS, "Dataset information", "platform"),
    Op("put", f"{DS}/files/{{path}}", "Upload a file (raw body, streamed to disk)", "files",
       body="binary", ok=(200, 201), errors=(400, 401, 403, 404, 409, 413, 507)),
    Op("get", f"{DS}/files/{{path}}", "Download a file (Range, ETag, If-None-Match, If-Range)",
       "files", ok=(200, 206, 304), errors=(400, 401, 404, 416)),
    Op("head", f"{DS}/files/{{path}}", "File headers", "files", ok=(200, 206, 304)),
    Op("delete", f"{DS}/files/{{path}}", "Delete a file or folder", "files", ok=(204,)),
    Op("get", f"{DS}/entries", "List indexed entries with their type and properties", "files",
       query=("path", "type", "recursive")),
    Op("get", f"{DS}/entries/{{path}}", "One indexed entry with its properties and build state",
       "files"),
    Op("get", f"{DS}/download", "Download a selection as a ZIP streamed while it is built",
       "files", query=("path",), errors=(400, 401, 404, 413)),
    Op("get", f"{TASKS}/tools", "List the tools with their parameter schemas", "tasks"),
    Op("post", TASKS, "Submit a task", "tasks", body="Submission", ok=(200, 202),
       errors=(400, 401, 403, 404, 413, 429)),
    Op("get", TASKS, "List the dataset's tasks, newest first (taskId: those whose id starts "
       "with it)", "tasks", query=("toolId", "state", "taskId", "skip", "take")),
    Op("get", f"{TASKS}/{{task}}", "Task status (link=true: the artifact carries a signed link)",
       "tasks", query=("link",)),
    Op("delete", f"{TASKS}/{{task}}", "Cancel an active task or mark a concluded one Deleted",
       "tasks"),
    Op("get", f"{TASKS}/{{task}}/log", "Log lines beyond a cursor", "tasks", query=("since",)),
    Op("get", f"{TASKS}/{{task}}/result", "Download the artifact (Range, ETag = sha256)",
       "tasks", ok=(200, 206, 304), errors=(400, 401, 404, 410, 416)),
    Op("head", f"{TASKS}/{{task}}/result", "Artifact headers", "tasks", ok=(200, 206, 304),
       errors=(404, 410, 416)),
    Op("post", f"{TASKS}/clear", "Remove the dataset's concluded tasks and their artifacts",
       "tasks", query=("toolId",)),
    Op("post", f"{TASKS}/{{task}}/result/link", "A signed link to the artifact, opened without "
       "a token until it expires", "links", body="LinkRequest", ok=(201,),
       errors=(400, 401, 404, 410)),
    Op("post", f"{DS}/files/{{path}}/link", "A signed link to the file's current version",
       "links", body="LinkRequest", ok=(201,)),
    Op("get", "/links/{token}/{name}", "Open a signed link (Range, ETag, HEAD as on the "
       "authenticated route; 403 tampered, 410 expired or revoked)", "links",
       ok=(200, 206, 304), errors=(403, 410, 416)),
    Op("head", "/links/{token}/{name}", "Headers of a signed link", "links",
       ok=(200, 206, 304), errors=(403, 410, 416)),
    Op("get", "/sys/health", "Index and Dask scheduler health, with the dashboard link", "system",
       ok=(200, 503), errors=()),
    Op("get", "/sys/features", "Task states, tools and version", "system", errors=()),
    Op("get", "/sys/tasks", "Tasks of every dataset (admin)", "system",
       query=("toolId", "state", "userId", "skip", "take"), errors=(400, 401, 403)),
    Op("get", "/openapi.json", "This document", "system", errors=()),
]

QUERY_SCHEMAS: dict[str, dict[str, Any]] = {
    "skip": {"type": "integer", "minimum": 0, "default": 0},
    "take": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
    "since": {"type": "integer", "minimum": 0, "default": 0},
    "recursive": {"type": "boolean", "default": False},
    "userId": {"type": "integer"},
    "link": {"type": "boolean", "default": False},
}

STATUS_TEXT = {
    200: "OK", 201: "Created", 202: "Accepted", 204: "No content", 206: "Partial content",
    304: "Not modified", 400: "Bad request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not found", 409: "Conflict", 410: "Gone", 413: "Too large", 416: "Range not satisfiable",
    429: "Too many requests (see Retry-After)", 503: "Unavailable",
    507: "Insufficient storage (the disk is full)",
}


def _components(registry: Registry) -> dict[str, Any]:
    params = [
        {"title": f"{t.spec.id} {t.spec.version}", **t.spec.input_schema} for t in registry.all()
    ]
    return {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"],
                      "properties": {"error": {"type": "string"}, "details": {}}},
            "NewUser": {"type": "object", "required": ["username"], "properties": {
                "username": {"type": "string"}, "admin": {"type": "boolean"}}},
            "NewOrg": {"type": "object", "required": ["slug"], "properties": {
                "slug": {"type": "string"}, "name": {"type": "string"}}},
            "NewMember": {"type": "object", "required": ["username"], "properties": {
                "username": {"type": "string"}}},
            "NewDataset": {"type": "object", "required": ["slug"], "properties": {
                "slug": {"type": "string"},
                "visibility": {"enum": ["private", "public"], "default": "private"}}},
            "LinkRequest": {"type": "object", "properties": {
                "expiresIn": {"type": "number", "exclusiveMinimum": 0,
                              "description": "Seconds; default and bound: "
                                             "LINK_MAX_EXPIRY_SECONDS"}}},
            "Submission": {"type": "object", "required": ["toolId"], "properties": {
                "toolId": {"type": "string"}, "version": {"type": "string"},
                "path": {"type": "string"}, "force": {"type": "boolean", "default": False},
                "params": {"anyOf": params}}},
        },
    }


def _operation(op: Op) -> dict[str, Any]:
    names = [part[1:-1] for part in op.path.split("/") if part.startswith("{")]
    parameters = [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names
    ] + [
        {"name": n, "in": "query", "required": False,
         "schema": QUERY_SCHEMAS.get(n, {"type": "string"})}
        for n in op.query
    ]
    responses: dict[str, Any] = {str(code): {"description": STATUS_TEXT[code]} for code in op.ok}
    for code in op.errors:
        responses[str(code)] = {
            "description": STATUS_TEXT[code],
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    operation: dict[str, Any] = {
        "summary": op.summary, "tags": [op.tag], "parameters": parameters,
        "responses": responses, "security": [{"bearer": []}, {}],
    }
    if op.body == "binary":
        operation["requestBody"] = {"required": True, "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    elif op.body:
        operation["requestBody"] = {"required": True, "content": {
            JSON: {"schema": {"$ref": f"#/components/schemas/{op.body}"}}}}
    return operation


def openapi_document(registry: Registry) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "procplat", "version": __version__,
                 "description": "Asynchronous processing of geospatial datasets on Dask."},
        "paths": paths,
        "components": _components(registry),
    }
