"""The ``rescan-index`` tool: detect again the type and properties of every indexed entry
(or of the entries of the listed ``types``) with :func:`tools.detect.detect`, the code
uploads use.

Files are checked in small batches spread over the cluster (:func:`tools.runtime.fanout.fan_out`);
a file whose size or modification time differs from the index is hashed again, so a file
replaced behind the index's back gets its new hash (and its build becomes stale). A file
that is missing or that its reader cannot read (``error`` in its properties) is an error:
with ``stopOnError`` the run fails at the first one and the index stays as it was;
otherwise errors are counted (and recorded, like an upload would) and the log ends with
``Rescan: <ok>/<total> ok, <n> errors``. The tool writes no index: it returns one
:class:`EntryUpdate` per entry whose type, properties, size, hash or time changed, and
the service applies them in one transaction. Progress: phase ``scanning``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.contract import (
    EntryUpdate,
    IndexedEntry,
    InvalidParams,
    Plan,
    ToolContext,
    ToolError,
    ToolResult,
    flag_param,
    text_param,
    tool_spec,
)
from tools.detect import ENTRY_TYPES, detect
from tools.runtime import fanout
from tools.runtime.hashing import sha256_file

BATCH_SIZE = 8
MAX_ERRORS_LOGGED = 20
MTIME_TOLERANCE_SECONDS = 0.001

SPEC = tool_spec(
    id="rescan-index",
    title="Detect again the type and properties of the dataset's entries",
    access="Write",
    reads_index=True,
    properties={
        "types": text_param("Comma-separated entry types to rescan, e.g. \"image,geoimage\"; "
                            "default: all.", max_length=500, nullable=False),
        "stopOnError": flag_param("Fail at the first unreadable file, changing nothing; "
                                  "default: count errors and go on."),
    },
)


@dataclass(frozen=True, kw_only=True)
class Scanned:
    """What was found for one entry: the new values, or why it could not be read."""

    path: str
    type: str
    properties: dict[str, Any]
    size: int
    mtime: float
    hash: str | None
    error: str | None = None


def parse_types(text: str | None) -> frozenset[str] | None:
    """The ``types`` parameter as a set (None: all); unknown types are a 400."""
    if text is None or not text.strip():
        return None
    types = frozenset(t.strip().lower() for t in text.split(",") if t.strip())
    unknown = sorted(types - set(ENTRY_TYPES))
    if unknown:
        raise InvalidParams(
            f"unknown entry type(s) {', '.join(unknown)} (known: {', '.join(ENTRY_TYPES)})"
        )
    return types


def validate(params: dict[str, Any], dataset_root: Path) -> Plan:
    parse_types(params.get("types"))
    return Plan()


def scan_batch(root: str, entries: list[IndexedEntry], stop_on_error: bool) -> list[Scanned]:
    """Detect a batch of entries (runs on any worker); stops after an error if asked."""
    found: list[Scanned] = []
    for entry in entries:
        scanned = scan_entry(Path(root), entry)
        found.append(scanned)
        if stop_on_error and scanned.error is not None:
            break
    return found


def scan_entry(root: Path, entry: IndexedEntry) -> Scanned:
    """Detect one entry; hash it again only when its size or time changed."""
    path = root / entry.path
    try:
        stat = path.stat()
    except OSError:
        stat = None
    if stat is None or not path.is_file():
        return Scanned(path=entry.path, type=entry.type, properties=entry.properties,
                       size=entry.size, mtime=entry.mtime, hash=entry.hash,
                       error="the file is missing")
    changed = stat.st_size != entry.size or not math.isclose(
        stat.st_mtime, entry.mtime, abs_tol=MTIME_TOLERANCE_SECONDS
    )
    try:
        digest = sha256_file(path) if changed or entry.hash is None else entry.hash
    except OSError as exc:
        return Scanned(path=entry.path, type=entry.type, properties=entry.properties,
                       size=entry.size, mtime=entry.mtime, hash=entry.hash,
                       error=os.strerror(exc.errno or 5))
    detected = detect(path)
    error = detected.properties.get("error")
    return Scanned(path=entry.path, type=detected.type, properties=detected.properties,
                   size=stat.st_size, mtime=stat.st_mtime, hash=digest,
                   error=str(error) if error is not None else None)


def _update_for(entry: IndexedEntry, scanned: Scanned) -> EntryUpdate | None:
    """The index update an entry needs after a scan, or None when nothing changed."""
    same_time = math.isclose(scanned.mtime, entry.mtime, abs_tol=MTIME_TOLERANCE_SECONDS)
    if (scanned.type, scanned.size, scanned.hash) == (entry.type, entry.size, entry.hash) \
            and same_time and scanned.properties == entry.properties:
        return None
    return EntryUpdate(path=entry.path, expected_hash=entry.hash, type=scanned.type,
                       properties=scanned.properties, size=scanned.size, hash=scanned.hash,
                       mtime=scanned.mtime)


def run(params: dict[str, Any], ctx: ToolContext) -> ToolResult:
    types = parse_types(params.get("types"))
    stop_on_error = bool(params.get("stopOnError"))
    chosen = [e for e in ctx.entries
              if e.type != "directory" and (types is None or e.type in types)]
    reporter = ctx.reporter
    reporter.progress(0.0, "scanning")
    reporter.log(f"Rescanning {len(chosen)} entries"
                 + (f" of type {', '.join(sorted(types))}" if types else ""))
    batches = [chosen[i:i + BATCH_SIZE] for i in range(0, len(chosen), BATCH_SIZE)]
    args = [(str(ctx.dataset_root), batch, stop_on_error) for batch in batches]
    by_path = {e.path: e for e in chosen}
    updates: list[EntryUpdate] = []
    errors: list[Scanned] = []
    done = 0
    for batch in fanout.fan_out(scan_batch, args, reporter=reporter,
                                key_prefix=f"rescan-{ctx.task_id}"):
        for scanned in batch:
            done += 1
            if scanned.error is not None:
                errors.append(scanned)
                if len(errors) <= MAX_ERRORS_LOGGED:
                    reporter.log(f"{scanned.path}: {scanned.error}")
                if stop_on_error:
                    reporter.log(f"Rescan: {done - 1}/{len(chosen)} ok, 1 error (stopped)")
                    raise ToolError(f"rescan stopped at '{scanned.path}': {scanned.error}; "
                                    "nothing was changed")
            update = _update_for(by_path[scanned.path], scanned)
            if update is not None:
                updates.append(update)
        reporter.progress(done / len(chosen), "scanning")
    ok = len(chosen) - len(errors)
    reporter.log(f"Rescan: {ok}/{len(chosen)} ok, {len(errors)} errors")
    return ToolResult(
        entries_updated=updates,
        summary={"ok": ok, "total": len(chosen), "errors": len(errors),
                 "changed": len(updates), "errorPaths": [e.path for e in errors[:100]]},
    )
