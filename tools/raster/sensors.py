"""Sensor profiles: recognise a raster's sensor, name its bands, list its presets.

The table :data:`PROFILES` is our own compact transcription of the sensor-profile facts
(DroneDB's ``sensor-profiles.json`` v1.1): per sensor its detection rule, the band names in
band order and its presets. Wavelengths, resolutions and descriptions are left out (nothing
here uses them). To add a sensor, add a :class:`SensorProfile` to the table.

Detection (:func:`detect_sensor`), from a raster's :class:`RasterTraits` (header only):

1. a 4-band Byte raster whose last band is alpha (RGBA) and a 3-band Byte raster (RGB) are
   not multispectral: no sensor;
2. profiles are tried by descending priority (table order among equals); one matches when
   its band count equals the raster's band count, with or without a trailing alpha band;
   its data type (GDAL name, e.g. ``UInt16``), when given, equals that of band 1; and,
   when it has metadata patterns, one of them is a (case-sensitive) substring of one of the
   raster's metadata items (``KEY=VALUE`` of every domain, dataset and bands). A profile
   without patterns (``generic-4band``) takes band names from the raster's band
   descriptions where it has them;
3. else a raster with more than 3 bands that is not Byte is an *unprofiled* multispectral
   raster: band names come from band descriptions, else colour interpretations.

Band letters (:func:`band_letters`) come from band names, case-insensitively: a name
containing ``red edge``/``rededge`` → ``Re``; starting with ``red`` → ``R``, ``green`` →
``G``, ``blue`` → ``B``, ``nir`` or ``near infrared`` → ``N``; ``lwir``, ``tir`` or
containing ``thermal`` → ``T`` (GDAL's colour interpretations ``red``, ``rededge``, ``nir``,
``lwir``... read the same). Each letter goes to the first band with it; other bands get None.

Presets (:class:`Preset`) are band composites (1-based ``bands`` r, g, b; optional
``stretch="percentile"``) or index presets (``formula`` + ``colormap``). A sensor's default
preset is the one marked default, else its first composite. Rasters without a profile get
:func:`fallback_presets`, built from their band letters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Category = Literal["multispectral", "thermal"]


@dataclass(frozen=True, kw_only=True)
class Preset:
    """A named rendering: a band composite (``bands``) or an index (``formula``)."""

    id: str
    name: str
    bands: tuple[int, ...] | None = None
    formula: str | None = None
    colormap: str | None = None
    default: bool = False
    stretch: Literal["minmax", "percentile"] | None = None

    @property
    def kind(self) -> Literal["index", "bands"]:
        return "index" if self.formula else "bands"


@dataclass(frozen=True, kw_only=True)
class SensorProfile:
    """One sensor: how to recognise it, its band names (band order), its presets."""

    id: str
    name: str
    category: Category
    band_count: int
    data_type: str | None
    priority: int
    patterns: tuple[str, ...]
    bands: tuple[str, ...]
    presets: tuple[Preset, ...]

    @property
    def default_preset(self) -> Preset | None:
        for preset in self.presets:
            if preset.default:
                return preset
        return next((p for p in self.presets if p.kind == "bands"), None)


@dataclass(frozen=True, kw_only=True)
class RasterTraits:
    """What detection looks at, read from a raster's header."""

    band_count: int
    data_type: str  # GDAL name of band 1's type: Byte, UInt16, Float32...
    metadata: tuple[str, ...] = ()
    descriptions: tuple[str | None, ...] = ()
    colorinterp: tuple[str, ...] = ()  # lower-case names: red, green, blue, alpha, gray...
    alpha_band: int | None = None  # 1-based

    @property
    def last_band_is_alpha(self) -> bool:
        return self.band_count >= 2 and self.alpha_band == self.band_count


@dataclass(frozen=True, kw_only=True)
class SensorMatch:
    """A detected sensor (``profile`` None: an unprofiled multispectral raster)."""

    profile: SensorProfile | None
    category: Category
    band_names: tuple[str | None, ...]  # by band, 1-based band i at position i-1

    @property
    def id(self) -> str | None:
        return self.profile.id if self.profile else None


