"""raster-export as lazy xarray/dask graphs: index, colorize, composite, plan.

The rasters come from :func:`tools.raster.open_raster` (the one way to open one; its header,
:class:`~tools.raster.RasterHeader`, is what the rules below read). Notebook use, nothing
is computed until asked (``.compute()``, ``.values``, a writer)::

    da = open_raster("ortho.tif")                 # (band, y, x), chunked on the file's tiles
    ndvi = index(da, "NDVI", "RGBN")              # lazy float32, NaN where invalid
    rgba = colorize(ndvi, "rdylgn")               # lazy uint8 (4, y, x): RGBA
    rgb = composite(da, [4, 3, 2])                # lazy uint8 (3 or 4, y, x)

and the service path: ``plan = plan_export(path, params)`` validates the parameters before
queueing (raises :class:`tools.contract.InvalidParams`), ``render(plan)`` builds the output.

**Masks.** A pixel is invalid (NaN in an index, transparent in an output) when the alpha band
is 0, a band that is used equals its nodata value (NaN-aware; a NaN in a used float band
counts too), or — for indexes — a rule of :mod:`tools.render.spectral` (zero denominator, vNDVI
inputs ``<= 1e-10``) holds. The alpha band is the band described as ``alpha``, else the band
whose colour interpretation is alpha (unless its description names a spectral band);
automatic band filters and default composites never use it as data, and when a given band
filter or band list does use it as data, it stops masking. GDAL mask bands (``.msk``,
internal masks) are not read.

**Band filters** are lists with one entry per band, in band order (a letter of R, G, B, N,
Re, T, or None for a band without one). :func:`parse_band_filter` reads the ``bandFilter``
text (``Re`` is one token, any other character skips a band, parsing stops at the band count
— the alpha band included, as in the reference; when a letter repeats, the last band with it
is used). :func:`infer_band_filter` (and :func:`auto_band_filter`, its letters), by the first
rule that gives a letter: the band names of a sensor profile recognised by its metadata (see
:mod:`tools.raster.sensors`); the band descriptions, else colour interpretations, band by band
(``red``, ``green``, ``blue``, ``nir``/``near infrared``, ``rededge``/``red edge``,
``thermal``/``lwir``; ``alpha`` marks the alpha band); a generic profile's band names; ``T``
for a single-band raster that looks thermal (its sensor or metadata say so) or holds floats;
else ``R G B`` on the first three non-alpha bands. The rule that decided is reported
(:attr:`BandFilterChoice.rule`, ``ExportPlan.band_filter_rule``) and named in errors.

**Rescale.** Explicit ``"min,max"``; ``"auto"``: the 2nd and 98th percentiles below even
when the formula has a range (an index of raw digital numbers that spans -0.3..0.3 gets
the whole colormap; for composites, per band); else the formula's range; else the 2nd and 98th
percentiles (numpy ``linear`` method, float64) of a deterministic sample of the valid (finite)
values: every pixel whose row and column are multiples of a stride, the smallest stride that
keeps the sample to at most 2**20 pixels (1 up to 1 Mpx: exact percentiles). The sample
depends on the raster only, never on the chunking. No valid value: ``(0, 1)``.

**Colour.** ``idx = int(clamp((v - min) / (max - min), 0, 1) * 255)`` in float32 (``min``
and ``max`` cast to float32 first; when ``|max - min| < 1e-10`` the divisor is 1), then the
colormap's 256-entry table; NaN → ``(0, 0, 0, 0)``, otherwise alpha 255.

**Composites** take 1-based file bands in output order (any count). Byte sources pass
through unless a rescale is given; other sources are stretched to 0..255 with the colour
index formula above, per band, by the explicit rescale (same range for every band) or by each
band's minimum and maximum over valid pixels (exact, so chunking-independent), or its 2nd-98th
percentile for presets with ``stretch: percentile``. An alpha band (255 valid, 0 invalid) is
appended when the source has an alpha band, a nodata value on a used band, or a float type;
invalid pixels have every band 0.

**Statistics inside graphs.** :func:`colorize` and :func:`composite` without a range put the
percentile / min-max pass in the same graph as the rendering; dask then keeps every chunk
until the statistics are known, so for big rasters compute the range first
(:func:`rescale_range`, :func:`stretch_ranges`) — :func:`render` does.

**Outputs** keep the source's ``x``/``y``/``spatial_ref`` coordinates (CRS and transform).
``attrs["colorinterp"]`` names the output bands (``red, green, blue, alpha`` for colorize;
``gray`` / ``red, green, blue`` / ``undefined``... plus ``alpha`` for composites). Index
arrays carry ``attrs["formula"]`` and ``attrs["_FillValue"] = nan``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

from tools.contract import InvalidParams
from tools.raster import (
    DEFAULT_CHUNK_PX,
    RasterHeader,
    header_of,
    open_raster,
    read_header,
    sensors,
)
from tools.render import colormaps, spectral

SAMPLE_TARGET = 1 << 20
PERCENTILES = (2.0, 98.0)
AUTO_RESCALE = "auto"
NO_VALID_RANGE = (0.0, 1.0)
THERMAL_FORMULA = "CELSIUS"
THERMAL_COLORMAP = "ironbow"
GRAY_COLORMAP = "grayscale"
_LETTERS = tuple(spectral.BAND_LETTERS)

BandFilter = list[str | None]
RangeLike = str | Sequence[float] | None


# --- band filters ------------------------------------------------------------------------


def parse_band_filter(text: str, band_count: int) -> BandFilter:
    """Band letters in band order from a ``bandFilter`` string (see the module rules)."""
    letters: BandFilter = []
    i = 0
    while i < len(text) and len(letters) < band_count:
        if text.startswith("Re", i):
            letters.append("Re")
            i += 2
            continue
        letters.append(text[i] if text[i] in _LETTERS else None)
        i += 1
    return letters


@dataclass(frozen=True)
class BandFilterChoice:
    """The band filter a raster implies and the rule that decided it (for the log)."""

    letters: tuple[str | None, ...]
    rule: str

    @property
    def text(self) -> str:
        return filter_text(self.letters)


def infer_band_filter(source: xr.DataArray | RasterHeader) -> BandFilterChoice:
    """The band filter a raster implies, by the first rule that gives a letter: the band
    names of a sensor profile recognised by its metadata; the band descriptions and colour
    interpretations (per band, the description first; see :func:`tools.raster.sensors.band_letter`);
    the band names of a generic profile (``generic-4band``: B, G, R, N); ``T`` for a
    single-band raster that looks thermal or holds floats; else ``R G B`` on the first three
    non-alpha bands."""
    header = source if isinstance(source, RasterHeader) else header_of(source)
    profile = header.sensor.profile if header.sensor is not None else None
    if profile is not None and profile.patterns:
        found = _profile_letters(header, profile)
        if found is not None:
            return found
    described = _described_letters(header)
    if described is not None:
        return described
    if profile is not None:
        found = _profile_letters(header, profile)
        if found is not None:
            return found
    data = header.data_bands
    if len(data) == 1 and (_looks_thermal(header) or header.dtype.startswith("float")):
        return BandFilterChoice((None,) * (data[0] - 1) + ("T",), "a single thermal band")
    rgb: BandFilter = [None] * header.count
    for letter, band in zip(("R", "G", "B"), data):
        rgb[band - 1] = letter
    return BandFilterChoice(tuple(rgb), "the default: R, G, B on the first bands")


def _profile_letters(header: RasterHeader, profile: sensors.SensorProfile) -> BandFilterChoice | None:
    names: list[str | None] = list(profile.bands[: header.count])
    if header.alpha_band is not None and header.alpha_band <= len(names):
        names[header.alpha_band - 1] = None
    letters = sensors.band_letters(names)
    return BandFilterChoice(tuple(letters), f"sensor profile {profile.id}") if any(letters) else None


def _described_letters(header: RasterHeader) -> BandFilterChoice | None:
    """Letters from band descriptions, else colour interpretations, band by band."""
    names: list[str | None] = []
    sources: set[str] = set()
    for band in range(1, header.count + 1):
        description = header.descriptions[band - 1] if band <= len(header.descriptions) else None
        colour = header.colorinterp[band - 1] if band <= len(header.colorinterp) else None
        if band == header.alpha_band:
            names.append(None)
        elif description and sensors.band_letter(description):
            names.append(description)
            sources.add("band descriptions")
        elif colour and sensors.band_letter(colour):
            names.append(colour)
            sources.add("colour interpretation")
        else:
            names.append(None)
    letters = sensors.band_letters(names)
    if not any(letters):
        return None
    return BandFilterChoice(tuple(letters), " and ".join(sorted(sources)))


def auto_band_filter(source: xr.DataArray | RasterHeader) -> BandFilter:
    """The letters of :func:`infer_band_filter`."""
    return list(infer_band_filter(source).letters)


def _looks_thermal(header: RasterHeader) -> bool:
    sensor = header.sensor
    if sensor is not None:
        return sensor.category == "thermal"
    return sensors.looks_thermal(header.traits)


def _resolve_filter(header: RasterHeader, band_filter: str | Sequence[str | None] | None) -> BandFilter:
    return list(_choose_filter(header, band_filter).letters)


def _choose_filter(header: RasterHeader,
                   band_filter: str | Sequence[str | None] | None) -> BandFilterChoice:
    if band_filter is None or band_filter == "":
        return infer_band_filter(header)
    if isinstance(band_filter, str):
        return BandFilterChoice(tuple(parse_band_filter(band_filter, header.count)),
                                "the bandFilter parameter")
    return BandFilterChoice(tuple(list(band_filter)[: header.count]), "the given band filter")


def _letter_bands(header: RasterHeader, letters: Sequence[str | None]) -> dict[str, int]:
    """Letter → 1-based band (the last band with a repeated letter wins)."""
    bands: dict[str, int] = {}
    for position, letter in enumerate(letters[: header.count]):
        if letter is not None:
            bands[letter] = position + 1
    return bands


def filter_text(letters: Sequence[str | None]) -> str:
    """A band filter as text, ``_`` for a band without a letter (``RGB_``)."""
    return "".join(letter or "_" for letter in letters)


def _require(formula: spectral.Formula, header: RasterHeader, letters: Sequence[str | None],
             what: str = "", rule: str | None = None) -> dict[str, int]:
    bands = _letter_bands(header, letters)
    missing = [letter for letter in formula.required if letter not in bands]
    if missing:
        count = f"{header.count} band{'s' if header.count != 1 else ''}"
        needs = _and(formula.required)
        absent = _and([f"{m} ({spectral.BAND_LETTERS[m]})" for m in missing])
        source = f" (from {rule})" if rule else ""
        raise InvalidParams(
            f"{what}the raster has {count}; formula {formula.id} needs {needs}, and its "
            f"band filter '{filter_text(letters)}'{source} has no {absent}; pass bandFilter "
            f"with one letter per band in band order (R, G, B, N, Re, T; another character "
            f"skips a band), e.g. 'RGBN'"
        )
    return {letter: bands[letter] for letter in formula.required}


def _and(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


# --- indexes -----------------------------------------------------------------------------


def index(
    da: xr.DataArray, formula: str, band_filter: str | Sequence[str | None] | None = None
) -> xr.DataArray:
    """A lazy float32 ``(y, x)`` index, NaN where invalid (see :mod:`tools.render.spectral`)."""
    spec = _formula(formula)
    header = header_of(da)
    choice = _choose_filter(header, band_filter)
    bands = _require(spec, header, choice.letters, rule=choice.rule)
    positions = {letter: _position(da, band) for letter, band in bands.items()}
    nodata = {letter: header.nodata(band) for letter, band in bands.items()}
    alpha = _alpha_position(da, header, bands.values())
    data = _apply(
        _index_block, _pixels(da), out_bands=None, dtype=np.float32,
        formula=spec.id, positions=positions, nodata=nodata, alpha=alpha,
    )
    attrs = {"formula": spec.id, "_FillValue": np.float32(np.nan)}
    return _spatial(da, data, ("y", "x"), attrs, name=spec.id)


def band_values(da: xr.DataArray, band: int = 1) -> xr.DataArray:
    """Band ``band`` (1-based) as a lazy float32 ``(y, x)`` array, NaN where invalid."""
    header = header_of(da)
    data = _apply(
        _band_block, _pixels(da), out_bands=None, dtype=np.float32,
        position=_position(da, band), nodata=header.nodata(band),
        alpha=_alpha_position(da, header, [band]),
    )
    attrs = {"band": band, "_FillValue": np.float32(np.nan)}
    return _spatial(da, data, ("y", "x"), attrs, name=f"band{band}")


def _index_block(block: np.ndarray, *, formula: str, positions: Mapping[str, int],
                 nodata: Mapping[str, float | None], alpha: int | None) -> np.ndarray:
    named = {letter: block[position] for letter, position in positions.items()}
    alpha_values = block[alpha] if alpha is not None else None
    return spectral.evaluate_numpy(formula, named, nodata=nodata, alpha=alpha_values)[0]


def _band_block(block: np.ndarray, *, position: int, nodata: float | None,
                alpha: int | None) -> np.ndarray:
    values = block[position].astype(np.float32)
    invalid = _invalid(block, [position], {position: nodata}, alpha)
    values[invalid] = np.nan
    return values


def _invalid(block: np.ndarray, positions: Sequence[int], nodata: Mapping[int, float | None],
             alpha: int | None) -> np.ndarray:
    """Alpha 0, a used band at its nodata value, or a NaN in a used band."""
    invalid = np.zeros(block.shape[1:], dtype=bool)
    for position in positions:
        values = block[position].astype(np.float32)
        invalid |= np.isnan(values)
        value = nodata.get(position)
        if value is not None and not np.isnan(np.float32(value)):
            invalid |= values == np.float32(value)
    if alpha is not None:
        invalid |= block[alpha] == 0
    return invalid


# --- rescale -----------------------------------------------------------------------------


def is_auto(rescale: Any) -> bool:
    """Whether ``rescale`` is ``"auto"`` (any case): the 2nd-98th percentile of the values,
    even for a formula with a range."""
    return isinstance(rescale, str) and rescale.strip().lower() == AUTO_RESCALE


def parse_rescale(rescale: RangeLike) -> tuple[float, float] | None:
    """``"min,max"`` (or two numbers) as floats; None and ``"auto"`` (see :func:`is_auto`)
    give None; InvalidParams otherwise."""
    if rescale is None or (isinstance(rescale, str) and not rescale.strip()) or is_auto(rescale):
        return None
    parts: Sequence[Any] = rescale.split(",") if isinstance(rescale, str) else rescale
    try:
        if isinstance(parts, str | bytes) or len(parts) != 2:
            raise ValueError
        low, high = (float(str(p).strip()) if isinstance(p, str) else float(p) for p in parts)
    except (TypeError, ValueError):
        raise InvalidParams(
            f"rescale must be 'min,max' with two finite numbers, e.g. '-1,1', or 'auto'; "
            f"got {rescale!r}"
        ) from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise InvalidParams(f"rescale must be two finite numbers; got {rescale!r}")
    return low, high


def rescale_range(
    index_da: xr.DataArray, formula: str | None = None, rescale: RangeLike = None
) -> tuple[float, float]:
    """(min, max) for colouring: explicit, else the formula's range, else percentiles.

    Computes the percentile sample when it is needed (one pass over the raster). ``min``
    may equal ``max``: :func:`colorize` then divides by 1.
    """
    result = rescale_range_lazy(index_da, formula, rescale)
    if isinstance(result, tuple):
        return result
    low, high = result.compute()
    return float(low), float(high)


def rescale_range_lazy(
    index_da: xr.DataArray, formula: str | None = None, rescale: RangeLike = None
) -> Any:
    """Like :func:`rescale_range`, but a ``dask.delayed`` when percentiles are needed."""
    if is_auto(rescale):
        return _percentile_range(index_da.data)
    explicit = parse_rescale(rescale)
    if explicit is not None:
        return explicit
    formula = formula or index_da.attrs.get("formula")
    spec = spectral.lookup(formula) if formula else None
    if spec is not None and spec.range is not None:
        return spec.range
    return _percentile_range(index_da.data)


def sample_stride(height: int, width: int) -> int:
    """The sampling stride: the smallest that keeps the sample to ``SAMPLE_TARGET`` px."""
    stride = max(1, math.ceil(math.sqrt(height * width / SAMPLE_TARGET)))
    while math.ceil(height / stride) * math.ceil(width / stride) > SAMPLE_TARGET:
        stride += 1
    return stride


def _percentile_range(data: Any) -> Any:
    """Delayed (p2, p98) of the strided sample of the non-NaN values of a 2-D array."""
    import dask
    import dask.array as dsa

    if not isinstance(data, dsa.Array):
        data = dsa.from_array(np.asarray(data), chunks=-1)
    stride = sample_stride(*data.shape)
    samples = [
        dask.delayed(_sample_block)(block, row0, col0, stride)
        for block, (row0, col0) in _blocks_2d(data)
    ]
    return dask.delayed(_percentiles)(samples)


def _blocks_2d(data: Any) -> list[tuple[Any, tuple[int, int]]]:
    row_starts = np.cumsum((0,) + data.chunks[0][:-1])
    col_starts = np.cumsum((0,) + data.chunks[1][:-1])
    blocks = data.to_delayed()
    return [
        (blocks[i, j], (int(row_starts[i]), int(col_starts[j])))
        for i in range(len(row_starts)) for j in range(len(col_starts))
    ]


def _sample_block(block: np.ndarray, row0: int, col0: int, stride: int) -> np.ndarray:
    """The values at rows and columns that are multiples of ``stride`` (global indices)."""
    sample = block[(-row0) % stride::stride, (-col0) % stride::stride].ravel()
    return sample[~np.isnan(sample)]


def _percentiles(samples: Sequence[np.ndarray]) -> tuple[float, float]:
    sample = np.concatenate([np.asarray(s, dtype=np.float64) for s in samples])
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return NO_VALID_RANGE
    low, high = np.percentile(sample, PERCENTILES)
    return float(low), float(high)


# --- colorize ----------------------------------------------------------------------------


def colorize(
    index_da: xr.DataArray, colormap: str = colormaps.DEFAULT_COLORMAP, rescale: RangeLike = None
) -> xr.DataArray:
    """A lazy RGBA uint8 ``(band=4, y, x)`` rendering of an index (NaN → transparent).

    ``rescale`` None: the range of ``index_da.attrs["formula"]``, else the percentile range
    computed inside the graph (for big rasters compute :func:`rescale_range` first).
    """
    table = _colormap_table(colormap)
    value_range = rescale_range_lazy(index_da, None, rescale)
    data = _apply(
        _colorize_block, index_da.data, out_bands=4, dtype=np.uint8,
        table=table, value_range=value_range,
    )
    attrs = {"colorinterp": ("red", "green", "blue", "alpha")}
    return _spatial(index_da, data, ("band", "y", "x"), attrs, bands=4, name="rgba")


def colour_index(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``int(clamp((v - min) / (max - min), 0, 1) * 255)`` in float32, as uint8; NaN gives 0."""
    low32, high32 = np.float32(low), np.float32(high)
    span = high32 - low32
    if not abs(float(span)) >= 1e-10:
        span = np.float32(1)
    with np.errstate(all="ignore"):
        scaled = np.subtract(values, low32, dtype=np.float32)
        scaled /= span
        np.clip(scaled, np.float32(0), np.float32(1), out=scaled)
        scaled[np.isnan(scaled)] = 0
        scaled *= np.float32(255)
        return scaled.astype(np.uint8)  # truncates: values are in [0, 255]


