"""tools.raster.cog.write_cog: valid COGs with exact pixels, georeferencing and overviews, written in
parallel pieces (local threads, a LocalCluster client, inside a worker task), atomically."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask.array
import numpy as np
import pytest
import rasterio
import rioxarray
import xarray as xr
from affine import Affine
from distributed import Client, LocalCluster, get_task_stream
from rio_cogeo.cogeo import cog_validate

import tools.raster.cog._tiff
from tests.harness import write_geotiff
from tools.contract import Cancelled
from tools.raster.cog import CogInfo, write_cog

WIDTH, HEIGHT = 1000, 777  # odd sizes that do not divide into blocks
TRANSFORM = Affine(10.0, 0.0, 399960.0, 0.0, -10.0, 5700000.0)
NODATA = -9999.0


def to_dataarray(pixels: np.ndarray, *, chunks: int | None = 256,
                 transform: Affine = TRANSFORM, crs: str = "EPSG:32633") -> xr.DataArray:
    _, h, w = pixels.shape
    data: Any = pixels if chunks is None else dask.array.from_array(pixels, chunks=(-1, chunks, chunks))
    da = xr.DataArray(
        data, dims=("band", "y", "x"),
        coords={"band": np.arange(1, pixels.shape[0] + 1),
                "y": transform.f + (np.arange(h) + 0.5) * transform.e,
                "x": transform.c + (np.arange(w) + 0.5) * transform.a},
    )
    return da.rio.write_crs(crs)


def smooth(count: int, h: int = HEIGHT, w: int = WIDTH, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bands = [120 + 80 * np.sin(xx / (37 + 11 * b)) * np.cos(yy / (53 + 7 * b)) for b in range(count)]
    return np.stack(bands) + rng.normal(0, 4, (count, h, w)).astype(np.float32)


def rgb() -> np.ndarray:
    return np.clip(smooth(3), 0, 255).astype(np.uint8)


def rgba() -> np.ndarray:
    colour = rgb()
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    alpha = np.where((xx - 500) ** 2 + (yy - 380) ** 2 < 330**2, 255, 0).astype(np.uint8)
    alpha[100:140, 600:603] = 128  # a few partly transparent pixels
    colour[:, alpha == 0] = 0
    return np.concatenate([colour, alpha[None]])


def float_with_nodata() -> np.ndarray:
    values = smooth(1, seed=1) / 100
    values[0, 200:260, 300:700] = NODATA
    values[0, 500:503, 10:990] = np.nan
    values[0, :, :7] = NODATA
    return values.astype(np.float32)


CASES: dict[str, tuple[Callable[[], np.ndarray], dict[str, Any]]] = {
    "rgb-uint8": (rgb, dict()),
    "rgba-uint8": (rgba, dict(alpha=True)),
    "float32-nodata": (float_with_nodata, dict(nodata=NODATA)),
}


def validate(path: Path) -> None:
    valid, errors, warnings = cog_validate(path, quiet=True)
    assert valid and not errors and not warnings, (errors, warnings)


def read_all(path: Path, overview: int | None = None) -> np.ndarray:
    options = {} if overview is None else {"OVERVIEW_LEVEL": overview}
    with rasterio.open(path, **options) as src:
        return src.read()


def reference_overviews(pixels: np.ndarray, levels: int, *, nodata: float | None,
                        alpha: bool) -> list[np.ndarray]:
    """Each level from the one above: the mean of the valid pixels of every 2×2 window (not
    nodata, not NaN, alpha > 0 for colour bands), rounded half up for integers; a window
    without valid pixels gets nodata (or 0); the alpha band is averaged over the raster."""
    out, current = [], pixels
    for _ in range(levels):
        c, h, w = current.shape
        h2, w2 = (h + 1) // 2, (w + 1) // 2
        nxt = np.zeros((c, h2, w2), current.dtype)
        for b in range(c):
            for y in range(h2):
                win_rows = current[:, 2 * y:2 * y + 2]
                for x in range(w2):
                    window = win_rows[:, :, 2 * x:2 * x + 2]
                    values = window[b].astype(np.float64).ravel()
                    ok = np.ones(values.shape, bool)
                    if not (alpha and b == c - 1):
                        if alpha:
                            ok &= window[c - 1].ravel() > 0
                        if nodata is not None:
                            ok &= values != nodata
                        ok &= ~np.isnan(values)
                    if not ok.any():
                        nxt[b, y, x] = nodata if nodata is not None else 0
                        continue
                    mean = values[ok].mean()
                    nxt[b, y, x] = np.floor(mean + 0.5) if current.dtype.kind in "ui" else mean
        out.append(nxt)
        current = nxt
    return out


class Recorder:
    """A reporter that records progress and cancels after ``cancel_after`` checks."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.cancel_after = cancel_after
        self.checks = 0
        self.events: list[tuple[float | None, str | None]] = []
        self.lines: list[str] = []

    def progress(self, fraction: float | None, phase: str | None = None) -> None:
        self.events.append((fraction, phase))

    def log(self, message: str) -> None:
        self.lines.append(message)

    def cancelled(self) -> bool:
        return self.cancel_after is not None and self.checks >= self.cancel_after

    def check_cancelled(self) -> None:
        self.checks += 1
        if self.cancelled():
            raise Cancelled()