def _bands(
    id: str, name: str, r: int, g: int, b: int, *, default: bool = False,
    stretch: Literal["percentile"] | None = None,
) -> Preset:
    return Preset(id=id, name=name, bands=(r, g, b), default=default, stretch=stretch)


def _index(id: str, name: str, formula: str, colormap: str, *, default: bool = False) -> Preset:
    return Preset(id=id, name=name, formula=formula, colormap=colormap, default=default)


_VEGETATION = (
    _index("ndvi", "NDVI", "NDVI", "rdylgn"),
    _index("ndwi", "NDWI", "NDWI", "bugn"),
    _index("gndvi", "GNDVI", "GNDVI", "rdylgn"),
)
_NDRE = _index("ndre", "NDRE", "NDRE", "rdylgn")
_THERMAL = (
    _index("ironbow", "Ironbow", "CELSIUS", "ironbow", default=True),
    _index("whitehot", "White Hot", "CELSIUS", "whitehot"),
    _index("blackhot", "Black Hot", "CELSIUS", "blackhot"),
)
_TRUE_COLOR = "True Color (RGB)"

PROFILES: tuple[SensorProfile, ...] = (
    SensorProfile(
        id="sentinel-2", name="Sentinel-2 MSI", category="multispectral",
        band_count=13, data_type="UInt16", priority=10,
        patterns=("Sentinel-2", "S2A_", "S2B_", "SENTINEL2"),
        bands=("Coastal Aerosol", "Blue", "Green", "Red", "Red Edge 1", "Red Edge 2",
               "Red Edge 3", "NIR", "Narrow NIR", "Water Vapour", "Cirrus", "SWIR 1", "SWIR 2"),
        presets=(_bands("true-color", _TRUE_COLOR, 4, 3, 2, default=True),
                 _bands("false-color-ir", "False Color Infrared (CIR)", 8, 4, 3),
                 _bands("agriculture", "Agriculture", 12, 8, 2),
                 _bands("geology", "Geology", 12, 13, 4),
                 _bands("moisture", "Moisture Index", 8, 12, 3, stretch="percentile"),
                 *_VEGETATION, _NDRE),
    ),
    SensorProfile(
        id="landsat-8", name="Landsat 8/9 OLI", category="multispectral",
        band_count=11, data_type="UInt16", priority=10,
        patterns=("Landsat", "LC08", "LC09", "LANDSAT_8", "LANDSAT_9"),
        bands=("Coastal Aerosol", "Blue", "Green", "Red", "NIR", "SWIR 1", "SWIR 2",
               "Panchromatic", "Cirrus", "TIRS 1", "TIRS 2"),
        presets=(_bands("true-color", _TRUE_COLOR, 4, 3, 2, default=True),
                 _bands("false-color-ir", "False Color Infrared", 5, 4, 3),
                 _bands("urban", "Urban", 7, 6, 4),
                 *_VEGETATION),
    ),
    SensorProfile(
        id="landsat-5-tm", name="Landsat 5 TM", category="multispectral",
        band_count=7, data_type=None, priority=8,
        patterns=("LT05", "Landsat_5", "LANDSAT_5"),
        bands=("Blue", "Green", "Red", "NIR", "SWIR 1", "Thermal", "SWIR 2"),
        presets=(_bands("true-color", _TRUE_COLOR, 3, 2, 1, default=True),
                 _bands("false-color-ir", "False Color Infrared", 4, 3, 2),
                 *_VEGETATION),
    ),
    SensorProfile(
        id="landsat-7-etm", name="Landsat 7 ETM+", category="multispectral",
        band_count=8, data_type=None, priority=8,
        patterns=("LE07", "Landsat_7", "LANDSAT_7", "ETM+"),
        bands=("Blue", "Green", "Red", "NIR", "SWIR 1", "Thermal", "SWIR 2", "Panchromatic"),
        presets=(_bands("true-color", _TRUE_COLOR, 3, 2, 1, default=True),
                 _bands("false-color-ir", "False Color Infrared", 4, 3, 2),
                 *_VEGETATION),
    ),
    SensorProfile(
        id="micasense-rededge", name="MicaSense RedEdge", category="multispectral",
        band_count=5, data_type="UInt16", priority=10,
        patterns=("MicaSense", "RedEdge"),
        bands=("Blue", "Green", "Red", "Red Edge", "NIR"),
        presets=(_bands("true-color", _TRUE_COLOR, 3, 2, 1, default=True),
                 _bands("false-color-ir", "Color Infrared (CIR)", 5, 3, 2),
                 _bands("red-edge", "Red Edge Composite", 5, 4, 3),
                 *_VEGETATION, _NDRE),
    ),
    SensorProfile(
        id="micasense-altum", name="MicaSense Altum", category="multispectral",
        band_count=6, data_type="UInt16", priority=12,
        patterns=("Altum", "MicaSense"),
        bands=("Blue", "Green", "Red", "Red Edge", "NIR", "LWIR"),
        presets=(_bands("true-color", _TRUE_COLOR, 3, 2, 1, default=True),
                 _bands("false-color-ir", "Color Infrared (CIR)", 5, 3, 2),
                 _bands("red-edge", "Red Edge Composite", 5, 4, 3),
                 *_VEGETATION, _NDRE),
    ),
    SensorProfile(
        id="micasense-rededge-p", name="MicaSense RedEdge-P", category="multispectral",
        band_count=5, data_type="UInt16", priority=12,
        patterns=("RedEdge-P",),
        bands=("Blue", "Green", "Red", "Red Edge", "NIR"),
        presets=(_bands("true-color", _TRUE_COLOR, 3, 2, 1, default=True),
                 _bands("false-color-ir", "Color Infrared (CIR)", 5, 3, 2),
                 _bands("red-edge", "Red Edge Composite", 5, 4, 3),
                 *_VEGETATION, _NDRE),
    ),
    SensorProfile(
        id="dji-p4-multispectral", name="DJI P4 Multispectral", category="multispectral",
        band_count=5, data_type="UInt16", priority=10,
        patterns=("FC6360", "P4 Multispectral"),
        bands=("Blue", "Green", "Red", "Red Edge", "NIR"),
        presets=(_bands("true-color", _TRUE_COLOR, 3, 2, 1, default=True),
                 _bands("false-color-ir", "Color Infrared (CIR)", 5, 3, 2),
                 *_VEGETATION, _NDRE),
    ),
    SensorProfile(
        id="dji-mavic-3m", name="DJI Mavic 3 Multispectral", category="multispectral",
        band_count=4, data_type="UInt16", priority=10,
        patterns=("Mavic 3M", "FC3582", "M3M"),
        bands=("Green", "Red", "Red Edge", "NIR"),
        presets=(_bands("false-color-ir", "Color Infrared (CIR)", 4, 1, 2, default=True),
                 _bands("red-edge", "Red Edge Composite", 4, 3, 2),
                 *_VEGETATION, _NDRE),
    ),
    SensorProfile(
        id="parrot-sequoia", name="Parrot Sequoia+", category="multispectral",
        band_count=4, data_type="UInt16", priority=8,
        patterns=("Sequoia", "Parrot"),
        bands=("Green", "Red", "Red Edge", "NIR"),
        presets=(_bands("false-color-ir", "Color Infrared (CIR)", 4, 1, 2, default=True),
                 _bands("red-edge", "Red Edge Composite", 4, 3, 2),
                 *_VEGETATION, _NDRE),
    ),
    SensorProfile(
        id="sentera-6x", name="Sentera 6X", category="multispectral",
        band_count=6, data_type="UInt16", priority=10,
        patterns=("Sentera", "6X"),
        bands=("Blue", "Green", "Red", "Red Edge 1", "Red Edge 2", "NIR"),
        presets=(_bands("true-color", _TRUE_COLOR, 3, 2, 1, default=True),
                 _bands("false-color-ir", "Color Infrared (CIR)", 6, 3, 2),
                 *_VEGETATION, _NDRE),
    ),
    SensorProfile(
        id="worldview-2", name="WorldView-2", category="multispectral",
        band_count=8, data_type="UInt16", priority=10,
        patterns=("WV02", "WorldView-2", "WorldView"),
        bands=("Coastal", "Blue", "Green", "Yellow", "Red", "Red Edge", "NIR1", "NIR2"),
        presets=(_bands("true-color", _TRUE_COLOR, 5, 3, 2, default=True),
                 _bands("false-color-ir", "Color Infrared", 7, 5, 3),
                 *_VEGETATION, _NDRE),
    ),
    SensorProfile(
        id="worldview-3", name="WorldView-3", category="multispectral",
        band_count=16, data_type="UInt16", priority=12,
        patterns=("WV03", "WorldView-3"),
        bands=("Coastal", "Blue", "Green", "Yellow", "Red", "Red Edge", "NIR1", "NIR2",
               "SWIR 1", "SWIR 2", "SWIR 3", "SWIR 4", "SWIR 5", "SWIR 6", "SWIR 7", "SWIR 8"),
        presets=(_bands("true-color", _TRUE_COLOR, 5, 3, 2, default=True),
                 _bands("false-color-ir", "Color Infrared", 7, 5, 3),
                 _bands("swir-composite", "SWIR Composite", 10, 7, 5),
                 *_VEGETATION, _NDRE),
    ),
    SensorProfile(
        id="generic-4band", name="Generic 4-Band (BGRN)", category="multispectral",
        band_count=4, data_type="UInt16", priority=0,
        patterns=(),
        bands=("Blue", "Green", "Red", "NIR"),
        presets=(_bands("true-color", _TRUE_COLOR, 3, 2, 1, default=True),
                 _bands("false-color-ir", "Color Infrared", 4, 3, 2),
                 *_VEGETATION),
    ),
    SensorProfile(
        id="flir-vue-pro-r", name="FLIR Vue Pro R", category="thermal",
        band_count=1, data_type=None, priority=10,
        patterns=("FLIR", "Vue Pro"), bands=("LWIR",), presets=_THERMAL,
    ),
    SensorProfile(
        id="dji-h20t", name="DJI Zenmuse H20T", category="thermal",
        band_count=1, data_type=None, priority=10,
        patterns=("H20T", "ZH20T", "Zenmuse H20T"), bands=("LWIR",), presets=_THERMAL,
    ),
    SensorProfile(
        id="dji-mavic-3t", name="DJI Mavic 3T", category="thermal",
        band_count=1, data_type=None, priority=10,
        patterns=("Mavic 3T", "M3T", "Mavic 3 Enterprise"), bands=("LWIR",), presets=_THERMAL,
    ),
)

