"""The ``merge-multispectral`` tool: single-band rasters of one scene (one file per band, as
multispectral cameras write them) stacked, in the order given, into one multi-band COG.

Before anything is queued the inputs are checked against the first one: each must exist,
hold exactly one band (multi-band inputs are refused rather than guessed at) and share its
CRS, width, height, data type, nodata value and pixel grid: pixel size (and rotation terms)
within 1%, origin less than one pixel away. The output takes the first input's grid; band
*i* is input *i*, described by its file stem. The stack is a lazy graph of the inputs
(:func:`tools.raster.open_raster`, chunked alike) written by
:func:`tools.raster.cog.write_cog` (phases ``checking``, then ``rendering``, ``overviews``,
``assembling``).

As a service task the COG is written inside ``.ddb/tmp/`` and renamed onto ``outputPath``
(replacing an existing file) only after a last cancellation check, so a cancelled, failed or
killed run leaves the dataset's files as they were. In a notebook::

    from tools.merge_multispectral import merge
    merge(["IMG_0001_1.tif", "IMG_0001_2.tif", "IMG_0001_3.tif"], "stack.tif")
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array
import xarray as xr

from tools.contract import (
    InvalidParams,
    Plan,
    PrintReporter,
    Reporter,
    ToolContext,
    ToolResult,
    path_param,
    tool_spec,
)
from tools.raster import DEFAULT_CHUNK_PX, CogInfo, RasterHeader, open_raster, write_cog
from tools.runtime.fanout import StopSignal
from tools.runtime.safepath import (
    UnsafePath,
    lstat_in_dataset,
    normalize_relpath,
    resolve_in_dataset,
)
from tools.runtime.staging import move_into_dataset, staging

MIN_INPUTS = 2
MAX_INPUTS = 256
PIXEL_SIZE_TOLERANCE = 0.01  # relative
ORIGIN_EPSILON = 1e-6  # pixels: rounding of map coordinates
OUTPUT_SUFFIXES = (".tif", ".tiff")

SPEC = tool_spec(
    id="merge-multispectral",
    title="Merge single-band rasters into one multi-band COG",
    access="Write",
    required=("paths", "outputPath"),
    properties={
        "paths": {"type": "array", "maxItems": MAX_INPUTS, "items": path_param(),
                  "description": "At least 2 single-band rasters, in band order."},
        "outputPath": path_param("The .tif/.tiff to write (replaced if it exists)."),
    },
)


@dataclass(frozen=True, kw_only=True)
class MergeInputs:
    """Inputs that passed the checks: their lazy arrays (band order) and what they share."""

    labels: tuple[str, ...]
    arrays: tuple[xr.DataArray, ...]
    nodata: float | None
    input_bytes: int

    @property
    def header(self) -> RasterHeader:
        header = self.arrays[0].attrs["raster_header"]
        assert isinstance(header, RasterHeader)
        return header

    @property
    def band_names(self) -> list[str]:
        return [Path(label).stem for label in self.labels]


# --- checks ------------------------------------------------------------------------------


def check_inputs(
    files: Sequence[str | os.PathLike[str]], labels: Sequence[str] | None = None,
    *, chunk_px: int = DEFAULT_CHUNK_PX,
) -> MergeInputs:
    """Open ``files`` lazily and check they can be stacked; raises :class:`InvalidParams`
    naming the first mismatch. ``labels`` name the files in messages (default: the paths as
    given)."""
    paths = [Path(f) for f in files]
    names = list(labels) if labels is not None else [str(f) for f in files]
    if len(paths) < MIN_INPUTS:
        raise InvalidParams(
            f"merge-multispectral needs at least {MIN_INPUTS} input rasters, got {len(paths)}"
        )
    arrays = [_open(path, name, chunk_px) for path, name in zip(paths, names)]
    first, first_name = arrays[0], names[0]
    for da, name in zip(arrays[1:], names[1:]):
        _check_same(first, first_name, da, name)
    return MergeInputs(
        labels=tuple(names),
        arrays=tuple(arrays),
        nodata=first.attrs["raster_header"].nodata(1),
        input_bytes=sum(p.stat().st_size for p in paths),
    )


def _open(path: Path, name: str, chunk_px: int) -> xr.DataArray:
    if not path.is_file():
        raise InvalidParams(f"input '{name}' does not exist")
    da = open_raster(path, chunk_px=chunk_px, name=name)
    count = da.attrs["raster_header"].count
    if count != 1:
        raise InvalidParams(
            f"input '{name}' has {count} bands; merge-multispectral takes single-band rasters"
        )
    return da


def _check_same(first: xr.DataArray, first_name: str, da: xr.DataArray, name: str) -> None:
    a: RasterHeader = first.attrs["raster_header"]
    b: RasterHeader = da.attrs["raster_header"]
    pair = f"'{first_name}' and '{name}'"
    crs_a, crs_b = first.rio.crs, da.rio.crs
    if crs_a != crs_b:
        raise InvalidParams(f"CRS differs between {pair}: {_crs(crs_a)} vs {_crs(crs_b)}")
    if (a.width, a.height) != (b.width, b.height):
        raise InvalidParams(
            f"size (width×height) differs between {pair}: "
            f"{a.width}×{a.height} vs {b.width}×{b.height}"
        )
    if a.dtype != b.dtype:
        raise InvalidParams(f"data type (dtype) differs between {pair}: {a.dtype} vs {b.dtype}")
    if not _same_nodata(a.nodata(1), b.nodata(1)):
        raise InvalidParams(f"nodata differs between {pair}: {a.nodata(1)} vs {b.nodata(1)}")
    ta, tb = first.rio.transform(recalc=False), da.rio.transform(recalc=False)
    scale = max(abs(ta.a), abs(ta.e), abs(ta.b), abs(ta.d))
    for mine, theirs, reference in ((ta.a, tb.a, ta.a), (ta.e, tb.e, ta.e),
                                    (ta.b, tb.b, scale), (ta.d, tb.d, scale)):
        if abs(theirs - mine) > PIXEL_SIZE_TOLERANCE * abs(reference):
            raise InvalidParams(
                f"pixel size differs by more than 1% between {pair}: "
                f"{_pixel(ta)} vs {_pixel(tb)}"
            )
    col, row = ~ta @ (tb.c, tb.f)
    if max(abs(col), abs(row)) > 1 - ORIGIN_EPSILON:  # exactly one pixel off is off
        raise InvalidParams(
            f"pixel grid origin differs by a pixel or more between {pair}: '{name}' starts "
            f"{col:+.2f} columns, {row:+.2f} rows from '{first_name}'"
        )


def _same_nodata(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


def _crs(crs: Any) -> str:
    if crs is None:
        return "none"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else str(crs.to_wkt())[:80]


def _pixel(t: Any) -> str:
    text = f"{abs(t.a):.6g}×{abs(t.e):.6g}"
    return text + (f" (rotation {t.b:.3g}, {t.d:.3g})" if t.b or t.d else "")


# --- the graph and the COG ---------------------------------------------------------------


def stack(inputs: MergeInputs) -> xr.DataArray:
    """The inputs as one lazy ``(band, y, x)`` array on the first input's grid."""
    first = inputs.arrays[0]
    chunks = first.chunks
    assert chunks is not None
    data = dask.array.concatenate(
        [da.data if da.chunks == chunks else da.data.rechunk(chunks) for da in inputs.arrays],
        axis=0,
    )
    coords = {k: v for k, v in first.coords.items() if k != "band"}
    coords["band"] = xr.DataArray(list(range(1, len(inputs.arrays) + 1)), dims="band")
    return xr.DataArray(data, dims=first.dims, coords=coords, name="merged")