def _colorize_block(values: np.ndarray, *, table: np.ndarray,
                    value_range: tuple[float, float]) -> np.ndarray:
    invalid = np.isnan(values)
    indexes = colour_index(values, *value_range)
    out = np.empty((4, *values.shape), dtype=np.uint8)
    for channel in range(3):
        np.take(table[:, channel], indexes, out=out[channel])
    out[3] = 255
    out[:, invalid] = 0
    return out


def _colormap_table(colormap: str) -> np.ndarray:
    found = colormaps.lookup(colormap)
    if found is None:
        raise InvalidParams(
            f"unknown colormap {colormap!r}; known: {', '.join(colormaps.COLORMAPS)}"
        )
    return colormaps.lut(found.id)


# --- composites --------------------------------------------------------------------------


def composite(
    da: xr.DataArray,
    bands: Sequence[int] | str | None = None,
    *,
    preset: str | None = None,
    rescale: RangeLike | Sequence[Sequence[float]] = None,
) -> xr.DataArray:
    """A lazy uint8 composite of 1-based ``bands`` (or a composite ``preset``; neither:
    the raster's default composite), plus alpha when the source has nodata/alpha/floats.

    ``rescale``: ``"min,max"`` for every band, or one ``(min, max)`` per band; None: byte
    sources pass through, others are stretched by the data (min/max, or percentiles for a
    ``stretch: percentile`` preset) computed inside the graph.
    """
    header = header_of(da)
    stretch: Literal["minmax", "percentile"] = "minmax"
    if bands is None and preset is not None:
        found = _preset(header, preset)
        if found.bands is None:
            raise InvalidParams(f"preset {found.id!r} is an index preset, not a band composite")
        bands, stretch = found.bands, found.stretch or "minmax"
    elif bands is None:
        bands = default_composite_bands(header)
    chosen = parse_bands(bands, header.count)
    ranges = _composite_ranges(da, header, chosen, rescale, stretch)
    return _composite(da, header, chosen, ranges)