# Stable sort: among equal priorities the table order decides.
_BY_PRIORITY = tuple(sorted(PROFILES, key=lambda p: -p.priority))

PROFILES_BY_ID: dict[str, SensorProfile] = {p.id: p for p in PROFILES}

_THERMAL_WORDS = ("thermal", "lwir", "temperature", "celsius", "kelvin", "flir", "tirs")


def detect_sensor(traits: RasterTraits) -> SensorMatch | None:
    """The sensor of a raster (module rules), or None for RGB(A) and unrecognised rasters."""
    count, data_type = traits.band_count, traits.data_type
    if count == 0:
        return None
    if data_type == "Byte" and (count == 3 or (count == 4 and traits.last_band_is_alpha)):
        return None
    for profile in _BY_PRIORITY:
        if _matches(profile, traits):
            names: tuple[str | None, ...] = profile.bands
            if not profile.patterns:
                names = tuple(
                    _description(traits, i) or name for i, name in enumerate(profile.bands)
                )
            return SensorMatch(profile=profile, category=profile.category, band_names=names)
    if count > 3 and data_type != "Byte":
        names = tuple(
            None if i + 1 == traits.alpha_band else
            _description(traits, i) or _colorinterp(traits, i) for i in range(count)
        )
        return SensorMatch(profile=None, category="multispectral", band_names=names)
    return None


