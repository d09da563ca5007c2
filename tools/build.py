"""The ``build`` tool: derivatives of entries under ``.ddb/build/<entry hash>/``.

- georaster → ``cog.tif``, a Cloud-Optimized GeoTIFF written on the cluster by
  :func:`tools.raster.cog.write_cog` from :func:`tools.raster.open_raster`;
- pointcloud → ``cloud.copc.laz`` (COPC) with ``pdal translate``;
- vector → ``tiles.pmtiles`` (vector tiles) with ``ogr2ogr -f PMTiles`` (GDAL ≥ 3.8).

When a program is not installed the entry's build is ``pending`` with the program named,
and the next build without a path tries again. Which entries to build comes from the index
(the run is given its entries, :attr:`ToolContext.entries`): the one at ``path`` or below
it, else every entry whose build is missing, stale (the entry's hash changed), pending or
failed; ``force`` rebuilds built ones too. Outputs are named after the content hash, so
an output already in place (a complete file: every output is written in a staging folder
``.tmp-<task id>`` beside it and renamed into place) is reused rather than computed again.
A cancelled run removes its staging folder; a killed one leaves it to its own retry (same
task id) or to the next build of that entry once it is ``STALE_TEMP_SECONDS`` old. The tool writes no index: it
returns one :class:`EntryUpdate` per entry it handled and the service records them.
Progress: phase ``building``, the fraction of the selected entries done.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.contract import (
    BuildState,
    Cancelled,
    EntryUpdate,
    IndexedEntry,
    InvalidParams,
    Plan,
    Reporter,
    ToolContext,
    ToolError,
    ToolResult,
    flag_param,
    path_param,
    tool_spec,
)
from tools.runtime.safepath import SERVICE_FOLDER, normalize_relpath, resolve_in_dataset

BUILDABLE_TYPES = frozenset(("georaster", "pointcloud", "vector"))
RASTER_SUFFIXES = (".tif", ".tiff")
BUILD_FOLDER = f"{SERVICE_FOLDER}/build"
STALE_TEMP_SECONDS = 600  # temporary files older than this were left by a killed run
PROGRAM_POLL_SECONDS = 0.2
_ERROR_MAX_CHARS = 300

SPEC = tool_spec(
    id="build",
    title="Build derivatives of entries (COG, COPC, vector tiles) under .ddb/build",
    access="Write",
    reads_index=True,
    properties={
        "path": path_param("An entry or folder to build; default: every entry whose build is "
                           "missing, stale or pending."),
        "force": flag_param("Rebuild entries already built."),
    },
)


@dataclass(frozen=True, kw_only=True)
class _Recipe:
    """How one entry type is built: the output name and the program it needs (if any)."""

    output: str
    program: str | None


RECIPES = {
    "georaster": _Recipe(output="cog.tif", program=None),
    "pointcloud": _Recipe(output="cloud.copc.laz", program="pdal"),
    "vector": _Recipe(output="tiles.pmtiles", program="ogr2ogr"),
}


def validate(params: dict[str, Any], dataset_root: Path) -> Plan:
    """The path, when given, must be a safe path to an existing file or folder; a GeoTIFF
    there must not be truncated (a file GDAL cannot open is left to the index's type)."""
    path = params.get("path")
    if path is None:
        return Plan()
    found = resolve_in_dataset(dataset_root, path)
    if not found.exists():
        raise InvalidParams(f"entry '{path}' does not exist")
    if found.is_file() and found.suffix.lower() in RASTER_SUFFIXES:
        from tools.raster import RasterDamaged, read_header

        try:
            read_header(found, name=normalize_relpath(path))
        except RasterDamaged:
            raise
        except InvalidParams:
            pass  # not a raster GDAL reads: the index did not type it georaster
    return Plan()


def needs_build(entry: IndexedEntry) -> bool:
    """Whether an entry's build is missing, stale, pending or failed."""
    build = entry.build
    return build is None or build.hash != entry.hash or build.state != "built"


def select(entries: tuple[IndexedEntry, ...], path: str | None, *, force: bool) -> list[IndexedEntry]:
    """The buildable entries at or below ``path`` (all without) that need a build."""
    prefix = normalize_relpath(path) if path else None
    chosen = [
        e for e in entries
        if e.type in BUILDABLE_TYPES and e.hash
        and (prefix is None or e.path == prefix or e.path.startswith(prefix + "/"))
    ]
    return [e for e in chosen if force or needs_build(e)]


def run(params: dict[str, Any], ctx: ToolContext) -> ToolResult:
    force = bool(params.get("force"))
    todo = select(ctx.entries, params.get("path"), force=force)
    reporter = ctx.reporter
    reporter.progress(0.0, "building")
    reporter.log(f"Building {len(todo)} entr{'y' if len(todo) == 1 else 'ies'}"
                 + (" (forced)" if force else ""))
    updates: list[EntryUpdate] = []
    counts = {"built": 0, "pending": 0, "failed": 0}
    for i, entry in enumerate(todo):
        reporter.check_cancelled()
        scaled = _ScaledReporter(reporter, start=i / len(todo), span=1 / len(todo))
        state = build_entry(entry, ctx.dataset_root, reporter=scaled, task_id=ctx.task_id,
                            cancel_event=ctx.cancel_event, force=force,
                            blocksize=ctx.limits.raster_tile_size)
        counts[state.state] += 1
        updates.append(EntryUpdate(path=entry.path, expected_hash=entry.hash, build=state))
        reporter.progress((i + 1) / len(todo), "building")
    reporter.progress(1.0, "building")
    missing = sorted({u.build.missing for u in updates if u.build and u.build.missing})
    reporter.log(
        f"Build: {counts['built']} built, {counts['pending']} pending"
        + (f" (missing {', '.join(missing)})" if missing else "")
        + f", {counts['failed']} failed"
    )
    return ToolResult(
        entries_updated=updates,
        summary={**counts, "missing": missing,
                 "entries": {u.path: u.build.state for u in updates if u.build}},
    )


def build_entry(
    entry: IndexedEntry, dataset_root: Path, *, reporter: Reporter, task_id: str = "local",
    cancel_event: str | None = None, force: bool = False, blocksize: int = 512,
) -> BuildState:
    """Build one entry; a missing program gives ``pending``, an unreadable file ``failed``.
    Raises :class:`Cancelled` (leaving no temporary file) when the run is cancelled."""
    assert entry.hash is not None
    recipe = RECIPES[entry.type]
    if recipe.program is not None and shutil.which(recipe.program) is None:
        reporter.log(f"{entry.path}: pending, '{recipe.program}' is not installed")
        return BuildState(state="pending", hash=entry.hash, missing=recipe.program)
    out_dir = dataset_root / BUILD_FOLDER / entry.hash
    output = f"{BUILD_FOLDER}/{entry.hash}/{recipe.output}"
    dst = out_dir / recipe.output
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out_dir)
    if dst.is_file() and not force:
        reporter.log(f"{entry.path}: {output} is already in place")
        return BuildState(state="built", hash=entry.hash, outputs=(output,))
    src = dataset_root / entry.path
    staging = out_dir / f".tmp-{task_id}"
    shutil.rmtree(staging, ignore_errors=True)  # left by this task's killed attempt
    staging.mkdir()
    staged = staging / recipe.output
    try:
        if entry.type == "georaster":
            _build_cog(src, staged, reporter, cancel_event, blocksize, entry.path)
        elif entry.type == "pointcloud":
            _build_with(["pdal", "translate", "-w", "writers.copc", str(src)], staged, reporter)
        else:
            _build_with(["ogr2ogr", "-f", "PMTiles", "-dsco", "MAXZOOM=14"], staged, reporter,
                        source_last=str(src))
        staged.replace(dst)
    except Cancelled:
        raise
    except Exception as exc:  # the entry's build failed; others go on
        told = str(exc) if isinstance(exc, ToolError) else f"{type(exc).__name__}: {exc}"
        message = _short(told.replace(str(dataset_root), ""))
        reporter.log(f"{entry.path}: build failed: {message}")
        return BuildState(state="failed", hash=entry.hash, error=message)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    reporter.log(f"{entry.path}: built {output}")
    return BuildState(state="built", hash=entry.hash, outputs=(output,))