def default_composite_bands(header: RasterHeader) -> tuple[int, ...]:
    """True colour: the R, G, B bands of the band filter, else of the colour
    interpretation, else bands 1-3 (band 1 three times for fewer than 3 data bands)."""
    letters = _letter_bands(header, auto_band_filter(header))
    if all(k in letters for k in ("R", "G", "B")):
        return letters["R"], letters["G"], letters["B"]
    interp = {name: i + 1 for i, name in reversed(list(enumerate(header.colorinterp)))}
    if all(k in interp for k in ("red", "green", "blue")):
        return interp["red"], interp["green"], interp["blue"]
    data = header.data_bands
    return data[:3] if len(data) >= 3 else (data[0],) * 3


def parse_bands(bands: Sequence[int] | str, band_count: int) -> tuple[int, ...]:
    """1-based band numbers from ``"4,3,2"`` or a sequence; InvalidParams when malformed
    or out of range."""
    try:
        if isinstance(bands, str):
            parsed = tuple(int(part.strip()) for part in bands.split(","))
        else:
            parsed = tuple(_int(b) for b in bands)
        if not parsed:
            raise ValueError
    except (TypeError, ValueError):
        raise InvalidParams(
            f"bands must be band numbers separated by commas, e.g. '4,3,2'; got {bands!r}"
        ) from None
    for band in parsed:
        if not 1 <= band <= band_count:
            raise InvalidParams(
                f"band {band} is out of range: the raster has {band_count} "
                f"band{'s' if band_count != 1 else ''} (1-{band_count})"
            )
    return parsed