# ------------------------------------------------------------------------------ output


@pytest.mark.parametrize("case", list(CASES))
def test_writes_valid_cog_with_exact_pixels_size_crs_and_transform(case: str, tmp_path: Path) -> None:
    make, options = CASES[case]
    pixels = make()
    dst = tmp_path / "out.tif"

    info = write_cog(to_dataarray(pixels), dst, **options)

    validate(dst)
    assert info == CogInfo(path=dst, width=WIDTH, height=HEIGHT, count=pixels.shape[0],
                           dtype=str(pixels.dtype), overviews=(2,))
    with rasterio.open(dst) as src:
        assert (src.width, src.height, src.count) == (WIDTH, HEIGHT, pixels.shape[0])
        assert src.crs == rasterio.crs.CRS.from_epsg(32633)
        assert src.transform == TRANSFORM
        assert src.overviews(1) == [2]
        assert src.block_shapes == [(512, 512)] * src.count
        assert src.compression == rasterio.enums.Compression.deflate
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.nodata == options.get("nodata")
        np.testing.assert_array_equal(src.read(), pixels)
    assert sorted(tmp_path.iterdir()) == [dst]


def test_a_raster_within_one_block_has_no_overviews_and_takes_nodata_from_the_array(
        tmp_path: Path) -> None:
    pixels = float_with_nodata()[:, :300, :512]
    dst = tmp_path / "out.tif"

    info = write_cog(to_dataarray(pixels).rio.write_nodata(NODATA), dst)

    validate(dst)
    assert info.overviews == ()
    with rasterio.open(dst) as src:
        assert (src.width, src.height, src.nodata) == (512, 300, NODATA)
        assert src.overviews(1) == []
        np.testing.assert_array_equal(src.read(), pixels)


def test_rgb_and_rgba_are_read_as_colour_with_alpha(tmp_path: Path) -> None:
    write_cog(to_dataarray(rgb()), tmp_path / "rgb.tif")
    write_cog(to_dataarray(rgba()), tmp_path / "rgba.tif", alpha=True)

    ci = rasterio.enums.ColorInterp
    with rasterio.open(tmp_path / "rgb.tif") as src:
        assert src.colorinterp == (ci.red, ci.green, ci.blue)
    with rasterio.open(tmp_path / "rgba.tif") as src:
        assert src.colorinterp == (ci.red, ci.green, ci.blue, ci.alpha)
        assert src.mask_flag_enums[0] == [rasterio.enums.MaskFlags.per_dataset,
                                          rasterio.enums.MaskFlags.alpha]
        np.testing.assert_array_equal(src.dataset_mask(), rgba()[3])


@pytest.mark.parametrize("case", ["rgba-uint8", "float32-nodata"])
def test_overviews_go_down_to_one_block_and_follow_the_reference(case: str, tmp_path: Path) -> None:
    make, options = CASES[case]
    pixels = make()
    dst = tmp_path / "out.tif"

    info = write_cog(to_dataarray(pixels, chunks=100), dst, blocksize=32, piece_size=64, **options)

    validate(dst)
    assert len(info.overviews) == 5  # 1000 → 500 → 250 → 125 → 63 → 32
    expected = reference_overviews(pixels, 5, nodata=options.get("nodata"),
                                   alpha=bool(options.get("alpha")))
    for level, want in enumerate(expected):
        got = read_all(dst, overview=level)
        assert got.shape == want.shape
        if pixels.dtype.kind == "f":
            np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True)
        else:
            np.testing.assert_array_equal(got, want)


def test_nearest_overviews_take_the_top_left_pixel_of_each_window(tmp_path: Path) -> None:
    pixels = rgb()
    dst = tmp_path / "out.tif"
    write_cog(to_dataarray(pixels), dst, overview_resampling="nearest", blocksize=64,
              piece_size=128)

    validate(dst)
    for level in range(4):
        step = 2 ** (level + 1)
        np.testing.assert_array_equal(read_all(dst, overview=level), pixels[:, ::step, ::step])


