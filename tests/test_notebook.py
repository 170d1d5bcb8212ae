"""The notebooks run top to bottom against the session's database."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "tutorial.ipynb"
REFINEMENT = NOTEBOOK.with_name("refinement.ipynb")


def run_notebook(path: Path) -> str:
    """Execute a notebook from the repository root; fail on any error; return its text output."""
    notebook = nbformat.read(path, as_version=4)
    # The kernel inherits ELEMENT_POSE_HOME / ELEMENT_POSE_PREFIX / DJ_* from this session.
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parents[1])}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    return "".join(str(o.get("data", {}).get("text/plain", "")) + str(o.get("text", "")) for o in outputs)


def test_tutorial_notebook_runs(pipeline, tmp_path):
    """On a shared database: another user's pending work stays theirs."""
    from conftest import write_video

    root = Path(pipeline.get_pose_root_data_dir()[0])
    pipeline.Subject.insert1({"subject": "other_users_mouse"}, skip_duplicates=True)
    other = {"subject": "other_users_mouse", "session_id": 1}
    pipeline.Session.insert1({**other, "session_datetime": "2026-11-01 08:00:00"},
                             skip_duplicates=True)
    pipeline.Device.insert1({"device": "other_cam"}, skip_duplicates=True)
    video = write_video(root / "other_user" / "v.avi", 5, fourcc="MJPG")
    pending = pipeline.model.VideoRecording.add(other, 1, {"device": "other_cam"}, [video])
    text = run_notebook(NOTEBOOK)
    assert "tutorial_net" in text or "frames_below" in text
    assert not pipeline.model.RecordingInfo & pending  # the notebook did not run it


def test_refinement_notebook_runs_a_whole_iteration(pipeline):
    text = run_notebook(REFINEMENT)
    assert "after retraining" in text and "nb_m1" in text
    assert pipeline.refine.DatasetVersion & {"dataset": "nb_v1", "parent_dataset": "nb_v0"}
