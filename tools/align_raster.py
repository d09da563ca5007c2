"""The ``align-raster`` tool: co-register a raster to a reference with sub-pixel accuracy.

How (all in the source's CRS; the reference is reprojected on the fly when CRSs differ):

1. ``coarse``: both rasters are read once as overviews of at most ``COARSE_SIZE`` pixels over
   their overlap (luma for RGB, values for single bands); a whole-overlap phase correlation
   gives a translation seed, then phase-correlated and Gauss–Newton-refined windows of the
   overview, fitted robustly, give a coarse model (:mod:`tools.align.match`, :mod:`tools.align.registration`).
2. ``matching``: up to ``MAX_WINDOWS_PER_SIDE``² windows of the source at full resolution are
   matched against the reference warped by the current model (seeded by phase correlation,
   refined to ~0.01 px); batches of windows run as Dask tasks on the cluster, each reading only
   its windows from disk. A RANSAC + least-squares fit of the tie points gives the model; for
   ``similarity`` a second pass against the refined model removes what is left.
3. ``writing``: a translation is written losslessly as a new geotransform; a similarity is
   resampled once (cubic) onto a north-up grid. Single-band float rasters are elevations:
   the median vertical offset to the reference is removed and reported. The output is a COG
   (:func:`tools.raster.cog.write_cog`) at ``outputPath``, indexed by the service.

The model is reported as ``tx, ty`` (map units, the shift of the source's centre), ``thetaDeg``
(counter-clockwise) and ``scale`` about the source's centre. Memory is bounded by the overview
and window sizes, not the raster size. Same input, same output, bit for bit: windows are on a
fixed grid and RANSAC uses a fixed seed. In a notebook::

    from tools.align_raster import align
    result = align("drone.tif", "basemap.tif", "drone_aligned.tif", mode="similarity")
"""

from __future__ import annotations

import json
import math
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from affine import Affine

from tools.align import registration as reg
from tools.align.match import Estimate, estimate
from tools.align.pair import Overlap, Pair, make_pair, open_grid, overlap_of
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
from tools.raster import RasterHeader, open_raster, read_header, write_cog
from tools.runtime.fanout import StopSignal
from tools.runtime.safepath import lstat_in_dataset, normalize_relpath, resolve_in_dataset
from tools.runtime.staging import move_into_dataset, staging

MODES = ("similarity", "translation")
MIN_OVERLAP = 0.05
OUTPUT_CHUNK = 2048

SPEC = tool_spec(
    id="align-raster",
    title="Co-register a raster to a reference (sub-pixel translation or similarity)",
    access="Write",
    required=("sourcePath", "referencePath", "outputPath"),
    properties={
        "sourcePath": path_param("The raster to correct."),
        "referencePath": path_param("The raster it must line up with."),
        "outputPath": path_param("Where the aligned COG goes (.tif)."),
        "mode": {"enum": list(MODES), "default": "similarity",
                 "description": "similarity: shift + rotation + scale; translation: shift."},
    },
)


# --- validation ----------------------------------------------------------------------------


def _input(root: Path, params: dict[str, Any], key: str) -> Path:
    path = resolve_in_dataset(root, params[key], what=key)
    if not path.is_file():
        raise InvalidParams(f"{key} '{params[key]}' does not exist")
    return path


def output_relpath(params: dict[str, Any]) -> str:
    rel = normalize_relpath(params["outputPath"], what="outputPath")
    if not rel.lower().endswith((".tif", ".tiff")):
        raise InvalidParams(f"outputPath '{rel}' must end in .tif or .tiff (it is a COG)")
    for key in ("sourcePath", "referencePath"):
        if rel == normalize_relpath(params[key]):
            raise InvalidParams(f"outputPath must differ from {key} ('{rel}')")
    return rel


@dataclass(frozen=True)
class Checked:
    pair: Pair
    overlap: Overlap
    header: RasterHeader
    warning: str | None


def check_inputs(source: Path, reference: Path, *, source_name: str | None = None,
                 reference_name: str | None = None) -> Checked:
    """Both rasters readable and georeferenced, overlapping by at least ``MIN_OVERLAP``.
    The names are how messages call them (the dataset paths; default: the file names)."""
    source_name = source_name or source.name
    reference_name = reference_name or reference.name
    src, header = open_grid(source, what=f"sourcePath '{source_name}'", name=source_name)
    ref, _ = open_grid(reference, what=f"referencePath '{reference_name}'", name=reference_name)
    pair = make_pair(src, ref)
    overlap = overlap_of(pair)
    if overlap.fraction < MIN_OVERLAP:
        raise InvalidParams(
            f"the reference covers {overlap.fraction:.1%} of the source; at least "
            f"{MIN_OVERLAP:.0%} is needed to align them"
        )
    warning = None
    if not pair.reprojection.identity:
        warning = "source and reference CRSs differ: the reference was reprojected to the source CRS"
    return Checked(pair=pair, overlap=overlap, header=header, warning=warning)