def _matches(profile: SensorProfile, traits: RasterTraits) -> bool:
    effective = traits.band_count - 1 if traits.last_band_is_alpha else traits.band_count
    if profile.band_count not in (effective, traits.band_count):
        return False
    if profile.data_type is not None and profile.data_type != traits.data_type:
        return False
    if profile.patterns:
        return any(p in item for p in profile.patterns for item in traits.metadata)
    return True


def _description(traits: RasterTraits, index: int) -> str | None:
    if index < len(traits.descriptions):
        return traits.descriptions[index] or None
    return None


def _colorinterp(traits: RasterTraits, index: int) -> str | None:
    return traits.colorinterp[index] if index < len(traits.colorinterp) else None


def band_letters(names: Sequence[str | None]) -> list[str | None]:
    """The band letter of each band name (module rules); each letter goes to one band."""
    letters: list[str | None] = []
    seen: set[str] = set()
    for name in names:
        letter = band_letter(name or "")
        if letter is not None and letter not in seen:
            seen.add(letter)
            letters.append(letter)
        else:
            letters.append(None)
    return letters


def band_letter(name: str) -> str | None:
    """The band letter a band name (a description or a GDAL colour interpretation) means,
    case-insensitively, or None (module rules)."""
    lower = name.strip().lower()
    if any(word in lower for word in ("red edge", "rededge", "red-edge", "red_edge")):
        return "Re"
    for prefix, letter in (("red", "R"), ("green", "G"), ("blue", "B"), ("nir", "N"),
                           ("near infrared", "N"), ("near-infrared", "N"), ("near_infrared", "N")):
        if lower.startswith(prefix):
            return letter
    if lower in ("lwir", "tir") or "thermal" in lower:
        return "T"
    return None