def test_piece_size_and_source_chunks_change_no_byte_of_the_output(tmp_path: Path) -> None:
    pixels = rgba()
    write_cog(to_dataarray(pixels, chunks=77), tmp_path / "small.tif", alpha=True, blocksize=32,
              piece_size=64)
    write_cog(to_dataarray(pixels, chunks=None), tmp_path / "large.tif", alpha=True, blocksize=32,
              piece_size=1024)

    assert (tmp_path / "small.tif").read_bytes() == (tmp_path / "large.tif").read_bytes()


def test_tiles_are_framed_the_way_the_ghost_header_says(tmp_path: Path) -> None:
    dst = tmp_path / "out.tif"
    write_cog(to_dataarray(rgb()), dst)

    raw = dst.read_bytes()
    assert raw[8:8 + 30] == b"GDAL_STRUCTURAL_METADATA_SIZE="
    with rasterio.open(dst) as src:
        offsets = []
        for row, col in [(0, 0), (0, 1), (1, 0), (1, 1)]:
            offset = int(src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1))
            size = int(src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1))
            assert struct.unpack_from("<I", raw, offset - 4)[0] == size
            assert raw[offset + size:offset + size + 4] == raw[offset + size - 4:offset + size]
            offsets.append(offset)
        assert offsets == sorted(offsets)  # row-major


@pytest.mark.parametrize("compress", ["ZSTD", "LZW", "NONE"])
def test_other_compressions_round_trip(compress: str, tmp_path: Path) -> None:
    pixels = float_with_nodata()
    dst = tmp_path / "out.tif"
    write_cog(to_dataarray(pixels), dst, compress=compress, nodata=NODATA)

    validate(dst)
    with rasterio.open(dst) as src:
        assert (src.compression.name.upper() if src.compression else "NONE") == compress
        np.testing.assert_array_equal(src.read(), pixels)


def test_tags_band_descriptions_and_bigtiff(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tools.raster.cog._tiff, "BIGTIFF_THRESHOLD", 0)
    dst = tmp_path / "out.tif"
    write_cog(to_dataarray(rgba()), dst, alpha=True, tags={"SOURCE": "test", "FORMULA": "NDVI"},
              band_descriptions=["red", "green", "blue", "alpha"])

    assert dst.read_bytes()[:4] == b"II+\x00"
    validate(dst)
    with rasterio.open(dst) as src:
        assert src.tags()["SOURCE"] == "test" and src.tags()["FORMULA"] == "NDVI"
        assert src.descriptions == ("red", "green", "blue", "alpha")
        np.testing.assert_array_equal(src.read(), rgba())


def test_reads_a_lazy_file_whose_chunks_do_not_line_up(tmp_path: Path) -> None:
    src_path = tmp_path / "src.tif"
    pixels = rgb()
    write_geotiff(src_path, pixels, transform=TRANSFORM, tile=256, compress="DEFLATE")
    da = rioxarray.open_rasterio(src_path, chunks={"band": -1, "y": 300, "x": 300}, lock=False)
    assert isinstance(da, xr.DataArray)
    dst = tmp_path / "out.tif"
    reporter = Recorder()

    write_cog(da, dst, reporter=reporter, blocksize=64, piece_size=128)

    validate(dst)
    np.testing.assert_array_equal(read_all(dst), pixels)
    assert any("do not line up" in line for line in reporter.lines)


def test_in_memory_and_two_dimensional_arrays(tmp_path: Path) -> None:
    pixels = float_with_nodata()
    da = to_dataarray(pixels, chunks=None).isel(band=0)
    dst = tmp_path / "out.tif"
    write_cog(da, dst, nodata=NODATA)

    validate(dst)
    np.testing.assert_array_equal(read_all(dst), pixels)


def test_progress_reports_rendering_then_overviews(tmp_path: Path) -> None:
    reporter = Recorder()
    write_cog(to_dataarray(rgb()), tmp_path / "out.tif", reporter=reporter, blocksize=32,
              piece_size=64)

    phases = [p for _, p in reporter.events]
    assert phases[0] == "rendering" and "overviews" in phases and phases[-1] == "assembling"
    rendering = [f for f, p in reporter.events if p == "rendering" and f is not None]
    assert rendering == sorted(rendering) and rendering[-1] <= 1.0
    assert reporter.events[-1] == (1.0, "assembling")
    assert reporter.lines[-1].startswith("Wrote out.tif")


