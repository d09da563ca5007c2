"""Header properties of point clouds and vector files, for :mod:`tools.detect`.

- point cloud (las/laz, read with ``laspy``; LAZ through its ``lazrs`` backend): ``pointCount``,
  ``lasVersion``, ``pointFormat``, ``crs`` ("EPSG:n", WKT, or None), ``bounds`` ([minx, miny,
  maxx, maxy] in the cloud's CRS), ``zRange`` ([minz, maxz]) and ``footprint`` (the bounds as a
  GeoJSON Polygon in EPSG:4326, or None without a CRS). Only the header is read.
- vector (geojson/gpkg/shp/kml/fgb, read with ``pyogrio``, i.e. GDAL/OGR): ``driver``,
  ``layers`` (all layer names), ``layer`` (the first, described below), ``geometryType``,
  ``featureCount`` (None when counting needs a full scan), ``fields``, ``crs``, ``bounds``
  (None when they need a full scan) and ``footprint``.

Both raise when the file cannot be read; :func:`tools.detect.detect` turns that into an
``error`` property. The libraries are imported on first use only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

_FOOTPRINT_SEGMENTS_PER_EDGE = 8
_FOOTPRINT_DECIMALS = 8


def pointcloud_properties(path: Path) -> dict[str, Any]:
    """Header properties of a LAS/LAZ file; raises when laspy cannot read it."""
    import laspy

    with laspy.open(path) as reader:
        header = reader.header
        crs = _crs_text(header.parse_crs())
        mins = [float(v) for v in header.mins]
        maxs = [float(v) for v in header.maxs]
        bounds = [mins[0], mins[1], maxs[0], maxs[1]]
        return {
            "pointCount": int(header.point_count),
            "lasVersion": str(header.version),
            "pointFormat": int(header.point_format.id),
            "crs": crs,
            "bounds": bounds,
            "zRange": [mins[2], maxs[2]],
            "footprint": bbox_footprint(crs, bounds) if crs else None,
        }


def vector_properties(path: Path) -> dict[str, Any]:
    """Properties of the first layer of a vector file; raises when OGR cannot read it."""
    import pyogrio

    layers = [str(name) for name, _geometry in pyogrio.list_layers(path)]
    if not layers:
        raise ValueError("no layer")
    info = pyogrio.read_info(path, layer=layers[0])
    crs = info.get("crs")
    bounds = _finite_bounds(info.get("total_bounds"))
    count = int(info.get("features", -1))
    return {
        "driver": info.get("driver"),
        "layers": layers,
        "layer": layers[0],
        "geometryType": info.get("geometry_type"),
        "featureCount": count if count >= 0 else None,
        "fields": [str(name) for name in info.get("fields", [])],
        "crs": crs,
        "bounds": bounds,
        "footprint": bbox_footprint(crs, bounds) if crs and bounds else None,
    }


def bbox_footprint(crs: str, bounds: list[float]) -> dict[str, Any] | None:
    """The bounding box, densified, as a counter-clockwise GeoJSON Polygon in EPSG:4326."""
    from rasterio.warp import transform as warp_transform

    minx, miny, maxx, maxy = bounds
    corners = [(minx, miny), (maxx, miny), (maxx, maxy), (minx, maxy), (minx, miny)]
    n = _FOOTPRINT_SEGMENTS_PER_EDGE
    ring = [
        (x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n)
        for (x0, y0), (x1, y1) in zip(corners, corners[1:])
        for i in range(n)
    ] + [corners[0]]
    xs, ys = zip(*ring)
    try:
        lons, lats = warp_transform(crs, "EPSG:4326", list(xs), list(ys))
    except Exception:  # a CRS that cannot reach WGS 84: no footprint
        return None
    if not all(math.isfinite(v) for v in (*lons, *lats)):
        return None
    return {
        "type": "Polygon",
        "coordinates": [[
            [round(lon, _FOOTPRINT_DECIMALS), round(lat, _FOOTPRINT_DECIMALS)]
            for lon, lat in zip(lons, lats)
        ]],
    }


def _crs_text(crs: Any) -> str | None:
    """``EPSG:<code>`` for a pyproj CRS that has one, else its WKT; None without a CRS."""
    if crs is None:
        return None
    try:
        epsg = crs.to_epsg()
    except Exception:  # no EPSG lookup possible: fall back to WKT
        epsg = None
    return f"EPSG:{epsg}" if epsg else str(crs.to_wkt())


def _finite_bounds(bounds: Any) -> list[float] | None:
    if bounds is None or len(bounds) != 4:
        return None
    values = [float(v) for v in bounds]
    return values if all(math.isfinite(v) for v in values) else None
