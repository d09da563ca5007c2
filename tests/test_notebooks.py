"""The notebooks in ``notebooks/`` run top to bottom in a fresh Jupyter kernel, on the data they
generate themselves, so they cannot rot: every cell runs without error, every cell that shows a
figure produced a PNG, and the printed results say what the notebook claims.

The notebooks are executed in memory (nbclient) and never written back: the files in git stay
without outputs. The kernel is ``python3``; jupyter_client starts the ``python`` of that
kernelspec as ``sys.executable`` (the Python running the tests), which the appended last cell
checks.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import nbclient
import nbformat
import pytest

from tests.conftest import World

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT = 180
KERNEL_CHECK = "import sys; print(sys.executable)"


def execute(name: str) -> Any:
    """Run a notebook in a fresh kernel (cwd ``notebooks/``); returns the executed notebook.

    Raises nbclient's CellExecutionError (with the cell's traceback) on the first failing cell.
    """
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(KERNEL_CHECK))
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=CELL_TIMEOUT, allow_errors=False,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()
    check = nb.cells.pop()
    assert stream(check, "stdout").strip() == sys.executable, (
        "the notebook kernel runs another Python than the tests",
        stream(check, "stdout"), sys.executable,
    )
    for cell in code_cells(nb):
        assert cell.execution_count is not None, cell.source
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, (cell.source, errors)
    return nb


def code_cells(nb: Any) -> list[Any]:
    return [c for c in nb.cells if c.cell_type == "code"]


def stream(cell: Any, name: str) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == name)


def stdout(nb: Any) -> str:
    return "\n".join(stream(c, "stdout") for c in code_cells(nb))


def has_png(cell: Any) -> bool:
    return any(
        o.output_type in ("display_data", "execute_result") and "image/png" in o.data
        for o in cell.outputs
    )


def assert_figures(nb: Any, at_least: int) -> None:
    """Every cell that shows a figure (``plt.show()``) displayed a PNG; there are enough."""
    showing = [c for c in code_cells(nb) if "plt.show()" in c.source]
    assert len(showing) >= at_least, [c.source[:80] for c in showing]
    for cell in showing:
        assert has_png(cell), (cell.source, cell.outputs)


def number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match is not None, (pattern, text)
    return float(match.group(1))


# --- the files ---------------------------------------------------------------------------


def test_notebooks_are_saved_clean_and_start_with_what_they_show() -> None:
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == [
        "01_ndvi_local_cluster.ipynb", "02_ndvi_rest_client.ipynb", "03_align_rasters.ipynb",
    ]
    for name in names:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
        assert nb.metadata.kernelspec.name == "python3"
        for cell in code_cells(nb):
            assert cell.outputs == [] and cell.execution_count is None, (name, cell.source[:80])


# --- (a) NDVI with the tools graph API on a LocalCluster ------------------------------------


def test_ndvi_local_cluster_notebook() -> None:
    nb = execute("01_ndvi_local_cluster.ipynb")
    assert_figures(nb, 3)  # the source, the NDVI with its colour bar, the RGBA rendering
    out = stdout(nb)
    assert "processes=2 threads=2" in out  # the notebook's own LocalCluster
    assert -0.6 < number(r"mean (-?[\d.]+), max", out) < 0.6
    assert "index: NDVI float32" in out
    assert "bands: ('red', 'green', 'blue', 'alpha') uint8" in out
    assert "Exporting field.tif: NDVI with rdylgn" in out  # export()'s log
    for line in ("driver: GTiff", "dtype: uint8", "width: 1024", "height: 1024", "count: 4",
                 "crs: EPSG:32633", "tiled: True", "overviews: [2]"):
        assert f"  {line}\n" in out, line


# --- (b) the same through the REST client, on a live service --------------------------------


@pytest.mark.parametrize("server", ["local-cluster"], indirect=True)
def test_ndvi_rest_client_notebook(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel inherits the environment: the notebook reads the service from it.
    monkeypatch.setenv("PROCPLAT_URL", world.server.url)
    monkeypatch.setenv("PROCPLAT_TOKEN", world.token)
    monkeypatch.setenv("PROCPLAT_DATASET", f"{world.org}/{world.ds}")
    nb = execute("02_ndvi_rest_client.ipynb")
    assert_figures(nb, 1)  # the downloaded artifact
    out = stdout(nb)
    assert f"dataset {world.org}/{world.ds}" in out
    assert "notebook/field.tif georaster" in out and "  bandCount: 4\n" in out  # indexed
    assert "deduplicated: False" in out
    assert "state: Succeeded" in out
    assert "Exporting notebook/field.tif: NDVI with rdylgn" in out  # the task's log (its dataset path)
    waited = "".join(stream(c, "stderr") for c in code_cells(nb))  # wait(progress=True)
    assert "100%|" in waited, waited[-500:]  # a tqdm bar, drawn in the notebook too
    for line in ("driver: GTiff", "width: 512", "count: 4", "crs: EPSG:32633"):
        assert f"  {line}\n" in out, line
    tasks = world.user.get(world.tasks_url).json()
    assert [(t["toolId"], t["state"]) for t in tasks] == [("raster-export", "Succeeded")]
    assert tasks[0]["artifact"]["fileName"] == "field_ndvi.tif"


# --- (c) aligning two rasters ---------------------------------------------------------------


def test_align_rasters_notebook() -> None:
    nb = execute("03_align_rasters.ipynb")
    assert_figures(nb, 2)  # the difference before, before and after
    out = stdout(nb)
    assert number(r"residual misregistration at the corners: ([\d.]+) px", out) < 0.1
    before = number(r"mean \|source - reference\|: before ([\d.]+)", out)
    after = number(r"mean \|source - reference\|: before [\d.]+, after ([\d.]+)", out)
    assert after < before / 3, (before, after)
    assert '"mode": "similarity"' in out and '"warning": null' in out
