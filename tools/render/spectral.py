"""The 18 spectral index formulas of raster-export, and a vectorised float32 evaluator.

:data:`FORMULAS` maps an id (``"NDVI"``) to a :class:`Formula`: name, expression, the band
letters it needs (``R G B N Re T``; ``Re`` is one letter) and its display range (or None).
:func:`evaluate` computes a formula over named band arrays — numpy arrays, or dask arrays
with the same chunks (then the result is lazy, one task per block) — and returns
``(value, valid)``: ``value`` is float32 with NaN wherever ``valid`` is False.

A pixel is invalid when any of these holds:

- ``alpha == 0`` (when an alpha array is given);
- a band the formula USES equals that band's nodata value (compared in float32; a NaN
  nodata matches NaN pixels);
- a division formula's ``|denominator| < 1e-10`` (float32 ``1e-10``);
- vNDVI: any of R, G, B ``<= 1e-10``;
- the result is NaN (a NaN input pixel of a float band without a nodata value).

Arithmetic is float32 throughout, exactly as a plain numpy implementation does it: every band
is cast with ``astype(np.float32)`` first, constants are float32 scalars, and each expression
is evaluated left to right as written below (``2*G`` is ``np.float32(2) * G``; ``^`` is
``np.power`` with a float32 exponent), so a test can reproduce it bit for bit:

=======  ===============================================  ==========================
id       value                                            denominator checked
=======  ===============================================  ==========================
VARI     ``(G - R) / den``                                ``den = (G + R) - B``
EXG      ``(2*G) - (R + B)``                              (none)
GLI      ``(((2*G) - R) - B) / den``                      ``den = ((2*G) + R) + B``
vNDVI    ``((0.5268 * R^-0.1294) * G^0.3389) * B^-0.3118``  (R, G, B > 1e-10)
NDVI     ``(N - R) / den``                                ``den = N + R``
NDWI     ``(G - N) / den``                                ``den = G + N``
GNDVI    ``(N - G) / den``                                ``den = N + G``
SAVI     ``(1.5 * (N - R)) / den``                        ``den = (N + R) + 0.5``
EVI      ``(2.5 * (N - R)) / den``                        ``den = ((N + 6*R) - 7.5*B) + 1``
NDRE     ``(N - Re) / den``                               ``den = N + Re``
NDYI     ``(G - B) / den``                                ``den = G + B``
MPRI     ``(G - R) / den``                                ``den = G + R``
OSAVI    ``(N - R) / den``                                ``den = (N + R) + 0.16``
GRVI     ``N / den``                                      ``den = G``
ENDVI    ``((N + G) - (2*B)) / den``                      ``den = (N + G) + (2*B)``
ARVI     ``((N - (2*R)) + B) / den``                      ``den = (N + (2*R)) + B``
CELSIUS  ``T`` (passthrough)                              (none)
KELVIN   ``T + 273.15``                                   (none)
=======  ===============================================  ==========================

The thermal formulas read the band the band filter labels ``T`` (for a single-band raster,
band 1 — the reference's "band index 0").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

BAND_LETTERS: dict[str, str] = {
    "R": "red",
    "G": "green",
    "B": "blue",
    "N": "near infrared",
    "Re": "red edge",
    "T": "thermal",
}

EPSILON = np.float32(1e-10)

Range = tuple[float, float]


@dataclass(frozen=True, kw_only=True)
class Formula:
    """One spectral index: its id, what it computes, the bands it needs, its range."""

    id: str
    name: str
    expr: str
    required: tuple[str, ...]
    range: Range | None = None


def _formula(id: str, name: str, expr: str, required: str, range: Range | None = None) -> Formula:
    return Formula(id=id, name=name, expr=expr, required=letters_of(required), range=range)


def letters_of(text: str) -> tuple[str, ...]:
    """Split a string of band letters into tokens (``"NRe"`` → ``("N", "Re")``)."""
    tokens: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("Re", i):
            tokens.append("Re")
            i += 2
        else:
            tokens.append(text[i])
            i += 1
    return tuple(tokens)


_UNIT: Range = (-1.0, 1.0)

FORMULAS: dict[str, Formula] = {
    f.id: f
    for f in (
        _formula("VARI", "Visual Atmospheric Resistance Index", "(G - R) / (G + R - B)", "RGB", _UNIT),
        _formula("EXG", "Excess Green Index", "(2 * G) - (R + B)", "RGB"),
        _formula("GLI", "Green Leaf Index", "((G * 2) - R - B) / ((G * 2) + R + B)", "RGB", _UNIT),
        _formula("vNDVI", "Visible NDVI", "0.5268 * (R^-0.1294 * G^0.3389 * B^-0.3118)", "RGB"),
        _formula("NDVI", "Normalized Difference Vegetation Index", "(N - R) / (N + R)", "RN", _UNIT),
        _formula("NDWI", "Normalized Difference Water Index", "(G - N) / (G + N)", "GN", _UNIT),
        _formula("GNDVI", "Green NDVI", "(N - G) / (N + G)", "GN", _UNIT),
        _formula("SAVI", "Soil Adjusted Vegetation Index", "(1.5 * (N - R)) / (N + R + 0.5)", "RN", _UNIT),
        _formula("EVI", "Enhanced Vegetation Index", "2.5 * (N - R) / (N + 6*R - 7.5*B + 1)", "RBN", _UNIT),
        _formula("NDRE", "Normalized Difference Red Edge", "(N - Re) / (N + Re)", "NRe", _UNIT),
        _formula("NDYI", "Normalized Difference Yellowness Index", "(G - B) / (G + B)", "GB", _UNIT),
        _formula("MPRI", "Modified Photochemical Reflectance Index", "(G - R) / (G + R)", "RG", _UNIT),
        _formula("OSAVI", "Optimized Soil Adjusted Vegetation Index", "(N - R) / (N + R + 0.16)", "RN", _UNIT),
        _formula("GRVI", "Green Ratio Vegetation Index", "N / G", "GN"),
        _formula("ENDVI", "Enhanced NDVI", "((N + G) - (2*B)) / ((N + G) + (2*B))", "GBN"),
        _formula("ARVI", "Atmospherically Resistant Vegetation Index", "(N - (2*R) + B) / (N + (2*R) + B)", "RBN", _UNIT),
        _formula("CELSIUS", "Celsius Temperature", "pixel value (passthrough)", "T", (-40.0, 150.0)),
        _formula("KELVIN", "Kelvin Temperature", "pixel + 273.15", "T", (233.15, 423.15)),
    )
}

_BY_LOWER = {key.lower(): key for key in FORMULAS}


def lookup(formula_id: str) -> Formula | None:
    """The formula with this id, matched case-insensitively (``"ndvi"`` → NDVI), or None."""
    key = _BY_LOWER.get(str(formula_id).strip().lower())
    return FORMULAS[key] if key is not None else None


# --- the kernels: (bands) -> (value, denominator or None) ----------------------------------

_F = np.float32
Kernel = Callable[[Mapping[str, np.ndarray]], tuple[np.ndarray, np.ndarray | None]]


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return numerator / denominator, denominator


def _vndvi(b: Mapping[str, np.ndarray]) -> tuple[np.ndarray, None]:
    value = _F(0.5268) * np.power(b["R"], _F(-0.1294))
    value = value * np.power(b["G"], _F(0.3389))
    value = value * np.power(b["B"], _F(-0.3118))
    return value, None


_KERNELS: dict[str, Kernel] = {
    "VARI": lambda b: _ratio(b["G"] - b["R"], (b["G"] + b["R"]) - b["B"]),
    "EXG": lambda b: ((_F(2) * b["G"]) - (b["R"] + b["B"]), None),
    "GLI": lambda b: _ratio(
        ((_F(2) * b["G"]) - b["R"]) - b["B"], ((_F(2) * b["G"]) + b["R"]) + b["B"]
    ),
    "vNDVI": _vndvi,
    "NDVI": lambda b: _ratio(b["N"] - b["R"], b["N"] + b["R"]),
    "NDWI": lambda b: _ratio(b["G"] - b["N"], b["G"] + b["N"]),
    "GNDVI": lambda b: _ratio(b["N"] - b["G"], b["N"] + b["G"]),
    "SAVI": lambda b: _ratio(_F(1.5) * (b["N"] - b["R"]), (b["N"] + b["R"]) + _F(0.5)),
    "EVI": lambda b: _ratio(
        _F(2.5) * (b["N"] - b["R"]),
        ((b["N"] + _F(6) * b["R"]) - _F(7.5) * b["B"]) + _F(1),
    ),
    "NDRE": lambda b: _ratio(b["N"] - b["Re"], b["N"] + b["Re"]),
    "NDYI": lambda b: _ratio(b["G"] - b["B"], b["G"] + b["B"]),
    "MPRI": lambda b: _ratio(b["G"] - b["R"], b["G"] + b["R"]),
    "OSAVI": lambda b: _ratio(b["N"] - b["R"], (b["N"] + b["R"]) + _F(0.16)),
    "GRVI": lambda b: _ratio(b["N"], b["G"]),
    "ENDVI": lambda b: _ratio(
        (b["N"] + b["G"]) - (_F(2) * b["B"]), (b["N"] + b["G"]) + (_F(2) * b["B"])
    ),
    "ARVI": lambda b: _ratio(
        (b["N"] - (_F(2) * b["R"])) + b["B"], (b["N"] + (_F(2) * b["R"])) + b["B"]
    ),
    "CELSIUS": lambda b: (b["T"].copy(), None),
    "KELVIN": lambda b: (b["T"] + _F(273.15), None),
}


def _nodata_mask(band: np.ndarray, nodata: float | None) -> np.ndarray | None:
    """Where ``band`` (float32) equals ``nodata``; NaN-aware. None when there is no nodata."""
    if nodata is None:
        return None
    value = np.float32(nodata)
    return np.isnan(band) if np.isnan(value) else band == value


def evaluate_numpy(
    formula: str | Formula,
    bands: Mapping[str, Any],
    *,
    nodata: Mapping[str, float | None] | None = None,
    alpha: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate ``formula`` on numpy ``bands`` (letter → array); see the module rules.

    Only the bands the formula needs are read; each is cast to float32 first. ``nodata``
    maps a letter to that band's nodata value (absent or None: no nodata). Returns
    ``(value, valid)`` with ``value`` float32, NaN where not valid.
    """
    spec = _resolve(formula)
    used = {letter: np.asarray(bands[letter]).astype(np.float32) for letter in spec.required}
    nodata = nodata or {}
    with np.errstate(all="ignore"):
        value, denominator = _KERNELS[spec.id](used)
        invalid = np.isnan(value)
        for letter, band in used.items():
            masked = _nodata_mask(band, nodata.get(letter))
            if masked is not None:
                invalid |= masked
        if alpha is not None:
            invalid |= np.asarray(alpha) == 0
        if denominator is not None:
            invalid |= np.abs(denominator) < EPSILON
        if spec.id == "vNDVI":
            invalid |= (used["R"] <= EPSILON) | (used["G"] <= EPSILON) | (used["B"] <= EPSILON)
    value = value.astype(np.float32, copy=False)
    value[invalid] = np.nan
    return value, ~invalid