def test_rejects_options_it_cannot_honour(tmp_path: Path) -> None:
    da = to_dataarray(rgb())
    bad: list[dict[str, Any]] = [dict(blocksize=500), dict(compress="JPEG2000"), dict(nodata=300),
                                 dict(predictor=3), dict(overview_resampling="cubic"),
                                 dict(band_descriptions=["one"]), dict(piece_size=3000)]
    for options in bad:
        with pytest.raises(ValueError):
            write_cog(da, tmp_path / "out.tif", **options)
    with pytest.raises(ValueError):
        write_cog(to_dataarray(float_with_nodata()), tmp_path / "out.tif", alpha=True)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ atomicity


def test_cancelling_leaves_nothing_and_keeps_an_existing_file(tmp_path: Path) -> None:
    dst = tmp_path / "out.tif"
    dst.write_bytes(b"previous export")
    reporter = Recorder(cancel_after=3)

    with pytest.raises(Cancelled):
        write_cog(to_dataarray(rgba()), dst, reporter=reporter, alpha=True, blocksize=32,
                  piece_size=64)

    assert reporter.checks == 3
    assert list(tmp_path.iterdir()) == [dst]
    assert dst.read_bytes() == b"previous export"


def test_a_stop_signal_cancels_pieces_too(tmp_path: Path) -> None:
    class StopAfter:
        def __init__(self, n: int) -> None:
            self.n = n

        def check(self) -> None:
            self.n -= 1
            if self.n < 0:
                raise Cancelled()

    with pytest.raises(Cancelled):
        write_cog(to_dataarray(rgb()), tmp_path / "out.tif", stop=StopAfter(50), blocksize=32,
                  piece_size=64)
    assert list(tmp_path.iterdir()) == []


def test_an_error_in_the_source_leaves_nothing(tmp_path: Path) -> None:
    def explode(block: np.ndarray, block_info: Any = None) -> np.ndarray:
        if block_info[0]["chunk-location"][1:] == (2, 3):
            raise RuntimeError("bad chunk")
        return block

    da = to_dataarray(rgb())
    da = da.copy(data=da.data.map_blocks(explode, dtype=da.dtype))

    with pytest.raises(RuntimeError, match="bad chunk"):
        write_cog(da, tmp_path / "out.tif")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ on a cluster


@pytest.fixture(scope="module")
def threads_cluster() -> Iterator[LocalCluster]:
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                           dashboard_address=":0")
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def client(threads_cluster: LocalCluster) -> Iterator[Client]:
    with Client(threads_cluster) as c:  # the default client while the test runs
        yield c


def test_runs_its_pieces_on_the_cluster_of_the_default_client(client: Client, tmp_path: Path) -> None:
    pixels = rgba()
    dst = tmp_path / "out.tif"

    with get_task_stream(client) as stream:
        write_cog(to_dataarray(pixels), dst, alpha=True, blocksize=64, piece_size=128)

    validate(dst)
    np.testing.assert_array_equal(read_all(dst), pixels)
    pieces = [t for t in stream.data if str(t["key"]).startswith("cog-")]
    assert len(pieces) > 20
    assert len({t["worker"] for t in pieces}) == 2
    assert sorted(tmp_path.iterdir()) == [dst]


def test_writes_an_array_persisted_on_the_cluster(client: Client, tmp_path: Path) -> None:
    pixels = rgba()
    da = to_dataarray(pixels).persist()
    dst = tmp_path / "out.tif"

    for lazy in (da, da + 0):  # the chunks themselves; a graph on top of them
        write_cog(lazy, dst, alpha=True, blocksize=64, piece_size=128)

        validate(dst)
        np.testing.assert_array_equal(read_all(dst), pixels)


def test_cancelling_on_the_cluster_leaves_nothing(client: Client, tmp_path: Path) -> None:
    with pytest.raises(Cancelled):
        write_cog(to_dataarray(rgba()), tmp_path / "out.tif", reporter=Recorder(cancel_after=2),
                  alpha=True, blocksize=32, piece_size=64)
    assert list(tmp_path.iterdir()) == []


def test_runs_as_a_task_on_worker_processes(dask_address: str, tmp_path: Path) -> None:
    """As in the service: the tool runs in a task and fans pieces out with worker_client."""
    pixels = float_with_nodata()
    dst = tmp_path / "out.tif"
    with Client(dask_address, set_as_default=False) as c:
        future = c.submit(write_cog, to_dataarray(pixels), dst, nodata=NODATA, blocksize=64,
                          piece_size=128, pure=False)
        info = future.result(timeout=120)

    assert info.path == dst and info.overviews == (2, 4, 8, 16)
    validate(dst)
    np.testing.assert_array_equal(read_all(dst), pixels)
    assert sorted(tmp_path.iterdir()) == [dst]