def merge(
    paths: Sequence[str | os.PathLike[str]],
    dst: str | os.PathLike[str],
    reporter: Reporter | None = None,
    stop: StopSignal | None = None,
    *,
    labels: Sequence[str] | None = None,
    chunk_px: int = DEFAULT_CHUNK_PX,
    blocksize: int = 512,
) -> CogInfo:
    """Check ``paths`` (single-band rasters, in band order) and write them to ``dst`` as one
    multi-band COG, band descriptions = file stems. Runs on the current Dask cluster.
    Raises :class:`InvalidParams` on a mismatch; nothing is written then or on cancellation."""
    reporter = reporter or PrintReporter()
    reporter.progress(0.0, "checking")
    inputs = check_inputs(paths, labels, chunk_px=chunk_px)
    reporter.progress(1.0, "checking")
    h = inputs.header
    reporter.log(
        f"Merging {len(inputs.labels)} bands ({', '.join(inputs.band_names)}) into "
        f"{Path(dst).name}: {h.width}×{h.height} {h.dtype}, CRS {_crs(inputs.arrays[0].rio.crs)}"
    )
    return write_cog(
        stack(inputs), dst, reporter=reporter, stop=stop, nodata=inputs.nodata,
        band_descriptions=inputs.band_names, overview_resampling="average", blocksize=blocksize,
    )