def _int(value: Any) -> int:
    if isinstance(value, bool) or not float(value).is_integer():
        raise ValueError
    return int(value)


def _composite_ranges(
    da: xr.DataArray, header: RasterHeader, bands: tuple[int, ...],
    rescale: Any, stretch: Literal["minmax", "percentile"],
) -> Any:
    """None (pass through), a list of (min, max) per band, or a delayed such list."""
    if rescale is not None and not isinstance(rescale, str) and len(rescale) == len(bands) \
            and all(isinstance(r, Sequence) and not isinstance(r, str) for r in rescale):
        return [parse_rescale(r) for r in rescale]
    if is_auto(rescale):
        return stretch_ranges_lazy(da, bands, "percentile")
    explicit = parse_rescale(rescale)
    if explicit is not None:
        return [explicit] * len(bands)
    if header.is_byte:
        return None
    return stretch_ranges_lazy(da, bands, stretch)


def stretch_ranges(
    da: xr.DataArray, bands: Sequence[int], stretch: Literal["minmax", "percentile"] = "minmax"
) -> list[tuple[float, float]]:
    """Per band (min, max) of valid pixels, or their 2nd-98th percentiles (computed now)."""
    return [tuple(r) for r in stretch_ranges_lazy(da, bands, stretch).compute()]


