"""The 17 colormaps of raster-export as 256-entry uint8 RGB lookup tables.

:func:`lut` returns a read-only ``(256, 3)`` uint8 array; :data:`COLORMAPS` holds the
definitions. Tables are built by these rules, in float32 arithmetic like the reference
engine (DroneDB's ``vegetation.cpp``) so that entries match it exactly:

- **linear** (control points ``(t, r, g, b)``): for entry ``i``, ``t = float32(i) / 255``;
  the segment is the first pair of stops with ``t0 <= t <= t1``;
  ``frac = clamp((t - t0) / (t1 - t0), 0, 1)`` (0 when ``t1 == t0``); each channel is
  ``int(lo + frac * (hi - lo))``, truncated (all float32; stop positions are float32 too);
- **discrete** (steps ``(lo, hi, rgb)``): entry ``i`` takes the colour of the step with
  ``lo <= t < hi`` (the last step includes 1.0);
- **grayscale**: entry ``i`` is ``(i, i, i)``; **greys**: ``(255 - i, 255 - i, 255 - i)``.

Float32 matters: computed in float64, 43 entries of 12 tables differ by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np

DEFAULT_COLORMAP = "rdylgn"

Stop = tuple[float, int, int, int]
Step = tuple[float, float, tuple[int, int, int]]


@dataclass(frozen=True, kw_only=True)
class Colormap:
    """A colormap definition: linear stops, discrete steps, or a gray ramp."""

    id: str
    name: str
    kind: Literal["linear", "discrete", "grayscale", "greys"]
    stops: tuple[Stop, ...] = ()
    steps: tuple[Step, ...] = ()


def _linear(id: str, name: str, *stops: Stop) -> Colormap:
    return Colormap(id=id, name=name, kind="linear", stops=stops)


COLORMAPS: dict[str, Colormap] = {
    c.id: c
    for c in (
        _linear("rdylgn", "Red-Yellow-Green", (0.0, 215, 48, 39), (0.25, 253, 174, 97),
                (0.5, 254, 224, 139), (0.75, 166, 217, 106), (1.0, 26, 152, 80)),
        Colormap(id="discrete_ndvi", name="Contrast NDVI", kind="discrete", steps=(
            (0.0, 0.2, (139, 0, 0)), (0.2, 0.4, (255, 69, 0)), (0.4, 0.6, (255, 215, 0)),
            (0.6, 0.8, (50, 205, 50)), (0.8, 1.0, (0, 100, 0)))),
        _linear("spectral", "Spectral", (0.0, 158, 1, 66), (0.25, 253, 174, 97),
                (0.5, 255, 255, 191), (0.75, 102, 194, 165), (1.0, 94, 79, 162)),
        _linear("viridis", "Viridis", (0.0, 68, 1, 84), (0.25, 59, 82, 139),
                (0.5, 33, 144, 140), (0.75, 93, 201, 99), (1.0, 253, 231, 37)),
        _linear("plasma", "Plasma", (0.0, 13, 8, 135), (0.25, 126, 3, 168),
                (0.5, 204, 71, 120), (0.75, 248, 149, 64), (1.0, 240, 249, 33)),
        _linear("inferno", "Inferno", (0.0, 0, 0, 4), (0.25, 87, 16, 110),
                (0.5, 188, 55, 84), (0.75, 249, 142, 9), (1.0, 252, 255, 164)),
        _linear("magma", "Magma", (0.0, 0, 0, 4), (0.25, 81, 18, 124),
                (0.5, 183, 55, 121), (0.75, 252, 137, 97), (1.0, 252, 253, 191)),
        Colormap(id="grayscale", name="Grayscale", kind="grayscale"),
        _linear("ironbow", "Ironbow", (0.0, 0, 0, 0), (0.2, 87, 15, 106), (0.4, 189, 55, 84),
                (0.6, 249, 120, 8), (0.8, 255, 227, 68), (1.0, 255, 255, 255)),
        _linear("rainbow", "Rainbow", (0.0, 150, 0, 90), (0.17, 0, 0, 200),
                (0.33, 0, 150, 255), (0.5, 0, 255, 0), (0.67, 255, 255, 0),
                (0.83, 255, 100, 0), (1.0, 200, 0, 0)),
        _linear("bugn", "Blue-Green", (0.0, 247, 252, 253), (0.25, 178, 226, 226),
                (0.5, 102, 194, 164), (0.75, 35, 139, 69), (1.0, 0, 68, 27)),
        _linear("whitehot", "White Hot", (0.0, 0, 0, 0), (1.0, 255, 255, 255)),
        _linear("blackhot", "Black Hot", (0.0, 255, 255, 255), (1.0, 0, 0, 0)),
        _linear("arctic", "Arctic", (0.0, 0, 0, 64), (0.25, 0, 100, 200),
                (0.5, 100, 200, 255), (0.75, 200, 240, 255), (1.0, 255, 255, 255)),
        _linear("lava", "Lava", (0.0, 0, 0, 0), (0.25, 128, 0, 0), (0.5, 255, 80, 0),
                (0.75, 255, 200, 0), (1.0, 255, 255, 200)),
        _linear("terrain", "Terrain", (0.0, 51, 51, 153), (0.2, 0, 180, 180),
                (0.4, 160, 217, 121), (0.6, 236, 216, 122), (0.8, 169, 116, 67),
                (1.0, 255, 255, 255)),
        Colormap(id="greys", name="Greys", kind="greys"),
    )
}

_BY_LOWER = {key.lower(): key for key in COLORMAPS}


def lookup(colormap_id: str) -> Colormap | None:
    """The colormap with this id, matched case-insensitively, or None."""
    key = _BY_LOWER.get(str(colormap_id).strip().lower())
    return COLORMAPS[key] if key is not None else None


def lut(colormap_id: str) -> np.ndarray:
    """The ``(256, 3)`` uint8 table of a colormap (read-only); KeyError when unknown."""
    colormap = lookup(colormap_id)
    if colormap is None:
        raise KeyError(f"unknown colormap {colormap_id!r}")
    return _build(colormap.id)


@cache
def _build(colormap_id: str) -> np.ndarray:
    colormap = COLORMAPS[colormap_id]
    ramp = np.arange(256, dtype=np.uint8)
    if colormap.kind == "grayscale":
        table = np.stack([ramp] * 3, axis=1)
    elif colormap.kind == "greys":
        table = np.stack([255 - ramp] * 3, axis=1)
    elif colormap.kind == "discrete":
        table = np.array([_step_colour(colormap.steps, _t(i)) for i in range(256)], np.uint8)
    else:
        table = np.array([_interpolate(colormap.stops, _t(i)) for i in range(256)], np.uint8)
    table.setflags(write=False)
    return table


def _t(i: int) -> np.float32:
    return np.float32(i) / np.float32(255)


def _interpolate(stops: tuple[Stop, ...], t: np.float32) -> tuple[int, int, int]:
    lo, hi = stops[0], stops[-1]
    for left, right in zip(stops, stops[1:]):
        if np.float32(left[0]) <= t <= np.float32(right[0]):
            lo, hi = left, right
            break
    t_lo, t_hi = np.float32(lo[0]), np.float32(hi[0])
    frac = (t - t_lo) / (t_hi - t_lo) if t_hi > t_lo else np.float32(0)
    frac = min(max(frac, np.float32(0)), np.float32(1))
    r, g, b = (int(np.float32(lo[c]) + frac * np.float32(hi[c] - lo[c])) for c in (1, 2, 3))
    return r, g, b


def _step_colour(steps: tuple[Step, ...], t: np.float32) -> tuple[int, int, int]:
    for index, (lo, hi, rgb) in enumerate(steps):
        last = index == len(steps) - 1
        if np.float32(lo) <= t and (t < np.float32(hi) or last):
            return rgb
    return steps[0][2] if t < np.float32(steps[0][0]) else steps[-1][2]