def _build_cog(src: Path, dst: Path, reporter: Reporter, cancel_event: str | None,
               blocksize: int, name: str) -> None:
    from tools.raster import open_raster, write_cog
    from tools.runtime.fanout import StopSignal

    da = open_raster(src, name=name)
    header = da.attrs["raster_header"]
    names = header.descriptions if any(header.descriptions) else None
    write_cog(
        da, dst, reporter=reporter, stop=StopSignal(cancel_event), blocksize=blocksize,
        alpha=header.alpha_band is not None and header.alpha_band == header.count,
        band_descriptions=[n or "" for n in names] if names else None,
    )


def _build_with(
    command: list[str], dst: Path, reporter: Reporter, *, source_last: str | None = None
) -> None:
    """Run a program writing ``dst`` (in the staging folder); it is killed when the run is
    cancelled."""
    args = [*command, str(dst)] if source_last is None else [*command, str(dst), source_last]
    reporter.progress(None, "building")
    _run_program(args, reporter)
    if not dst.is_file():
        raise RuntimeError(f"{command[0]} wrote no output")


def _run_program(args: list[str], reporter: Reporter) -> None:
    with subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as process:
        try:
            while process.poll() is None:
                reporter.check_cancelled()
                time.sleep(PROGRAM_POLL_SECONDS)
        except BaseException:
            process.kill()
            process.wait()
            raise
        stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if process.returncode != 0:
        raise RuntimeError(f"{args[0]} exited with {process.returncode}: {stderr.strip()}")


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Remove staging folders that killed runs left behind long ago."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    for leftover in out_dir.glob(".tmp-*"):
        try:
            if leftover.stat().st_mtime < cutoff:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def _short(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= _ERROR_MAX_CHARS else message[: _ERROR_MAX_CHARS - 1] + "…"


class _ScaledReporter:
    """Maps one entry's progress (any phases) into its share of the ``building`` phase."""

    # write_cog's phases and the part of an entry's work each stands for
    _PHASES = {"rendering": (0.0, 0.8), "overviews": (0.8, 0.95), "assembling": (0.95, 1.0)}

    def __init__(self, reporter: Reporter, *, start: float, span: float) -> None:
        self._reporter = reporter
        self._start = start
        self._span = span
        self._phase: str | None = None

    def progress(self, fraction: float | None, phase: str | None = None) -> None:
        if phase is not None:
            self._phase = phase
        low, high = self._PHASES.get(self._phase or "", (0.0, 1.0))
        if fraction is None:
            self._reporter.progress(None, "building")
            return
        part = low + (high - low) * max(0.0, min(1.0, fraction))
        self._reporter.progress(self._start + self._span * part, "building")

    def log(self, message: str) -> None:
        self._reporter.log(message)

    def cancelled(self) -> bool:
        return self._reporter.cancelled()

    def check_cancelled(self) -> None:
        self._reporter.check_cancelled()
