"""The tutorial notebook runs top to bottom against the session's database."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "tutorial.ipynb"


def test_tutorial_notebook_runs(pipeline, tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel inherits ELEMENT_POSE_HOME / ELEMENT_POSE_PREFIX / DJ_* from this session.
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parents[1])}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(str(o.get("data", {}).get("text/plain", "")) + str(o.get("text", "")) for o in outputs)
    assert "tutorial_net" in text or "frames_below" in text