def validate(params: dict[str, Any], dataset_root: Path) -> Plan:
    source = _input(dataset_root, params, "sourcePath")
    reference = _input(dataset_root, params, "referencePath")
    rel = output_relpath(params)
    resolve_in_dataset(dataset_root, rel, what="outputPath")
    found = lstat_in_dataset(dataset_root, rel)  # no file or symlink among its folders
    if found is not None and stat.S_ISDIR(found.st_mode):
        raise InvalidParams(f"outputPath '{rel}' is a folder")
    checked = check_inputs(source, reference, source_name=normalize_relpath(params["sourcePath"]),
                           reference_name=normalize_relpath(params["referencePath"]))
    h = checked.header
    itemsize = np.dtype(h.dtype).itemsize
    return Plan(estimated_output_bytes=h.width * h.height * (h.count + 1) * itemsize * 4 // 3)


# --- the result ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AlignResult:
    tx: float
    ty: float
    thetaDeg: float  # the JSON names of the task result
    scale: float
    shiftZ: float | None
    inlierCount: int
    inlierRatio: float
    rmse: float
    confidence: float
    mode: str
    warning: str | None
    centre: tuple[float, float] = (0.0, 0.0)
    pixelSize: float = 1.0
    output: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @property
    def model(self) -> reg.Similarity:
        theta = math.radians(self.thetaDeg)
        return reg.Similarity(a=self.scale * math.cos(theta), b=self.scale * math.sin(theta),
                              tx=self.tx, ty=self.ty, cx=self.centre[0], cy=self.centre[1])


def _confidence(est: Estimate) -> float:
    ratio = est.inliers / max(1, est.windows)
    support = min(1.0, est.inliers / 12)
    precision = 1.0 / (1.0 + est.rmse_px / 0.1)
    return round(max(0.0, min(1.0, ratio ** 0.5 * support * max(est.ncc, 0.0) * (0.5 + 0.5 * precision))), 3)


def _warnings(est: Estimate, checked_warning: str | None, confidence: float) -> str | None:
    notes = [checked_warning] if checked_warning else []
    if est.inliers / max(1, est.windows) < 0.5:
        notes.append(f"only {est.inliers} of {est.windows} windows agree: check the result")
    if confidence < 0.5:
        notes.append(f"low confidence ({confidence:.2f})")
    return "; ".join(notes) or None


# --- writing -------------------------------------------------------------------------------------


def _corrected(da: xr.DataArray, transform: Affine) -> xr.DataArray:
    """``da`` with a new north-up-or-not geotransform (pixels untouched)."""
    height, width = da.sizes["y"], da.sizes["x"]
    xs = reg.apply_affine(transform, np.arange(width) + 0.5, np.full(width, 0.5))[0]
    ys = reg.apply_affine(transform, np.full(height, 0.5), np.arange(height) + 0.5)[1]
    out = da.assign_coords(x=np.asarray(xs), y=np.asarray(ys))
    return out.rio.write_transform(transform)


def _shift_heights(da: xr.DataArray, shift_z: float, nodata: float | None) -> xr.DataArray:
    shifted = da + np.asarray(shift_z, dtype=da.dtype)
    if nodata is not None and not math.isnan(nodata):
        shifted = xr.where(da == nodata, da, shifted, keep_attrs=True)
    return shifted.astype(da.dtype).rio.write_crs(da.rio.crs)


def translated(src: Path, model: reg.Similarity, shift_z: float | None, *,
               name: str | None = None) -> xr.DataArray:
    """The source with the corrected geotransform; pixels copied as they are."""
    da = open_raster(src, name=name)
    new = Affine(*model.coefficients()) @ da.rio.transform()
    out = _corrected(da, new)
    if shift_z:
        out = _shift_heights(out, shift_z, da.rio.nodata)
        out = out.rio.write_transform(new)
    return out


def write_output(src: Path, dst: Path, model: reg.Similarity, shift_z: float | None, *,
                 reporter: Reporter, stop: StopSignal, blocksize: int = 512,
                 name: str | None = None) -> None:
    header = read_header(src, name=name)
    if model.is_translation:
        da = translated(src, model, shift_z, name=header.name)
        write_cog(da, dst, reporter=reporter, stop=stop, nodata=da.rio.nodata, blocksize=blocksize,
                  alpha=header.alpha_band == header.count and header.count > 1,
                  band_descriptions=_descriptions(header))
        return
    from tools.align.resample import resample_similarity

    resampled = resample_similarity(src, model, shift_z=shift_z, chunk=OUTPUT_CHUNK,
                                    name=header.name)
    write_cog(resampled.data, dst, reporter=reporter, stop=stop, nodata=resampled.nodata,
              blocksize=blocksize,
              alpha=resampled.alpha, band_descriptions=resampled.descriptions)


def _descriptions(header: RasterHeader) -> list[str] | None:
    if not any(header.descriptions):
        return None
    return [d or "" for d in header.descriptions]


# --- the tool -----------------------------------------------------------------------------------


def align(source: str | Path, reference: str | Path, dst: str | Path | None, *,
          mode: str = "similarity", reporter: Reporter | None = None,
          stop: StopSignal | None = None, output_label: str | None = None,
          blocksize: int = 512, source_label: str | None = None,
          reference_label: str | None = None) -> AlignResult:
    """Estimate the correction of ``source`` against ``reference`` and, when ``dst`` is given,
    write the corrected source there as a COG. Runs on the current Dask cluster. The result
    is logged as one JSON line (``output``: ``output_label``, else the file name); messages
    name the inputs by their labels (default: the file names)."""
    if mode not in MODES:
        raise InvalidParams(f"unknown mode '{mode}' (known: {', '.join(MODES)})")
    reporter = reporter or PrintReporter()
    stop = stop or StopSignal()
    checked = check_inputs(Path(source), Path(reference), source_name=source_label,
                           reference_name=reference_label)
    pair, overlap = checked.pair, checked.overlap
    if checked.warning:
        reporter.log(f"Warning: {checked.warning}")
    reporter.log(
        f"Aligning {pair.source.name} ({pair.source.width}×{pair.source.height}) to "
        f"{pair.reference.name} ({pair.reference.width}×{pair.reference.height}), mode {mode}, "
        f"overlap {overlap.fraction:.0%}"
    )
    est = estimate(pair, overlap, mode=mode, reporter=reporter, stop=stop)  # type: ignore[arg-type]
    shift_z = None
    if pair.source.elevation and est.heights:
        shift_z = float(np.median(np.concatenate(est.heights)))
        reporter.log(f"Vertical offset to the reference: {shift_z:+.3f} (removed)")
    confidence = _confidence(est)
    pixel = pair.source.pixel_size
    model = est.model
    result = AlignResult(
        tx=model.tx, ty=model.ty, thetaDeg=model.theta_deg if mode == "similarity" else 0.0,
        scale=model.scale if mode == "similarity" else 1.0, shiftZ=shift_z,
        inlierCount=est.inliers, inlierRatio=round(est.inliers / max(1, est.windows), 4),
        rmse=round(est.rmse_px, 4), confidence=confidence, mode=mode,
        warning=_warnings(est, checked.warning, confidence), centre=(model.cx, model.cy),
        pixelSize=pixel, output=output_label or (None if dst is None else Path(dst).name),
    )
    if dst is not None:
        stop.check()
        reporter.check_cancelled()
        write_output(Path(source), Path(dst), model, shift_z, reporter=reporter, stop=stop,
                     blocksize=blocksize, name=pair.source.name)
    reporter.log(json.dumps(result.to_json()))
    return result


def run(params: dict[str, Any], ctx: ToolContext) -> ToolResult:
    root = ctx.dataset_root
    source = _input(root, params, "sourcePath")
    reference = _input(root, params, "referencePath")
    rel = output_relpath(params)
    stop = StopSignal(ctx.cancel_event)
    with staging(root, SPEC.id, ctx.task_id) as folder:
        staged = folder / Path(rel).name
        result = align(source, reference, staged, mode=params.get("mode") or "similarity",
                       reporter=ctx.reporter, stop=stop, output_label=rel,
                       blocksize=ctx.limits.raster_tile_size,
                       source_label=normalize_relpath(params["sourcePath"]),
                       reference_label=normalize_relpath(params["referencePath"]))
        ctx.reporter.check_cancelled()
        stop.check()
        move_into_dataset(staged, root, rel)
    return ToolResult(entries_added=[rel], summary=result.to_json())