def evaluate(
    formula: str | Formula,
    bands: Mapping[str, Any],
    *,
    nodata: Mapping[str, float | None] | None = None,
    alpha: Any = None,
) -> tuple[Any, Any]:
    """Like :func:`evaluate_numpy`, for numpy or dask arrays (lazy, block by block)."""
    spec = _resolve(formula)
    used = [bands[letter] for letter in spec.required]
    arrays = used + ([alpha] if alpha is not None else [])
    if not any(_is_dask(array) for array in arrays):
        return evaluate_numpy(spec, bands, nodata=nodata, alpha=alpha)
    import dask.array as da

    letters = list(spec.required)

    def block(*blocks: np.ndarray) -> np.ndarray:
        block_alpha = blocks[len(letters)] if alpha is not None else None
        named = dict(zip(letters, blocks[: len(letters)]))
        return evaluate_numpy(spec, named, nodata=nodata, alpha=block_alpha)[0]

    value = da.map_blocks(block, *arrays, dtype=np.float32)
    return value, ~da.isnan(value)


def _resolve(formula: str | Formula) -> Formula:
    if isinstance(formula, Formula):
        return formula
    spec = lookup(formula)
    if spec is None:
        raise KeyError(f"unknown formula {formula!r}")
    return spec


def _is_dask(array: Any) -> bool:
    return type(array).__module__.startswith("dask")