def looks_thermal(traits: RasterTraits) -> bool:
    """Whether a raster says it holds temperatures: a word like ``thermal``, ``LWIR``,
    ``temperature``, ``celsius`` or ``FLIR`` in its band descriptions or metadata."""
    texts = [d for d in traits.descriptions if d] + list(traits.metadata)
    return any(word in text.lower() for text in texts for word in _THERMAL_WORDS)


def fallback_presets(letters: Sequence[str | None]) -> tuple[Preset, ...]:
    """Presets for a raster without a sensor profile, from its band letters (band order):
    ``true-color`` (R, G, B) and ``false-color-ir`` (N, R, G) when those bands exist, the
    vegetation index presets and the thermal ones (validated later against the bands)."""
    position = {letter: i + 1 for i, letter in enumerate(letters) if letter is not None}
    presets: list[Preset] = []
    if all(k in position for k in ("R", "G", "B")):
        presets.append(_bands("true-color", _TRUE_COLOR, position["R"], position["G"],
                              position["B"], default=True))
    if all(k in position for k in ("N", "R", "G")):
        presets.append(_bands("false-color-ir", "False Color Infrared", position["N"],
                              position["R"], position["G"]))
    non_default_thermal = tuple(
        Preset(id=p.id, name=p.name, formula=p.formula, colormap=p.colormap) for p in _THERMAL
    )
    return (*presets, *_VEGETATION, _NDRE, *non_default_thermal)


def preset_ids() -> tuple[str, ...]:
    """Every preset id some raster can have (the profiles' and the fallback ones), in table
    order: the values a client may offer for ``preset``."""
    ids: dict[str, None] = {}
    for profile in PROFILES:
        ids.update((p.id, None) for p in profile.presets)
    ids.update((p.id, None) for p in fallback_presets(("R", "G", "B", "N")))
    return tuple(ids)