# --- the service's side ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Paths:
    inputs: list[Path]
    labels: list[str]
    output_rel: str
    output: Path


def _resolve(params: dict[str, Any], root: Path) -> _Paths:
    raw = params.get("paths") or []
    if len(raw) < MIN_INPUTS:
        raise InvalidParams(
            f"merge-multispectral needs at least {MIN_INPUTS} input rasters in 'paths', "
            f"got {len(raw)}"
        )
    labels = [normalize_relpath(p, what="paths entry") for p in raw]
    inputs = [resolve_in_dataset(root, p, what="paths entry") for p in labels]
    for i, label in enumerate(labels):
        if label in labels[:i]:
            raise InvalidParams(f"input '{label}' is listed twice")
    output_rel = normalize_relpath(params["outputPath"], what="outputPath")
    if not output_rel.lower().endswith(OUTPUT_SUFFIXES):
        raise InvalidParams(f"outputPath '{output_rel}' must end in .tif or .tiff")
    output = resolve_in_dataset(root, output_rel, what="outputPath")
    try:
        found = lstat_in_dataset(root, output_rel)  # no symlink or file among its folders
    except UnsafePath as exc:
        raise UnsafePath(f"outputPath '{output_rel}': {exc}") from None
    if found is not None and stat.S_ISDIR(found.st_mode):
        raise InvalidParams(f"outputPath '{output_rel}' is a folder")
    real_output = output.resolve()
    for label, path in zip(labels, inputs):
        if label == output_rel or path.resolve() == real_output:
            raise InvalidParams(f"outputPath '{output_rel}' is one of the inputs ('{label}')")
    return _Paths(inputs=inputs, labels=labels, output_rel=output_rel, output=output)


def validate(params: dict[str, Any], dataset_root: Path) -> Plan:
    """Paths safe, inputs present and stackable, output a new or replaceable .tif."""
    paths = _resolve(params, dataset_root)
    inputs = check_inputs(paths.inputs, paths.labels)
    return Plan(estimated_output_bytes=inputs.input_bytes * 4 // 3)


def run(params: dict[str, Any], ctx: ToolContext) -> ToolResult:
    paths = _resolve(params, ctx.dataset_root)
    stop = StopSignal(ctx.cancel_event)
    # One folder per task: an attempt killed mid-write leaves its files there, not in the
    # dataset, and the next attempt starts by removing them.
    with staging(ctx.dataset_root, SPEC.id, ctx.task_id) as folder:
        info = merge(paths.inputs, folder / paths.output.name, ctx.reporter, stop,
                     labels=paths.labels, blocksize=ctx.limits.raster_tile_size)
        ctx.reporter.check_cancelled()
        stop.check()
        move_into_dataset(info.path, ctx.dataset_root, paths.output_rel)
    ctx.reporter.log(f"Wrote {paths.output_rel}")
    return ToolResult(
        entries_added=[paths.output_rel],
        summary={"path": paths.output_rel, "width": info.width, "height": info.height,
                 "bands": info.count, "dtype": info.dtype, "overviews": list(info.overviews)},
    )