def stretch_ranges_lazy(
    da: xr.DataArray, bands: Sequence[int], stretch: Literal["minmax", "percentile"] = "minmax"
) -> Any:
    """A ``dask.delayed`` list of per-band ranges (see :func:`stretch_ranges`)."""
    import dask

    header = header_of(da)
    positions = [_position(da, b) for b in bands]
    nodata = {_position(da, b): header.nodata(b) for b in bands}
    alpha = _alpha_position(da, header, bands)
    data = _pixels(da)
    if not hasattr(data, "to_delayed"):
        import dask.array as dsa

        data = dsa.from_array(data, chunks=(-1, -1, -1))
    stride = sample_stride(header.height, header.width)
    tasks = []
    grid = data.to_delayed()[0]
    row_starts = np.cumsum((0,) + data.chunks[1][:-1])
    col_starts = np.cumsum((0,) + data.chunks[2][:-1])
    for i, row0 in enumerate(row_starts):
        for j, col0 in enumerate(col_starts):
            tasks.append(dask.delayed(_stretch_block)(
                grid[i, j], positions=positions, nodata=nodata, alpha=alpha,
                stretch=stretch, row0=int(row0), col0=int(col0), stride=stride,
            ))
    combine = _combine_minmax if stretch == "minmax" else _combine_percentiles
    return dask.delayed(combine)(tasks, len(positions))


def _stretch_block(block: np.ndarray, *, positions: Sequence[int],
                   nodata: Mapping[int, float | None], alpha: int | None, stretch: str,
                   row0: int, col0: int, stride: int) -> list[Any]:
    invalid = _invalid(block, positions, nodata, alpha)
    result: list[Any] = []
    for position in positions:
        values = block[position].astype(np.float32)
        if stretch == "minmax":
            valid = values[~invalid & np.isfinite(values)]
            result.append((float(valid.min()), float(valid.max())) if valid.size else None)
        else:
            masked = np.where(invalid, np.float32(np.nan), values)
            result.append(_sample_block(masked, row0, col0, stride))
    return result


