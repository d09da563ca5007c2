"""align-raster: accuracy on synthetic pairs with known misregistration, the output, and the
tool over the real service (validation, indexing, result JSON in the log, cancel)."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import Resampling, reproject
from rio_cogeo.cogeo import cog_validate

from tests.harness import World, write_geotiff
from tools.align import registration as reg
from tools.align.synthetic import corner_error_px, write_texture
from tools.align_raster import AlignResult, align
from tools.contract import InvalidParams, PrintReporter, ToolError

PIXEL = 0.1
ORIGIN = (500000.0, 4500000.0)


@dataclass(frozen=True)
class Case:
    name: str
    kind: str = "rgb"
    shift_px: tuple[float, float] = (3.37, -5.81)
    theta_deg: float = 0.0
    scale: float = 1.0
    noise: float = 0.05
    z_offset: float = 0.0
    size: int = 512


@dataclass(frozen=True)
class Pair:
    case: Case
    source: Path
    reference: Path
    truth: reg.Similarity
    source_transform: Affine


def make_pair(folder: Path, case: Case, *, reference_crs: str | None = None) -> Pair:
    size = case.size
    src_t = Affine(PIXEL, 0, ORIGIN[0], 0, -PIXEL, ORIGIN[1])
    margin = 0.25 * size * PIXEL
    ref_t = Affine(PIXEL, 0, ORIGIN[0] - margin, 0, -PIXEL, ORIGIN[1] + margin)
    theta = math.radians(case.theta_deg)
    centre = (ORIGIN[0] + size * PIXEL * 0.43, ORIGIN[1] - size * PIXEL * 0.58)  # off-centre
    truth = reg.Similarity(a=case.scale * math.cos(theta), b=case.scale * math.sin(theta),
                           tx=case.shift_px[0] * PIXEL, ty=case.shift_px[1] * PIXEL,
                           cx=centre[0], cy=centre[1])
    ref_size = int(size * 1.5)
    reference = folder / f"{case.name}-ref.tif"
    if reference_crs is None:
        write_texture(reference, width=ref_size, height=ref_size, transform=ref_t, kind=case.kind)
    else:
        from rasterio.crs import CRS
        from rasterio.warp import transform, transform_bounds

        # the same ground in another CRS: a grid over the reprojected bounds, texture in EPSG:32633
        left, bottom, right, top = transform_bounds(
            "EPSG:32633", reference_crs, ref_t.c, ref_t.f - ref_size * PIXEL,
            ref_t.c + ref_size * PIXEL, ref_t.f)
        pixel = (right - left) / ref_size
        other_t = Affine(pixel, 0, left, 0, -pixel, top)

        def to_source_crs(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            xs, ys = transform(CRS.from_string(reference_crs), CRS.from_epsg(32633),
                               x.ravel(), y.ravel())
            return np.reshape(xs, x.shape), np.reshape(ys, y.shape)

        write_texture(reference, width=ref_size, height=int((top - bottom) / pixel),
                      transform=other_t, crs=reference_crs, kind=case.kind,
                      map_of=to_source_crs, texture_pixel=PIXEL)
    source = folder / f"{case.name}-src.tif"
    write_texture(source, width=size, height=size, transform=src_t, kind=case.kind, truth=truth,
                  noise=case.noise, nodata_border=12, z_offset=case.z_offset)
    return Pair(case, source, reference, truth, src_t)


CASES = [
    Case("rgb-rotated-shrunk", theta_deg=3.0, scale=0.97),
    Case("rgb-rotated-enlarged-noisy", theta_deg=-1.3, scale=1.03, noise=0.15,
         shift_px=(-7.62, 2.45)),
    Case("dem", kind="elevation", theta_deg=-2.5, scale=1.012, noise=0.02, z_offset=2.5),
]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair]:
    folder = tmp_path_factory.mktemp("align")
    made = {c.name: make_pair(folder, c) for c in CASES}
    made["translation"] = make_pair(folder, Case("translation", shift_px=(4.3, -2.71), noise=0.1))
    made["low-texture"] = make_pair(folder, Case("low-texture", kind="grey"))
    return made


def quiet() -> PrintReporter:
    return PrintReporter(quiet=True)


def estimated(result: AlignResult) -> reg.Similarity:
    return result.model


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_similarity_recovers_the_known_misregistration_to_a_tenth_of_a_pixel(
    pairs: dict[str, Pair], name: str, tmp_path: Path
) -> None:
    pair = pairs[name]
    result = align(pair.source, pair.reference, tmp_path / "out.tif", mode="similarity",
                   reporter=quiet())
    error = corner_error_px(estimated(result), pair.truth, pair.source_transform,
                            pair.case.size, pair.case.size)
    assert error < 0.1, (error, result)
    assert abs(result.thetaDeg - pair.truth.theta_deg) < 0.02
    assert abs(result.scale - pair.truth.scale) < 2e-4
    assert result.inlierRatio > 0.8 and result.confidence > 0.5 and result.warning is None
    valid, errors, _ = cog_validate(str(tmp_path / "out.tif"))
    assert valid, errors


def test_similarity_output_placed_on_the_reference_grid_matches_the_reference(
    pairs: dict[str, Pair], tmp_path: Path
) -> None:
    """Independent check of the written pixels: reproject the output onto the reference's
    grid and measure the residual shift with scikit-image in windows across it."""
    from skimage.registration import phase_cross_correlation

    pair = pairs["rgb-rotated-shrunk"]
    out = tmp_path / "aligned.tif"
    align(pair.source, pair.reference, out, reporter=quiet())
    with rasterio.open(pair.reference) as ref, rasterio.open(out) as aligned:
        reference = ref.read().astype(np.float64).mean(axis=0)
        placed = np.zeros((aligned.count, ref.height, ref.width))
        reproject(aligned.read(), placed, src_transform=aligned.transform, src_crs=aligned.crs,
                  dst_transform=ref.transform, dst_crs=ref.crs, resampling=Resampling.cubic,
                  src_nodata=0, dst_nodata=0)
    luma = placed.mean(axis=0)
    valid = (placed > 0).all(axis=0)
    rows, cols = np.nonzero(valid)
    r0, r1, c0, c1 = rows.min() + 80, rows.max() - 80, cols.min() + 80, cols.max() - 80
    for r, c in [(r0, c0), (r0, c1), (r1, c0), (r1, c1), ((r0 + r1) // 2, (c0 + c1) // 2)]:
        window = (slice(r - 48, r + 48), slice(c - 48, c + 48))
        assert valid[window].all()
        shift, _, _ = phase_cross_correlation(reference[window], luma[window], upsample_factor=100)
        assert np.hypot(*shift) < 0.1, (r, c, shift)
    residual = (luma - reference)[valid]
    assert residual.std() < 0.05 * reference[valid].std()


def test_translation_mode_is_lossless_and_never_reports_rotation_or_scale(
    pairs: dict[str, Pair], tmp_path: Path
) -> None:
    pair = pairs["translation"]
    out = tmp_path / "shifted.tif"
    result = align(pair.source, pair.reference, out, mode="translation", reporter=quiet())
    assert result.thetaDeg == 0.0 and result.scale == 1.0 and result.mode == "translation"
    assert corner_error_px(estimated(result), pair.truth, pair.source_transform, 512, 512) < 0.05
    with rasterio.open(pair.source) as src, rasterio.open(out) as aligned:
        assert np.array_equal(src.read(), aligned.read())  # pixels untouched
        truth = Affine(*pair.truth.coefficients()) @ src.transform
        assert aligned.transform.a == src.transform.a and aligned.transform.e == src.transform.e
        assert abs(aligned.transform.c - truth.c) < 0.05 * PIXEL
        assert abs(aligned.transform.f - truth.f) < 0.05 * PIXEL


def test_translation_mode_on_a_rotated_source_says_so_instead_of_a_wrong_shift(
    pairs: dict[str, Pair]
) -> None:
    pair = pairs["rgb-rotated-shrunk"]
    with pytest.raises(ToolError, match="try mode 'similarity'"):
        align(pair.source, pair.reference, None, mode="translation", reporter=quiet())


def test_elevation_vertical_offset_is_removed_and_reported(
    pairs: dict[str, Pair], tmp_path: Path
) -> None:
    pair = pairs["dem"]
    out = tmp_path / "dem.tif"
    result = align(pair.source, pair.reference, out, mode="similarity", reporter=quiet())
    assert result.shiftZ is not None and abs(result.shiftZ + 2.5) < 0.02
    with rasterio.open(pair.reference) as ref, rasterio.open(out) as aligned:
        placed = np.full((ref.height, ref.width), np.nan, dtype=np.float32)
        reproject(aligned.read(1), placed, src_transform=aligned.transform, src_crs=aligned.crs,
                  dst_transform=ref.transform, dst_crs=ref.crs, resampling=Resampling.bilinear,
                  src_nodata=np.nan, dst_nodata=np.nan)
        difference = placed - ref.read(1)
    assert abs(float(np.nanmedian(difference))) < 0.02


def test_reference_in_another_crs_is_reprojected_with_a_warning(tmp_path: Path) -> None:
    case = Case("other-crs", theta_deg=1.2, scale=1.01)
    pair = make_pair(tmp_path, case, reference_crs="EPSG:32632")
    result = align(pair.source, pair.reference, None, reporter=quiet())
    assert result.warning is not None and "CRS" in result.warning
    error = corner_error_px(estimated(result), pair.truth, pair.source_transform, 512, 512)
    assert error < 0.1, (error, result)


def test_the_same_input_gives_the_same_output_bit_for_bit(
    pairs: dict[str, Pair], tmp_path: Path
) -> None:
    pair = pairs["rgb-rotated-enlarged-noisy"]
    first = align(pair.source, pair.reference, tmp_path / "a.tif", reporter=quiet())
    second = align(pair.source, pair.reference, tmp_path / "b.tif", reporter=quiet())
    assert {**first.to_json(), "output": None} == {**second.to_json(), "output": None}
    digest = [hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ("a.tif", "b.tif")]
    assert digest[0] == digest[1]


def test_a_featureless_source_fails_with_a_clear_error(tmp_path: Path) -> None:
    flat = tmp_path / "flat.tif"
    rng = np.random.default_rng(3)
    write_geotiff(flat, (120 + rng.normal(0, 2, (1, 400, 400))).astype(np.uint8),
                  transform=Affine(PIXEL, 0, ORIGIN[0], 0, -PIXEL, ORIGIN[1]))
    ref = make_pair(tmp_path, Case("flat-ref", kind="grey", size=400)).reference
    with pytest.raises(ToolError, match="could not match"):
        align(flat, ref, None, reporter=quiet())


def test_unrelated_rasters_fail_rather_than_answer_wrongly(tmp_path: Path) -> None:
    source = make_pair(tmp_path, Case("a", kind="grey")).source
    other = tmp_path / "other.tif"
    write_texture(other, width=768, height=768, seed=99, kind="grey",
                  transform=Affine(PIXEL, 0, ORIGIN[0] - 12.8, 0, -PIXEL, ORIGIN[1] + 12.8))
    with pytest.raises(ToolError, match="could not match"):
        align(source, other, None, reporter=quiet())


def test_disjoint_rasters_are_refused_before_any_work(pairs: dict[str, Pair], tmp_path: Path) -> None:
    far = tmp_path / "far.tif"
    write_texture(far, width=256, height=256,
                  transform=Affine(PIXEL, 0, ORIGIN[0] + 1000, 0, -PIXEL, ORIGIN[1]))
    with pytest.raises(InvalidParams, match="covers 0.0% of the source"):
        align(pairs["translation"].source, far, None, reporter=quiet())


# --- the numerical core ------------------------------------------------------------------


def test_refine_shift_finds_a_sub_pixel_shift_to_a_hundredth_of_a_pixel() -> None:
    from tools.align.synthetic import Texture

    texture = Texture.random(seed=5, pixel=1.0, longest_px=200)
    rows, cols = np.arange(128), np.arange(128)
    fixed = texture.on_grid(Affine.identity(), rows, cols)
    moving_grid = Affine.translation(-0.37, 0.81)  # moving(x) = fixed(x + (0.81, -0.37))
    patch = texture.on_grid(moving_grid @ Affine.translation(-8, -8), np.arange(144), np.arange(144))
    sampler = reg.PatchSampler(patch, np.ones_like(patch, bool), lambda r, c: (r + 8, c + 8))
    refined = reg.refine_shift(fixed, np.ones_like(fixed, bool), sampler)
    assert refined is not None and refined.converged
    # moving(x) = fixed(x - d) with d = (dy, dx) = (-0.81, 0.37)
    assert abs(refined.dy + 0.81) < 0.001 and abs(refined.dx - 0.37) < 0.001


def test_robust_fit_ignores_outliers_and_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    truth = reg.Similarity(a=0.999 * math.cos(0.02), b=0.999 * math.sin(0.02), tx=1.5, ty=-2.0,
                           cx=50, cy=50)
    p = rng.uniform(0, 100, (60, 2))
    q = np.column_stack(truth.apply(p[:, 0], p[:, 1]))
    q[::6] += rng.uniform(-5, 5, (10, 2))  # a sixth are wrong matches
    fits = [reg.robust_fit(p, q, centre=(50, 50), mode="similarity", threshold=0.5)
            for _ in range(2)]
    assert fits[0].model == fits[1].model
    assert int(fits[0].inliers.sum()) == 50
    assert abs(fits[0].model.theta_deg - truth.theta_deg) < 1e-9
    inverse = fits[0].model.inverse()
    x, y = inverse.apply(*fits[0].model.apply(np.array([3.0]), np.array([7.0])))
    assert abs(x[0] - 3.0) < 1e-9 and abs(y[0] - 7.0) < 1e-9


# --- the tool over the service ------------------------------------------------------------


def test_align_over_http_writes_an_indexed_cog_and_logs_its_result(
    world: World, pairs: dict[str, Pair]
) -> None:
    pair = pairs["rgb-rotated-shrunk"]
    world.upload("flight/ortho.tif", pair.source.read_bytes())
    world.upload("base/reference.tif", pair.reference.read_bytes())
    response = world.submit("align-raster", {"sourcePath": "flight/ortho.tif",
                                             "referencePath": "base/reference.tif",
                                             "outputPath": "aligned/ortho.tif"})
    assert response.status_code == 202, response.text
    status = world.wait(response.json()["taskId"], timeout=120)
    assert status["state"] == "Succeeded", status
    result = status["result"]
    for key in ("tx", "ty", "thetaDeg", "scale", "shiftZ", "inlierCount", "inlierRatio", "rmse",
                "confidence", "mode", "warning"):
        assert key in result, key
    assert abs(result["thetaDeg"] - 3.0) < 0.02 and result["mode"] == "similarity"
    log = world.user.get(f"{world.tasks_url}/{status['taskId']}/log").json()["lines"]
    logged = [json.loads(line.split("] ", 1)[1]) for line in log if '] {"tx"' in line]
    assert logged and logged[-1] == result and result["output"] == "aligned/ortho.tif"
    entries = world.user.get(f"{world.ds_url}/entries", params={"path": "aligned"}).json()
    entry = next(e for e in entries if e["path"] == "aligned/ortho.tif")
    assert entry["type"] == "georaster"
    valid, errors, _ = cog_validate(str(world.root / "aligned/ortho.tif"))
    assert valid, errors
    assert sorted(p.name for p in (world.root / "aligned").iterdir()) == ["ortho.tif"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sourcePath": "nope.tif"}, "does not exist"),
        ({"referencePath": "../outside.tif"}, ".."),
        ({"sourcePath": "nocrs.tif"}, "no CRS"),
        ({"referencePath": "far.tif"}, "at least 5%"),
        ({"mode": "affine"}, "mode"),
        ({"outputPath": None}, "outputPath"),
        ({"outputPath": "src.tif"}, "must differ"),
        ({"outputPath": "out.png"}, ".tif"),
        ({"outputPath": ".ddb/out.tif"}, ".ddb"),
        ({"sourcePath": "notes.txt"}, "notes.txt is not a raster GDAL can read"),
    ],
)
def test_bad_requests_are_400_before_queueing(
    world: World, pairs: dict[str, Pair], tmp_path: Path, params: dict, message: str
) -> None:
    pair = pairs["translation"]
    world.upload("src.tif", pair.source.read_bytes())
    world.upload("ref.tif", pair.reference.read_bytes())
    world.upload("notes.txt", b"not a raster")
    nocrs = tmp_path / "nocrs.tif"
    write_geotiff(nocrs, np.zeros((1, 64, 64), np.uint8), crs=None)
    world.upload("nocrs.tif", nocrs.read_bytes())
    far = tmp_path / "far.tif"
    write_texture(far, width=128, height=128,
                  transform=Affine(PIXEL, 0, ORIGIN[0] + 50.0, 0, -PIXEL, ORIGIN[1]))
    world.upload("far.tif", far.read_bytes())
    body = {"sourcePath": "src.tif", "referencePath": "ref.tif", "outputPath": "out.tif", **params}
    body = {k: v for k, v in body.items() if v is not None}
    response = world.submit("align-raster", body)
    assert response.status_code == 400, response.text
    assert message.lower() in response.json()["error"].lower()
    assert world.user.get(world.tasks_url).json() == []


def test_cancel_during_matching_stops_promptly_and_leaves_no_output(
    world: World, tmp_path: Path
) -> None:
    pair = make_pair(tmp_path, Case("big", size=3072, noise=0.1, theta_deg=1.0))
    world.upload("big.tif", pair.source.read_bytes())
    world.upload("big-ref.tif", pair.reference.read_bytes())
    task_id = world.submit("align-raster", {"sourcePath": "big.tif", "referencePath": "big-ref.tif",
                                            "outputPath": "out/big.tif"}).json()["taskId"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = world.user.get(f"{world.tasks_url}/{task_id}").json()
        if status["state"] == "Processing" and "matching" in (status["progress"]["phase"] or ""):
            break
        assert status["state"] in ("Created", "Enqueued", "Scheduled", "Processing"), status
        time.sleep(0.05)
    world.cancel_until_stopped(task_id, within=10, what="align-raster")
    time.sleep(0.5)
    assert not (world.root / "out").exists()
    assert sorted(p.name for p in world.root.iterdir() if p.name != ".ddb") == ["big-ref.tif", "big.tif"]
