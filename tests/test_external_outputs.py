"""Other tools' pose outputs load with their provenance: DeepLabCut .h5/.csv and SLEAP
predictions (.slp, .analysis.h5) under an external model, no bundled-engine model needed."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import add_recording, shared_dataset

from element_pose.io.dlc import write_dlc_output
from element_pose.sample import BODYPARTS, make_sample

pytestmark = pytest.mark.db


@pytest.fixture(scope="module")
def recording(pipeline):
    root = pipeline.get_pose_root_data_dir()[0]
    sample = make_sample(f"{root}/external", n_frames=30, n_labeled=2, width=64, height=48, seed=3)
    session, key = add_recording(pipeline, "ext", "cam_ext", sample.video_path)
    return {"key": key, "sample": sample, "root": root, "session": session}


def _sleap_predictions(path, video_path, pose: np.ndarray, skip: set[int]):
    import sleap_io as sio

    skeleton = sio.Skeleton(list(BODYPARTS))  # sleap-io turns the list items into Nodes
    video = sio.Video.from_filename(str(video_path))
    frames = []
    for i, p in enumerate(pose):
        if i in skip:
            continue
        inst = sio.PredictedInstance.from_numpy(p[:, :2], skeleton=skeleton, point_scores=p[:, 2],
                                                score=1.0)
        frames.append(sio.LabeledFrame(video=video, frame_idx=i, instances=[inst]))
    labels = sio.Labels(labeled_frames=frames, videos=[video], skeletons=[skeleton])
    labels.provenance["sleap_version"] = "1.4.1"
    sio.save_slp(labels, str(path))
    return path


def test_deeplabcut_output_keeps_its_scorer(pipeline, recording):
    model = pipeline.model
    rng = np.random.default_rng(0)
    pose = np.concatenate([rng.uniform(0, 48, (30, 4, 2)), rng.uniform(0, 1, (30, 4, 1))], axis=2)
    scorer = "DLC_resnet50_openfieldOct30shuffle1_1030000"
    h5, _ = write_dlc_output(f"{recording['root']}/external/dlc_out", pose, BODYPARTS, scorer)
    ext = model.Model.from_output_file(h5, "dlc_openfield", version="2.3.9")
    row = (model.Model & ext).fetch1()
    assert (row["source_tool"], row["scorer"], row["source_tool_version"]) == \
        ("DeepLabCut", scorer, "2.3.9")
    assert row["weights"] is None and model.Model.bodyparts(ext) == BODYPARTS
    with pytest.raises(ValueError, match="external model without weights"):
        model.PoseEstimationTask.add(recording["key"], ext)  # cannot be run, only loaded
    key = model.PoseEstimationTask.add(recording["key"], ext, mode="load", output_path=h5)
    model.PoseEstimation.populate(key)
    loaded, parts = model.PoseEstimation.pose_array(key)
    np.testing.assert_allclose(loaded, pose)
    trajectory = model.PoseEstimation.get_trajectory(key)
    assert trajectory.columns.get_level_values("scorer")[0] == scorer  # not overwritten
    # an external model cannot be evaluated (no weights): no evaluation pairs
    assert not model.ModelEvaluation.key_source & ext


def test_sleap_predictions_load_with_gaps(pipeline, recording, tmp_path):
    model = pipeline.model
    rng = np.random.default_rng(1)
    pose = np.concatenate([rng.uniform(0, 48, (30, 4, 2)), rng.uniform(0, 1, (30, 4, 1))], axis=2)
    slp = _sleap_predictions(tmp_path / "pred.slp", recording["sample"].video_path, pose, {3, 17})
    ext = model.Model.from_output_file(slp, "sleap_centroid_v1")
    row = (model.Model & ext).fetch1()
    assert (row["source_tool"], row["source_tool_version"]) == ("SLEAP", "1.4.1")
    key = model.PoseEstimationTask.add(recording["key"], ext, mode="load", output_path=slp)
    model.PoseEstimation.populate(key)
    loaded, _ = model.PoseEstimation.pose_array(key)
    assert loaded.shape == (30, 4, 3)
    assert np.isnan(loaded[[3, 17]]).all()
    keep = [i for i in range(30) if i not in (3, 17)]
    np.testing.assert_allclose(loaded[keep], pose[keep], rtol=1e-5)
    # another tool's file under this model: refused, nothing inserted
    h5, _ = write_dlc_output(tmp_path / "other", pose, BODYPARTS, "DLC_x")
    rec2 = model.VideoRecording.add(recording["session"], 2, {"device": "cam_ext"},
                                    [recording["sample"].video_path])
    model.RecordingInfo.populate(rec2)
    bad = model.PoseEstimationTask.add(rec2, ext, mode="load", output_path=h5)
    with pytest.raises(ValueError, match="was written by DeepLabCut scorer 'DLC_x'"):
        model.PoseEstimation.populate(bad)
    assert not model.PoseEstimation & bad


def test_predictions_only_slp_is_not_imported_as_labels(pipeline, recording, tmp_path):
    train = pipeline.train
    pose = np.full((30, 4, 3), 10.0)
    slp = _sleap_predictions(tmp_path / "only_pred.slp", recording["sample"].video_path, pose, set())
    with pytest.raises(ValueError, match="only 30 frames of predictions.*include_predicted=True"):
        train.LabeledDataset.import_sleap(slp, "only_predictions")
    assert not train.LabeledDataset & {"dataset": "only_predictions"}


@pytest.mark.shared_data
def test_sleap_analysis_h5_of_a_real_session(pipeline):
    session_dir = shared_dataset("sleap-anipose-minimal-session")
    model = pipeline.model
    _, rec = add_recording(pipeline, "anipose", "back", session_dir / "back" / "minimal_back.mp4")
    analysis = session_dir / "back" / "minimal_back_proofread.analysis.h5"
    ext = model.Model.from_output_file(analysis, "anipose_back_sleap")
    key = model.PoseEstimationTask.add(rec, ext, mode="load", output_path=analysis)
    model.PoseEstimation.populate(key)
    loaded, parts = model.PoseEstimation.pose_array(key)
    import sleap_io as sio

    labels = sio.load_file(str(analysis))
    first = labels.labeled_frames[0]
    np.testing.assert_allclose(loaded[first.frame_idx],
                               first.predicted_instances[0].numpy(scores=True), rtol=1e-6)
    assert loaded.shape == (120, 15, 3)
