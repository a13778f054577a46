"""The notebook runs top to bottom on a small simulated tranche, so it can never rot; it is
stored with the outputs of a full run (python scripts/run_notebook.py)."""
from __future__ import annotations

from typing import Any, List

import pytest

from testing_support.stages import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "time_to_dispatch.ipynb"
SMALL_TRANCHE_ROWS = 500


def _parameters_cell(cells: List[Any]) -> Any:
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    return tagged[0]


def test_notebook_executes_on_a_small_simulated_tranche(monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = _parameters_cell(notebook.cells)
    assert "ROWS = " in parameters.source
    parameters.source += f"\nROWS = {SMALL_TRANCHE_ROWS}\nSTORE = \"\"\n"
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nbclient.NotebookClient(
        notebook, timeout=120, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()

    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"{SMALL_TRANCHE_ROWS} valid rows" in text
    assert "held-out MAE" in text and "noise floor" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3, "the data, the CV choice, the curves and predictions are plotted"


def test_notebook_is_stored_with_its_outputs_and_plots() -> None:
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "run python scripts/run_notebook.py"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) >= 3
