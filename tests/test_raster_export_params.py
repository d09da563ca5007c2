"""raster-export's parameters over real HTTP: the schema lists the allowed values (from the
one definition of formulas, colormaps and presets), band filters inferred from band
descriptions and colour interpretation (the rule named in the log), band errors that name
the band count, and ``rescale: "auto"`` for indices of raw values."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp

from tests.harness import World, write_geotiff
from tools.raster import sensors
from tools.render import colormaps, spectral

SIZE = 256


def write(path: Path, data: np.ndarray, *, descriptions: list[str] | None = None,
          colorinterp: list[ColorInterp] | None = None) -> Path:
    """A GeoTIFF as rasterio writes it by default (a 4-band Byte one gets band 4 as alpha)."""
    return write_geotiff(path, data, pixel=0.1, tile=128, compress="deflate",
                         descriptions=descriptions or (), colorinterp=colorinterp or ())


def vegetation(count: int = 4, *, nir_gain: float = 2.0) -> np.ndarray:
    """Red, green, blue, then NIR = red × ``nir_gain`` in the right half: NDVI 0 | 1/3."""
    rng = np.random.default_rng(0)
    red = rng.integers(40, 80, (SIZE, SIZE)).astype(np.float32)
    nir = red.copy()
    nir[:, SIZE // 2:] *= nir_gain
    bands = [red, red + 10, red + 20, nir, nir][:count]
    return np.stack(bands).astype(np.uint8)


def log_of(world: World, task_id: str) -> list[str]:
    return world.user.get(f"{world.tasks_url}/{task_id}/log").json()["lines"]


def run_export(world: World, params: dict) -> tuple[dict, np.ndarray]:
    response = world.submit("raster-export", params)
    assert response.status_code == 202, response.text
    status = world.wait(response.json()["taskId"])
    assert status["state"] == "Succeeded", status
    content = world.user.get(status["artifact"]["resultUrl"]).content
    with rasterio.MemoryFile(content) as mem, mem.open() as cog:
        return status, cog.read()


def test_the_schema_lists_formulas_colormaps_presets_and_the_band_filter_syntax(
    world: World,
) -> None:
    tools = world.user.get(f"{world.tasks_url}/tools").json()
    schema = next(t for t in tools if t["id"] == "raster-export")["inputSchema"]["properties"]
    assert schema["formula"]["enum"] == [*spectral.FORMULAS, None]
    assert schema["colormap"]["enum"] == [*colormaps.COLORMAPS, None]
    assert schema["preset"]["enum"] == [*sensors.preset_ids(), None]
    assert {"true-color", "false-color-ir", "ndvi", "ironbow"} <= set(schema["preset"]["enum"])
    pattern = re.compile(schema["bandFilter"]["pattern"])
    for ok in ("RGBN", "BGRReN", "RGB_", "T", "", "RGBX"):  # SPEC: an unknown letter skips a band
        assert pattern.fullmatch(ok), ok
    for bad in ("rgbn", "RGB N", "Rgbn", "ReN re"):
        assert not pattern.fullmatch(bad), bad
    assert "auto" in schema["rescale"]["description"]


def test_an_unknown_colormap_is_a_400_listing_the_allowed_ones(world: World, tmp_path: Path) -> None:
    world.upload("field.tif", write(tmp_path / "f.tif", vegetation()).read_bytes())
    response = world.submit("raster-export", {"path": "field.tif", "formula": "NDVI",
                                              "colormap": "sparkles"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error.startswith("invalid parameters for raster-export: colormap: 'sparkles' is not "
                            "one of: rdylgn, discrete_ndvi, "), error
    assert all(name in error for name in colormaps.COLORMAPS) and "None" not in error
    response = world.submit("raster-export", {"path": "field.tif", "bandFilter": "rgbn"})
    assert response.status_code == 400, response.text
    assert "bandFilter: 'rgbn' is not valid: Which band is which" in response.json()["error"]
    assert world.user.get(world.tasks_url).json() == []


def test_band_descriptions_decide_the_band_filter_and_the_log_says_so(
    world: World, tmp_path: Path
) -> None:
    # GDAL marks band 4 of a 4-band Byte TIFF as alpha; its description says it is NIR
    described = write(tmp_path / "d.tif", vegetation(),
                      descriptions=["Red", "Green", "Blue", "NIR"])
    world.upload("flight1/ortho.tif", described.read_bytes())
    status, auto = run_export(world, {"path": "flight1/ortho.tif", "formula": "NDVI",
                                      "colormap": "grayscale"})
    log = log_of(world, status["taskId"])
    assert any("band filter RGBN from band descriptions" in line for line in log), log
    _, given = run_export(world, {"path": "flight1/ortho.tif", "formula": "NDVI",
                                  "colormap": "grayscale", "bandFilter": "RGBN"})
    assert np.array_equal(auto, given)
    assert auto[0, :, SIZE // 2:].mean() > auto[0, :, : SIZE // 2].mean() + 30  # NIR half


def test_colour_interpretation_decides_the_band_filter_when_there_are_no_descriptions(
    world: World, tmp_path: Path
) -> None:
    interp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.rededge,
              ColorInterp.nir]
    data = vegetation(5)[[2, 1, 0, 3, 4]]
    world.upload("ms.tif", write(tmp_path / "ms.tif", data, colorinterp=interp).read_bytes())
    status, _ = run_export(world, {"path": "ms.tif", "formula": "NDRE"})
    log = log_of(world, status["taskId"])
    assert any("band filter BGRReN from colour interpretation" in line for line in log), log


def test_band_errors_name_the_band_count(world: World, tmp_path: Path) -> None:
    world.upload("gray.tif", write(tmp_path / "g.tif", vegetation(1)).read_bytes())
    response = world.submit("raster-export", {"path": "gray.tif", "formula": "NDVI"})
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(
        "the raster has 1 band; formula NDVI needs R and N"), response.text


@pytest.mark.parametrize("rescale", ["auto", "AUTO"])
def test_rescale_auto_spreads_an_index_of_raw_values_over_the_whole_colormap(
    world: World, tmp_path: Path, rescale: str
) -> None:
    # NDVI of these raw numbers is 0 and 1/3: -1..1 puts them at grey 127 and 170
    world.upload("raw.tif", write(tmp_path / "raw.tif", vegetation()).read_bytes())
    params = {"path": "raw.tif", "formula": "NDVI", "bandFilter": "RGBN", "colormap": "grayscale"}
    _, fixed = run_export(world, params)
    assert 120 <= fixed[0].min() and fixed[0].max() <= 175
    status, auto = run_export(world, {**params, "rescale": rescale})
    assert auto[0].min() == 0 and auto[0].max() == 255
    log = log_of(world, status["taskId"])
    assert any("NDVI with grayscale (rescale 2nd-98th percentile)" in line for line in log), log
    bad = world.submit("raster-export", {**params, "rescale": "automatic"})
    assert bad.status_code == 400 and "or 'auto'" in bad.json()["error"], bad.text
