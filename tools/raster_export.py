"""The ``raster-export`` tool: a raster rendered with a spectral index and colormap, a band
composite or a preset, written as a Cloud-Optimized GeoTIFF.

The work is a lazy graph (:mod:`tools.render.graph`): statistics the rendering needs
(percentiles, min/max) are computed first on the cluster (phase ``percentiles``), then
:func:`tools.raster.cog.write_cog` computes and compresses the tiles and overviews in parallel
pieces (phases ``rendering``, ``overviews``, ``assembling``). In a notebook::

    from tools.raster_export import export
    export("ortho.tif", "ndvi.tif", formula="NDVI", colormap="rdylgn")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tools.contract import (
    InvalidParams,
    Plan,
    PrintReporter,
    Reporter,
    ToolContext,
    ToolResult,
    choice_param,
    path_param,
    text_param,
    tool_spec,
)
from tools.raster import DEFAULT_CHUNK_PX, CogInfo, sensors, write_cog
from tools.render import ExportPlan, colormaps, filter_text, plan_export, render, spectral
from tools.runtime import fanout
from tools.runtime.fanout import StopSignal
from tools.runtime.safepath import (
    derived_file_name,
    normalize_relpath,
    output_file_name,
    resolve_in_dataset,
)

RENDER_PARAMS = ("preset", "bands", "formula", "bandFilter", "colormap", "rescale")
# One token per band: a band letter, or a non-letter (e.g. "_") that skips the band.
# Band tokens are capitals (Re the one two-letter token); any other capital or a non-letter
# skips a band (SPEC §4); lower case and spaces are refused, so 'rgbn' is a 400, not 4 skips.
BAND_FILTER_PATTERN = r"^(Re|[^a-z\s])*$"

SPEC = tool_spec(
    id="raster-export",
    title="Export a raster as a COG with an index, colormap, composite or preset",
    access="Read",
    artifact_extension=".tif",
    required=("path",),
    properties={
        "path": path_param("The raster entry to export."),
        "preset": choice_param(sensors.preset_ids(),
                               "A preset: a band composite or an index with its colormap. "
                               "Which a raster has depends on its sensor profile (a 400 lists "
                               "them)."),
        "bands": {
            "description": "1-based bands of a uint8 composite: \"4,3,2\" or [4, 3, 2].",
            "anyOf": [
                {"type": "string", "maxLength": 200},
                {"type": "array", "items": {"type": "integer", "minimum": 1},
                 "minItems": 1, "maxItems": 64},
                {"type": "null"},
            ],
        },
        "formula": choice_param(spectral.FORMULAS, "A spectral index (its bands come from "
                                "bandFilter), rendered with colormap."),
        "bandFilter": text_param("Which band is which, one token per band in band order: R, G, "
                                 "B, N (near infrared), Re (red edge), T (thermal); another "
                                 "capital or a non-letter such as _ skips a band. E.g. RGBN, "
                                 "BGRReN, RGB_. Default: from the sensor profile, band "
                                 "descriptions or colour interpretation, else RGB.",
                                 pattern=BAND_FILTER_PATTERN),
        "colormap": choice_param(colormaps.COLORMAPS, "The colormap of an index."),
        "rescale": text_param("The values mapped to the ends of the colour scale: \"min,max\" "
                              "(e.g. \"-1,1\"), or \"auto\": the 2nd-98th percentile of the "
                              "index's values even when the formula has a range (for indices "
                              "of raw digital numbers, whose NDVI spans e.g. -0.3..0.3). "
                              "Default: the formula's range (-1..1 for NDVI), else the 2nd-98th "
                              "percentile; composites: a byte source as it is, others "
                              "stretched by min/max."),
        "fileName": text_param("Base name of the artifact."),
    },
)


def output_name(params: dict[str, Any]) -> str:
    """The artifact name: ``fileName`` (a base name) or ``<stem>_export.tif``."""
    requested = params.get("fileName")
    if requested is None:
        return derived_file_name(Path(str(params["path"])).stem, "_export.tif")
    return output_file_name(requested, what="fileName", suffixes=(".tif", ".tiff"))


def _render_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: params[k] for k in RENDER_PARAMS if params.get(k) is not None}


def _plan(src: Path, params: dict[str, Any], name: str) -> ExportPlan:
    if not src.is_file():
        raise InvalidParams(f"raster '{name}' does not exist")
    return plan_export(src, _render_params(params), name=name)


def validate(params: dict[str, Any], dataset_root: Path) -> Plan:
    """Everything that can be checked before queueing: the entry, the name, the rendering."""
    src = resolve_in_dataset(dataset_root, params["path"])
    output_name(params)
    plan = _plan(src, params, normalize_relpath(params["path"]))
    return Plan(estimated_output_bytes=plan.estimated_output_bytes)


def export(
    src_path: str | Path,
    dst_path: str | Path,
    *,
    reporter: Reporter | None = None,
    stop: StopSignal | None = None,
    chunk_px: int = DEFAULT_CHUNK_PX,
    blocksize: int = 512,
    name: str | None = None,
    **params: Any,
) -> CogInfo:
    """Render ``src_path`` per ``params`` (formula, bands, preset, bandFilter, colormap,
    rescale) and write the COG to ``dst_path``. Runs on the current Dask cluster.
    ``name`` is how the log and errors name the source (default: its file name)."""
    reporter = reporter or PrintReporter()
    label = name or Path(src_path).name
    plan = _plan(Path(src_path), {"path": str(src_path), **params}, label)
    reporter.log(f"Exporting {label}: {_describe(plan)}")
    if plan.needs_statistics:
        reporter.progress(0.0, "percentiles")

    def statistics(delayed: Any) -> Any:
        result = fanout.compute(delayed, reporter=reporter)
        reporter.progress(1.0, "percentiles")
        return result

    rendered = render(plan, chunk_px=chunk_px, compute=statistics)
    return write_cog(
        rendered, dst_path, reporter=reporter, stop=stop, alpha=plan.output_alpha,
        overview_resampling="average", blocksize=blocksize,
    )


def _describe(plan: ExportPlan) -> str:
    size = f"{plan.width}×{plan.height}"
    if plan.mode == "index":
        what = plan.formula or f"band {plan.value_band}"
        spec = spectral.lookup(plan.formula) if plan.formula else None
        fixed = None if plan.rescale_auto else plan.rescale or (spec.range if spec else None)
        scale = f"{fixed[0]:g},{fixed[1]:g}" if fixed else "2nd-98th percentile"
        described = f"{what} with {plan.colormap} (rescale {scale}), {size}, by {plan.decided_by}"
    else:
        described = (f"bands {','.join(map(str, plan.bands or ()))} ({plan.stretch}), {size}, "
                     f"by {plan.decided_by}")
    return f"{described}; band filter {filter_text(plan.band_filter)} from {plan.band_filter_rule}"


def run(params: dict[str, Any], ctx: ToolContext) -> ToolResult:
    src = resolve_in_dataset(ctx.dataset_root, params["path"])
    dst = ctx.work_dir / output_name(params)
    info = export(src, dst, reporter=ctx.reporter, stop=StopSignal(ctx.cancel_event),
                  blocksize=ctx.limits.raster_tile_size, name=normalize_relpath(params["path"]),
                  **_render_params(params))
    return ToolResult(
        artifact=dst,
        summary={"width": info.width, "height": info.height, "bands": info.count,
                 "overviews": list(info.overviews)},
    )