def _combine_minmax(per_block: Sequence[Sequence[Any]], count: int) -> list[tuple[float, float]]:
    ranges = []
    for k in range(count):
        found = [b[k] for b in per_block if b[k] is not None]
        ranges.append(
            (min(f[0] for f in found), max(f[1] for f in found)) if found else NO_VALID_RANGE
        )
    return ranges


def _combine_percentiles(per_block: Sequence[Sequence[Any]], count: int) -> list[tuple[float, float]]:
    return [_percentiles([b[k] for b in per_block]) for k in range(count)]


def _composite(da: xr.DataArray, header: RasterHeader, bands: tuple[int, ...],
               ranges: Any) -> xr.DataArray:
    positions = [_position(da, b) for b in bands]
    with_alpha = _composite_has_alpha(header, bands)
    count = len(bands) + int(with_alpha)
    data = _apply(
        _composite_block, _pixels(da), out_bands=count, dtype=np.uint8, positions=positions,
        nodata={_position(da, b): header.nodata(b) for b in bands},
        alpha=_alpha_position(da, header, bands), ranges=ranges, with_alpha=with_alpha,
    )
    names: tuple[str, ...] = (
        ("gray",) if len(bands) == 1 else
        ("red", "green", "blue") if len(bands) == 3 else ("undefined",) * len(bands)
    )
    attrs = {"colorinterp": names + (("alpha",) if with_alpha else ()), "bands": bands}
    return _spatial(da, data, ("band", "y", "x"), attrs, bands=count, name="composite")


def _composite_has_alpha(header: RasterHeader, bands: Sequence[int]) -> bool:
    return (
        _masking_alpha(header, bands) is not None
        or any(header.nodata(b) is not None for b in bands)
        or header.dtype.startswith("float")
    )


def _composite_block(block: np.ndarray, *, positions: Sequence[int],
                     nodata: Mapping[int, float | None], alpha: int | None,
                     ranges: Sequence[tuple[float, float]] | None,
                     with_alpha: bool) -> np.ndarray:
    invalid = _invalid(block, positions, nodata, alpha)
    out = np.empty((len(positions) + int(with_alpha), *block.shape[1:]), dtype=np.uint8)
    for k, position in enumerate(positions):
        if ranges is None:
            out[k] = block[position]
        else:
            out[k] = colour_index(block[position].astype(np.float32), *ranges[k])
    if with_alpha:
        out[-1] = 255
    out[:, invalid] = 0
    return out


# --- presets and plans ---------------------------------------------------------------------


def presets_for(header: RasterHeader,
                band_filter: Sequence[str | None] | None = None) -> tuple[sensors.Preset, ...]:
    """The presets of a raster: its sensor profile's, else :func:`sensors.fallback_presets`
    from the band filter (None: :func:`auto_band_filter`)."""
    sensor = header.sensor
    if sensor is not None and sensor.profile is not None:
        return sensor.profile.presets
    letters = auto_band_filter(header) if band_filter is None else band_filter
    return sensors.fallback_presets(list(letters)[: header.count])


def _preset(header: RasterHeader, preset_id: str,
            band_filter: Sequence[str | None] | None = None) -> sensors.Preset:
    available = presets_for(header, band_filter)
    wanted = str(preset_id).strip().lower()
    for preset in available:
        if preset.id == wanted:
            return preset
    sensor = header.sensor.id if header.sensor and header.sensor.id else "no sensor profile"
    raise InvalidParams(
        f"unknown preset {preset_id!r} for this raster ({sensor}); "
        f"available: {', '.join(p.id for p in available) or 'none'}"
    )


def _formula(formula: str) -> spectral.Formula:
    spec = spectral.lookup(formula) if isinstance(formula, str) else None
    if spec is None:
        raise InvalidParams(
            f"unknown formula {formula!r}; known: {', '.join(spectral.FORMULAS)}"
        )
    return spec


@dataclass(frozen=True, kw_only=True)
class ExportPlan:
    """What a raster-export run will render, resolved and validated before queueing.

    ``mode`` "index": ``formula`` (None: the raw values of ``value_band``) through
    ``band_filter``, coloured by ``colormap`` → RGBA. ``mode`` "composite": ``bands`` as
    uint8, stretched per ``stretch`` ("none" for byte sources, "explicit" when ``rescale``
    is given), plus alpha when ``output_alpha``. ``decided_by`` says which parameter won.
    """

    source_path: str
    mode: Literal["index", "composite"]
    source_name: str = ""  # how messages name the source (a dataset path)
    decided_by: Literal["formula", "bands", "preset", "default"]
    width: int
    height: int
    output_band_count: int
    output_alpha: bool
    estimated_output_bytes: int
    formula: str | None = None
    value_band: int | None = None
    band_filter: tuple[str | None, ...] = ()
    band_filter_rule: str = ""  # which rule chose band_filter (see infer_band_filter)
    colormap: str | None = None
    rescale: tuple[float, float] | None = None
    rescale_auto: bool = False  # rescale "auto": the 2nd-98th percentile, whatever the formula
    bands: tuple[int, ...] | None = None
    stretch: Literal["none", "explicit", "minmax", "percentile"] = "none"
    preset: str | None = None
    sensor: str | None = None

    @property
    def needs_statistics(self) -> bool:
        """Whether rendering needs a pass over the data first (percentiles, min/max)."""
        if self.mode == "composite":
            return self.stretch in ("minmax", "percentile")
        if self.rescale_auto:
            return True
        if self.rescale is not None:
            return False
        spec = spectral.lookup(self.formula) if self.formula else None
        return spec is None or spec.range is None


