"""Rendering rasters for raster-export: spectral indexes, colormaps and band composites.

- :mod:`tools.render.graph`: lazy xarray/dask graphs (:func:`index`, :func:`colorize`,
  :func:`composite`) and the service path (:func:`plan_export` before queueing, then
  :func:`render`); band filters, rescale and masking rules are in its docstring;
- :mod:`tools.render.spectral`: the spectral index formulas and their float32 evaluator;
- :mod:`tools.render.colormaps`: the colormaps as 256-entry RGB lookup tables.

Rasters are opened (and their headers read) by :mod:`tools.raster`.
"""

from tools.render import colormaps, spectral
from tools.render.graph import (
    BandFilterChoice,
    ExportPlan,
    auto_band_filter,
    band_values,
    colorize,
    composite,
    filter_text,
    index,
    infer_band_filter,
    parse_band_filter,
    plan_export,
    render,
    rescale_range,
    stretch_ranges,
)

__all__ = [
    "BandFilterChoice",
    "ExportPlan",
    "auto_band_filter",
    "band_values",
    "colorize",
    "colormaps",
    "composite",
    "filter_text",
    "index",
    "infer_band_filter",
    "parse_band_filter",
    "plan_export",
    "render",
    "rescale_range",
    "spectral",
    "stretch_ranges",
]
