"""The notebooks run top to bottom against the session's database."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import numpy as np
import pytest
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


@pytest.mark.skipif(bool(os.environ.get("DJ_HOST")), reason="trains three networks: run once, on "
                    "the embedded database (test_refine covers the tables on every backend)")
def test_refinement_notebook_runs_a_whole_iteration(pipeline, tmp_path):
    """The documented iteration, and what it must buy: the frames picked as outliers hold the
    model's mistakes (>= 3x the error of random frames) and retraining on their corrections
    halves the error there. The generator's ground truth is the labeler."""
    from element_pose.engine.video import read_frame
    from element_pose.sample import make_sample

    model, refine = pipeline.model, pipeline.refine
    text = run_notebook(REFINEMENT)
    assert "after retraining" in text and "nb_m1" in text
    assert refine.DatasetVersion & {"dataset": "nb_v1", "parent_dataset": "nb_v0"}

    # the notebook's video again (same generator and seed), for its ground truth
    truth = make_sample(tmp_path, n_frames=240, n_labeled=28, width=128, height=96, seed=1,
                        video_name="nb_cam", intrusions=6).keypoints
    pose_key = (model.PoseEstimation & {"model_name": "nb_m0"}).keys()[0]
    pose, _ = model.PoseEstimation.pose_array(pose_key)
    error = np.linalg.norm(pose[..., :2] - truth, axis=-1).mean(axis=-1)
    task = (refine.OutlierScore & pose_key).keys()[0]
    picked = [r["frame_index"] for r in (refine.OutlierScore.Frame & task).to_dicts()]
    rng = np.random.default_rng(0)
    random_mean = np.mean([error[rng.choice(len(error), len(picked), replace=False)].mean()
                           for _ in range(500)])
    assert error[picked].mean() >= 3 * random_mean, (error[picked].mean(), random_mean)

    new = [r["frame_index"] for r in (refine.LabelingRound.NewFrame & {"labeling_round": "nb_round1"}).to_dicts()]
    assert len(new) >= 10
    video = model.VideoRecording.file_paths(pose_key)[0]
    images = [read_frame(video, i) for i in new]

    def frame_error(name: str) -> float:
        predicted = model.Model.load({"model_name": name}).predict_frames(images)
        return float(np.linalg.norm(predicted[..., :2] - truth[new], axis=-1).mean())

    before, after = frame_error("nb_m0"), frame_error("nb_m1")
    assert after <= before / 2, (before, after)