def plan_export(src_path: str | Path, params: Mapping[str, Any], *,
                name: str | None = None) -> ExportPlan:
    """Resolve and validate raster-export parameters against the raster's header.

    Precedence formula → bands → preset → default. The default: the sensor profile's default
    preset; else true colour (:func:`default_composite_bands`) for 3 or more data bands; else
    a single-band raster that looks thermal gets CELSIUS with ironbow, any other the values
    of band 1 with grayscale and the percentile rescale. Every parameter given is validated
    even when another takes precedence. ``path``/``fileName`` and unknown keys are ignored.
    Raises :class:`InvalidParams` naming the problem (``name`` names the raster: see
    :func:`read_header`).
    """
    header = read_header(src_path, name=name)
    formula = _optional_text(params, "formula")
    colormap = _optional_text(params, "colormap")
    preset_id = _optional_text(params, "preset")
    band_filter_text = params.get("bandFilter")
    if band_filter_text is not None and not isinstance(band_filter_text, str):
        raise InvalidParams(f"bandFilter must be a string of band letters; got {band_filter_text!r}")
    spec = _formula(formula) if formula is not None else None
    colormap_id = _colormap_id(colormap) if colormap is not None else None
    choice = _choose_filter(header, band_filter_text)
    letters = choice.letters
    preset = _preset(header, preset_id, letters) if preset_id is not None else None
    raw_bands = params.get("bands")
    bands = parse_bands(raw_bands, header.count) if raw_bands not in (None, "", []) else None
    rescale = parse_rescale(params.get("rescale"))
    base = dict(source_path=str(src_path), source_name=header.name, width=header.width, height=header.height,
                sensor=header.sensor.id if header.sensor else None, band_filter=letters,
                band_filter_rule=choice.rule,
                rescale=rescale, rescale_auto=is_auto(params.get("rescale")))

    if spec is not None:
        _require(spec, header, letters, rule=choice.rule)
        return _index_plan(header, base, "formula", spec.id, colormap_id)
    if bands is not None:
        return _composite_plan(header, base, "bands", bands, rescale)
    if preset is not None:
        return _preset_plan(header, base, "preset", preset, colormap_id, rescale)
    return _default_plan(header, base, colormap_id, rescale)


def _default_plan(header: RasterHeader, base: dict[str, Any], colormap_id: str | None,
                  rescale: tuple[float, float] | None) -> ExportPlan:
    sensor = header.sensor
    default = sensor.profile.default_preset if sensor and sensor.profile else None
    if default is not None:
        return _preset_plan(header, base, "default", default, colormap_id, rescale)
    if len(header.data_bands) >= 3:
        return _composite_plan(header, base, "default", default_composite_bands(header), rescale)
    if _looks_thermal(header) and "T" in base["band_filter"]:
        return _index_plan(header, base, "default", THERMAL_FORMULA, colormap_id or THERMAL_COLORMAP)
    return _index_plan(header, base, "default", None, colormap_id or GRAY_COLORMAP,
                       value_band=header.data_bands[0])


def _preset_plan(header: RasterHeader, base: dict[str, Any], decided_by: Any,
                 preset: sensors.Preset, colormap_id: str | None,
                 rescale: tuple[float, float] | None) -> ExportPlan:
    if preset.formula is not None:
        spec = _formula(preset.formula)
        _require(spec, header, base["band_filter"], what=f"preset {preset.id}: ",
                 rule=base["band_filter_rule"])
        return _index_plan(header, base, decided_by, spec.id,
                           colormap_id or preset.colormap, preset=preset.id)
    assert preset.bands is not None
    bands = parse_bands(preset.bands, header.count)
    return _composite_plan(header, base, decided_by, bands, rescale,
                           stretch=preset.stretch or "minmax", preset=preset.id)


def _index_plan(header: RasterHeader, base: dict[str, Any], decided_by: Any,
                formula: str | None, colormap_id: str | None, *, value_band: int | None = None,
                preset: str | None = None) -> ExportPlan:
    return ExportPlan(
        **base, mode="index", decided_by=decided_by, formula=formula, value_band=value_band,
        colormap=colormap_id or colormaps.DEFAULT_COLORMAP, preset=preset,
        output_band_count=4, output_alpha=True,
        estimated_output_bytes=_estimate(header, 4),
    )


def _composite_plan(header: RasterHeader, base: dict[str, Any], decided_by: Any,
                    bands: tuple[int, ...], rescale: tuple[float, float] | None, *,
                    stretch: Literal["minmax", "percentile"] = "minmax",
                    preset: str | None = None) -> ExportPlan:
    with_alpha = _composite_has_alpha(header, bands)
    count = len(bands) + int(with_alpha)
    resolved: Literal["none", "explicit", "minmax", "percentile"] = (
        "explicit" if rescale is not None else "percentile" if base["rescale_auto"]
        else "none" if header.is_byte else stretch
    )
    return ExportPlan(
        **base, mode="composite", decided_by=decided_by, bands=bands, stretch=resolved,
        preset=preset, output_band_count=count, output_alpha=with_alpha,
        estimated_output_bytes=_estimate(header, count),
    )


