"""raster-export's progress a person can follow: the percent of the ``rendering`` phase moves
tile by tile while pieces run (steps of at most ~5% of the pixels), a log line at least every
10%, and the phases and log lines the README names, over real HTTP and in a notebook-style
call with a recording reporter."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest
from rasterio.transform import from_origin
from rasterio.windows import Window

from tests.harness import World, write_geotiff, write_geotiff_by_windows
from tools.raster_export import export

SIZE = 3072  # 6 × 6 tiles of 512² in 2 × 2 pieces of 2048²: a piece is 44% of the pixels


def write_source(path: Path) -> Path:
    rng = np.random.default_rng(0)
    strips = ((Window(0, row, SIZE, 512), rng.integers(1, 255, (4, 512, SIZE), dtype=np.uint8))
              for row in range(0, SIZE, 512))
    return write_geotiff_by_windows(path, strips, count=4, height=SIZE, width=SIZE,
                                    dtype="uint8", tile=512, compress="deflate")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_source(tmp_path_factory.mktemp("progress") / "field.tif")


class Recorder:
    """A reporter that keeps everything it is told."""

    def __init__(self) -> None:
        self.events: list[tuple[str | None, float | None]] = []
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._phase: str | None = None

    def progress(self, fraction: float | None, phase: str | None = None) -> None:
        with self._lock:
            self._phase = phase or self._phase
            self.events.append((self._phase, fraction))

    def log(self, message: str) -> None:
        self.lines.append(message)

    def cancelled(self) -> bool:
        return False

    def check_cancelled(self) -> None:
        pass

    def fractions(self, phase: str) -> list[float]:
        return [f for p, f in self.events if p == phase and f is not None]


def rendering_tenths(lines: list[str]) -> list[int]:
    """The tenths of the rendering the log lines report (one line per tenth: 1, 2, … 10)."""
    return [int(m.group(1)) // 10 for line in lines
            if (m := re.search(r"Rendering: (\d+)%", line))]


def assert_followable(recorder: Recorder) -> None:
    rendering = recorder.fractions("rendering")
    assert rendering[0] == 0.0 and rendering[-1] == 1.0, rendering
    steps = np.diff(rendering)
    assert (steps >= 0).all() and steps.max() <= 0.06, rendering
    assert rendering_tenths(recorder.lines) == list(range(1, 11)), recorder.lines
    phases = [p for p, _ in recorder.events]
    assert [p for i, p in enumerate(phases) if i == 0 or p != phases[i - 1]] == [
        "rendering", "overviews", "assembling"], phases


def test_notebook_export_reports_rendering_tile_by_tile_in_local_threads(
    source: Path, tmp_path: Path
) -> None:
    recorder = Recorder()
    export(source, tmp_path / "out.tif", reporter=recorder, formula="NDVI", bandFilter="RGBN")
    assert_followable(recorder)
    assert any("4 pieces of 2048²" in line for line in recorder.lines), recorder.lines


def test_notebook_export_reports_rendering_tile_by_tile_on_a_cluster(
    source: Path, tmp_path: Path, dask_address: str
) -> None:
    from distributed import Client

    recorder = Recorder()
    with Client(dask_address, set_as_default=True):
        export(source, tmp_path / "out.tif", reporter=recorder, formula="NDVI",
               bandFilter="RGBN")
    assert_followable(recorder)


def test_a_single_piece_export_says_one_piece(tmp_path: Path) -> None:
    small = tmp_path / "small.tif"
    write_geotiff(small, np.ones((3, 600, 600), np.uint8), transform=from_origin(0, 600, 1, 1))
    recorder = Recorder()
    export(small, tmp_path / "out.tif", reporter=recorder)
    assert any("1 piece of 2048², 1 overview," in line for line in recorder.lines), recorder.lines
    assert any(line.startswith("Wrote out.tif: 600×600×") and ", 1 overview, " in line
               for line in recorder.lines), recorder.lines


def test_the_service_log_follows_the_rendering_and_names_the_readme_phases(
    world: World, source: Path
) -> None:
    world.upload("field.tif", source.read_bytes())
    response = world.submit("raster-export", {"path": "field.tif", "formula": "EXG"})
    assert response.status_code == 202, response.text
    task_id = response.json()["taskId"]
    seen: list[tuple[str, str | None, int]] = []
    status = world.wait(task_id, states=("Processing",))
    while status["state"] not in ("Succeeded", "Failed"):
        seen.append((status["state"], status["progress"]["phase"], status["progress"]["percent"]))
        status = world.user.get(f"{world.tasks_url}/{task_id}").json()
    assert status["state"] == "Succeeded", status
    lines = world.user.get(f"{world.tasks_url}/{task_id}/log").json()["lines"]
    assert rendering_tenths(lines) == list(range(1, 11)), lines
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    guide = readme[readme.index("Follow it: the status has"):]
    guide = " ".join(guide[: guide.index("```")].split())
    phases = [phase for _, phase, _ in seen if phase]
    assert phases and set(phases) <= {"percentiles", "rendering", "overviews", "assembling",
                                      "storing artifact"}, seen
    described = re.search(r"raster-export reports (.*?); align-raster", guide)
    assert described, guide
    named = re.findall(r"`([a-z ]+)`", described.group(1))
    assert named == ["percentiles", "rendering", "overviews", "assembling", "storing artifact"]
    assert [p for p in named if p in phases] == list(dict.fromkeys(phases)), (named, phases)
    states = re.findall(r"`([A-Z][a-z]+)`", guide[: guide.index("progress:")])
    features = world.user.get("/sys/features").json()["taskStates"]
    assert states == [s["value"] for s in features], states