def _estimate(header: RasterHeader, bands: int) -> int:
    """Uncompressed bytes of the output and its overviews (about a third more)."""
    return header.width * header.height * bands * 4 // 3


def _optional_text(params: Mapping[str, Any], key: str) -> str | None:
    value = params.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise InvalidParams(f"{key} must be a string; got {value!r}")
    return value.strip()


def _colormap_id(colormap: str) -> str:
    found = colormaps.lookup(colormap)
    if found is None:
        raise InvalidParams(
            f"unknown colormap {colormap!r}; known: {', '.join(colormaps.COLORMAPS)}"
        )
    return found.id


def render(
    plan: ExportPlan,
    da: xr.DataArray | None = None,
    *,
    chunk_px: int = DEFAULT_CHUNK_PX,
    compute: Callable[[Any], Any] | None = None,
) -> xr.DataArray:
    """The lazy uint8 output of a plan (band, y, x; alpha last when ``plan.output_alpha``).

    Statistics the plan needs (percentiles, min/max: ``plan.needs_statistics``) are computed
    first, by ``compute(delayed)`` (default: ``delayed.compute()``; pass e.g. a function that
    computes through ``worker_client`` with progress and cancellation), so the returned graph
    is a single pass over the source.
    """
    run = compute if compute is not None else (lambda delayed: delayed.compute())
    if da is None:
        da = open_raster(plan.source_path, chunk_px=chunk_px, name=plan.source_name or None)
    if plan.mode == "index":
        if plan.formula is not None:
            values = index(da, plan.formula, list(plan.band_filter))
        else:
            values = band_values(da, plan.value_band or 1)
        value_range = rescale_range_lazy(
            values, plan.formula, AUTO_RESCALE if plan.rescale_auto else plan.rescale)
        if not isinstance(value_range, tuple):
            low, high = run(value_range)
            value_range = (float(low), float(high))
        return colorize(values, plan.colormap or colormaps.DEFAULT_COLORMAP, value_range)
    assert plan.bands is not None
    ranges: Any = None
    if plan.stretch == "explicit":
        ranges = [plan.rescale] * len(plan.bands)
    elif plan.stretch in ("minmax", "percentile"):
        lazy = stretch_ranges_lazy(da, plan.bands, plan.stretch)
        ranges = [(float(low), float(high)) for low, high in run(lazy)]
    return _composite(da, header_of(da), plan.bands, ranges)


# --- plumbing ----------------------------------------------------------------------------


def _pixels(da: xr.DataArray) -> Any:
    """The (band, y, x) data with all bands in one chunk."""
    data = da.transpose("band", "y", "x").data if "band" in da.dims else da.data[None]
    if hasattr(data, "rechunk") and len(data.chunks[0]) > 1:
        data = data.rechunk({0: -1})
    return data


def _position(da: xr.DataArray, band: int) -> int:
    """The index along ``band`` of 1-based file band ``band``."""
    if "band" not in da.dims:
        return 0
    labels = [int(b) for b in da["band"].values] if "band" in da.coords else None
    if labels is not None and band in labels:
        return labels.index(band)
    if labels is None and 1 <= band <= da.sizes["band"]:
        return band - 1
    raise InvalidParams(f"band {band} is not in this array (bands {labels})")


def _masking_alpha(header: RasterHeader, used: Iterable[int]) -> int | None:
    """The 1-based alpha band that masks ``used`` bands: None when there is none, or when
    the alpha band is itself used as data (a band filter or band list chose it)."""
    alpha = header.alpha_band
    return None if alpha is None or alpha in set(used) else alpha


def _alpha_position(da: xr.DataArray, header: RasterHeader, used: Iterable[int]) -> int | None:
    alpha = _masking_alpha(header, used)
    if alpha is None:
        return None
    try:
        return _position(da, alpha)
    except InvalidParams:
        return None


def _apply(func: Any, data: Any, *, out_bands: int | None, dtype: Any, **kwargs: Any) -> Any:
    """``func(block, **kwargs)`` block by block (lazy for dask), or on a numpy array.

    The output is 2-D ``(y, x)`` when ``out_bands`` is None, else ``(out_bands, y, x)``.
    """
    if not hasattr(data, "map_blocks"):
        resolved = {k: (v.compute() if hasattr(v, "compute") else v) for k, v in kwargs.items()}
        return func(np.asarray(data), **resolved)
    spatial = data.chunks[-2:]
    options: dict[str, Any] = {}
    if out_bands is None:
        if data.ndim == 3:
            options["drop_axis"] = 0
    else:
        options["chunks"] = ((out_bands,), *spatial)
        if data.ndim == 2:
            options["new_axis"] = 0
    ndim = 2 if out_bands is None else 3
    return data.map_blocks(
        func, dtype=dtype, meta=np.empty((0,) * ndim, dtype=dtype), **options, **kwargs
    )


def _spatial(template: xr.DataArray, data: Any, dims: tuple[str, ...], attrs: dict[str, Any],
             *, name: str, bands: int | None = None) -> xr.DataArray:
    coords = {k: v for k, v in template.coords.items() if "band" not in v.dims and k != "band"}
    if bands is not None:
        coords["band"] = xr.DataArray(np.arange(1, bands + 1), dims="band")
    return xr.DataArray(data, dims=dims, coords=coords, attrs=attrs, name=name)

