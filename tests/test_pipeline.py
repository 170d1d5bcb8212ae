"""End to end through populate(): train -> model -> evaluate -> pose estimation -> outputs,
with a tiny network on generated data, on whichever database the session runs against."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import shared_dataset

from element_pose.engine.config import ConfigError
from element_pose.engine.video import iter_frames, probe_video
from element_pose.io.dlc import DLCFormatError, read_dlc_output
from element_pose.sample import BODYPARTS, make_sample

TINY = {
    "backbone": "resnet18", "backbone_stride": 8, "head_channels": 64, "input_scale": 1.0,
    "crop_size": 96, "iterations": 300, "batch_size": 8, "sigma": 2.5, "locref_radius": 5.0,
    "schedule": {"warmup_iterations": 30}, "optimizer": {"lr": 0.003}, "device": "cpu",
    "checkpoint_every": 100,
}


@pytest.fixture(scope="module")
def trained(pipeline, tmp_path_factory):
    """Everything populated once for the module."""
    train, model = pipeline.train, pipeline.model
    root = pipeline.get_pose_root_data_dir()[0]
    sample = make_sample(f"{root}/e2e", n_frames=60, n_labeled=30, width=128, height=96, seed=1)
    pipeline.Subject.insert1({"subject": "e2e"}, skip_duplicates=True)
    session = {"subject": "e2e", "session_id": 1}
    pipeline.Session.insert1({**session, "session_datetime": "2026-11-20 09:30:00"}, skip_duplicates=True)
    pipeline.Device.insert1({"device": "cam_e2e"}, skip_duplicates=True)

    dataset = train.LabeledDataset.import_dlc(sample.project_dir, "e2e")
    split = train.DataSplit.random(dataset, test_fraction=0.2, seed=0)
    paramset = train.TrainingParamSet.insert_new_params(TINY, description="tiny test network")
    task = {**split, **paramset, "run_id": 0}
    train.TrainingTask.insert1(task)
    train.ModelTraining.populate(task)
    model_key = model.Model.from_training(task, "e2e_model")
    model.ModelEvaluation.populate(model_key)

    recording = model.VideoRecording.add(session, 1, {"device": "cam_e2e"}, [sample.video_path])
    model.RecordingInfo.populate(recording)
    pose_key = model.PoseEstimationTask.add(recording, model_key, mode="trigger", batch_size=16)
    model.PoseEstimation.populate(pose_key)
    return {"sample": sample, "dataset": dataset, "split": split, "task": task, "model": model_key,
            "recording": recording, "pose": pose_key, "session": session}


def test_training_row(pipeline, trained):
    row = (pipeline.train.ModelTraining & trained["task"]).fetch1()
    assert row["iterations"] == 300
    curve = np.asarray(row["learning_curve"])
    assert curve.shape[1] == 2 and curve[-1, 0] <= 300
    assert curve[-20:, 1].mean() < curve[:20, 1].mean() / 3  # the loss went down
    assert row["versions"]["torch"] and row["training_device"] == "cpu"
    from element_pose.hashing import sha256_bytes

    assert sha256_bytes(row["weights"].read()) == row["weights_sha256"]


def test_training_records_resolved_config_and_validation(pipeline, trained):
    row = (pipeline.train.ModelTraining & trained["task"]).fetch1()
    stored = (pipeline.train.TrainingParamSet & trained["task"]).fetch1("params")
    assert stored["output_stride"] == "auto"  # the parameter set keeps what the user asked
    config = row["config"]
    assert config["output_stride"] in (2, 4) and "auto" not in config.values()
    assert row["auto_report"]["chosen"]["output_stride"]["value"] == config["output_stride"]
    assert row["auto_report"]["stats"]["n_frames"] > 0
    curve = np.asarray(row["validation_curve"])
    assert curve.ndim == 2 and curve.shape[1] == 2 and len(curve) >= 1
    assert row["best_iteration"] in curve[:, 0].astype(int).tolist()
    assert (pipeline.model.Model & trained["model"]).fetch1("config") == config
    # the resolved config reproduces the model's configuration as a parameter set of its own
    again = pipeline.train.TrainingParamSet.insert_new_params(config)
    assert (pipeline.train.TrainingParamSet & again).fetch1("params") == config


def test_calibration_summary(pipeline, trained):
    row = (pipeline.model.ModelEvaluation & trained["model"] & trained["split"]).fetch1()
    assert 0.0 <= row["test_fraction_above_pcutoff"] <= 1.0
    if row["test_error_pcutoff_px"] is not None:
        assert row["test_error_pcutoff_px"] <= row["test_error_px"] + 1e-9


def test_fine_tune_from_a_stored_model_and_lineage(pipeline, trained):
    train, model = pipeline.train, pipeline.model
    params = train.TrainingParamSet.insert_new_params({**TINY, "iterations": 20},
                                                      description="fine-tune")
    task = {**trained["split"], **params, "run_id": 0}
    train.TrainingTask.insert1(task, skip_duplicates=True)
    model.TrainingInit.insert1({**task, "parent_model": trained["model"]["model_name"]})
    train.ModelTraining.populate(task)
    report = (train.ModelTraining & task).fetch1("auto_report")
    assert report["initial_model"]["model_name"] == trained["model"]["model_name"]
    assert report["initial_model"]["matched_bodyparts"] == BODYPARTS
    child = model.Model.from_training(task, "e2e_finetuned")
    lineage = model.Model.lineage(child)
    assert [r["model_name"] for r in lineage] == ["e2e_finetuned", "e2e_model"]
    assert lineage[0]["parent_model"] == "e2e_model" and lineage[1]["parent_model"] is None
    assert lineage[0]["dataset"] == trained["dataset"]["dataset"]
    # 20 iterations from the parent are as good as the parent: it started from its weights
    model.ModelEvaluation.populate({**child, **trained["split"]})
    err = (model.ModelEvaluation & child & trained["split"]).fetch1("test_error_px")
    assert err < 6.0
    # provenance is queryable: models fine-tuned from e2e_model
    children = model.Model.Training * model.TrainingInit & {"parent_model": "e2e_model"}
    assert "e2e_finetuned" in children.to_arrays("model_name")


def test_model_is_immutable(pipeline, trained, tmp_path):
    model = pipeline.model
    assert model.Model.bodyparts(trained["model"]) == BODYPARTS
    # the same weights under the same name: a no-op
    assert model.Model.from_training(trained["task"], "e2e_model") == trained["model"]
    other = tmp_path / "other.pt"
    other.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="immutable"):
        model.Model.from_checkpoint(other, "e2e_model")
    with pytest.raises(ValueError, match="not a checkpoint"):
        model.Model.from_checkpoint(other, "garbage_model")
    assert not model.Model & {"model_name": "garbage_model"}


def test_evaluation_is_accurate_on_generated_frames(pipeline, trained):
    model = pipeline.model
    row = (model.ModelEvaluation & trained["model"] & trained["split"]).fetch1()
    assert row["train_error_px"] < 2.0
    assert row["test_error_px"] < 4.0
    assert row["train_rmse_px"] >= row["train_error_px"]
    assert 0.5 < row["test_pck10"] <= 1.0
    parts = model.ModelEvaluation.BodyPart & trained["model"] & trained["split"]
    assert len(parts) == len(BODYPARTS)
    frames = (model.ModelEvaluation.Frame & trained["model"] & trained["split"]).to_dicts()
    assert len(frames) == 30
    assert np.asarray(frames[0]["prediction"]).shape == (len(BODYPARTS), 3)


def test_pose_estimation_and_trajectory(pipeline, trained):
    model = pipeline.model
    row = (model.PoseEstimation & trained["pose"]).fetch1()
    assert row["pose_frame_count"] == 60 and row["frames_per_second"] > 0
    trajectory = model.PoseEstimation.get_trajectory(trained["pose"])
    assert len(trajectory) == (model.RecordingInfo & trained["recording"]).fetch1("frame_count")
    scorer = (model.Model & trained["model"]).fetch1("scorer")
    assert list(trajectory.columns.names) == ["scorer", "bodyparts", "coords"]
    # only DeepLabCut's columns (a 'time' column made movement read a keypoint named '')
    assert set(trajectory.columns.get_level_values("coords")) == {"x", "y", "likelihood"}
    assert trajectory.index.name == "frame"
    np.testing.assert_allclose(model.PoseEstimation.get_timestamps(trained["pose"]),
                               np.arange(60) / 30.0, atol=1e-6)
    by_time = model.PoseEstimation.get_trajectory(trained["pose"], index="time")
    np.testing.assert_allclose(by_time.index.to_numpy(), np.arange(60) / 30.0, atol=1e-6)
    xy = np.stack([trajectory[scorer][b][["x", "y"]].to_numpy() for b in BODYPARTS], axis=1)
    error = np.linalg.norm(xy - trained["sample"].keypoints, axis=-1)
    assert np.nanmedian(error) < 3.0  # every video frame, most of them never labeled
    snout = model.PoseEstimation.get_trajectory(trained["pose"], body_parts=["snout"])
    assert snout[scorer].columns.get_level_values(0).unique().tolist() == ["snout"]


def test_export_and_load_round_trip(pipeline, trained, tmp_path):
    model = pipeline.model
    h5, csv = model.PoseEstimation.export_dlc(trained["pose"], tmp_path / "out" / "pose")
    pose, parts = model.PoseEstimation.pose_array(trained["pose"])
    read, read_parts, _ = read_dlc_output(h5)
    assert read_parts == parts
    np.testing.assert_allclose(read, pose)
    frame = pd.read_hdf(h5, key="df_with_missing")
    assert frame.shape == (60, 3 * len(parts))
    np.testing.assert_allclose(pd.read_csv(csv, header=[0, 1, 2], index_col=0).to_numpy(), pose.reshape(60, -1))

    # 'load' mode imports the exported file for a second recording of the same video
    second = model.VideoRecording.add(trained["session"], 2, {"device": "cam_e2e"}, [trained["sample"].video_path])
    model.RecordingInfo.populate(second)
    key = model.PoseEstimationTask.add(second, trained["model"], mode="load", output_path=h5)
    model.PoseEstimation.populate(key)
    loaded, _ = model.PoseEstimation.pose_array(key)
    np.testing.assert_allclose(loaded, pose)


def test_load_bad_files_insert_nothing(pipeline, trained, tmp_path, data_root):
    model = pipeline.model
    pose, parts = model.PoseEstimation.pose_array(trained["pose"])
    from element_pose.io.dlc import write_dlc_output

    short, _ = write_dlc_output(data_root / "short", pose[:50], parts, "x")
    renamed, _ = write_dlc_output(data_root / "renamed", pose, ["nose", *parts[1:]], "x")
    for recording_id, path, message in ((3, short, "50 frames"), (4, renamed, "body parts")):
        rec = model.VideoRecording.add(trained["session"], recording_id, {"device": "cam_e2e"},
                                       [trained["sample"].video_path])
        model.RecordingInfo.populate(rec)
        key = model.PoseEstimationTask.add(rec, trained["model"], mode="load", output_path=path)
        with pytest.raises(ValueError, match=message):
            model.PoseEstimation.populate(key)
        assert not model.PoseEstimation & key
        assert not model.PoseEstimation.BodyPartPosition & key
    with pytest.raises(ValueError, match="mode"):
        model.PoseEstimationTask.add(trained["recording"], trained["model"], mode="run")
    with pytest.raises(TypeError, match="batch_size"):
        model.PoseEstimationTask.add(trained["recording"], trained["model"], batch_size="8")
    garbage = data_root / "garbage.h5"
    garbage.write_bytes(b"\x89HDF junk")
    with pytest.raises(DLCFormatError):
        read_dlc_output(garbage)


def test_populate_twice_and_reserved_jobs_do_no_duplicate_work(pipeline, trained):
    train, model = pipeline.train, pipeline.model
    before = len(train.ModelTraining()), len(model.PoseEstimation())
    # restricted to this module's work: other tests leave tasks meant to fail in the database
    train.ModelTraining.populate(trained["task"], reserve_jobs=True)
    model.PoseEstimation.populate(trained["pose"], reserve_jobs=True)
    assert (len(train.ModelTraining()), len(model.PoseEstimation())) == before


def test_bad_params_rejected(pipeline):
    train = pipeline.train
    with pytest.raises(ConfigError, match="batch_size"):
        train.TrainingParamSet.insert_new_params({**TINY, "batch_size": "8"})
    with pytest.raises(ConfigError, match="learning_rate"):
        train.TrainingParamSet.insert_new_params({**TINY, "learning_rate": 0.1})
    with pytest.raises(TypeError, match="dict"):
        train.TrainingParamSet.insert_new_params([("batch_size", 8)])
    first = train.TrainingParamSet.insert_new_params(TINY)
    assert train.TrainingParamSet.insert_new_params(dict(reversed(list(TINY.items())))) == first
    with pytest.raises(ValueError, match=f"paramset_id={first['paramset_id']}"):
        train.TrainingParamSet.insert_new_params(TINY, paramset_id=first["paramset_id"] + 50)


def test_params_stored_before_a_setting_was_added_still_deduplicate(pipeline):
    """A row written by an earlier release lacks settings added since (at defaults that keep
    the old behaviour); inserting the same parameters again must find it, not fail on its id."""
    from element_pose.hashing import sha256_json

    train = pipeline.train
    full = train.full_params({**TINY, "seed": 4242})
    old = {k: v for k, v in full.items() if k != "hard_keypoint_weight"}
    old_id = int(max(train.TrainingParamSet.to_arrays("paramset_id"), default=-1)) + 1
    train.TrainingParamSet.insert1({"paramset_id": old_id, "params": old,
                                    "params_sha256": sha256_json(old)})
    try:
        key = {"paramset_id": old_id}
        assert train.TrainingParamSet.insert_new_params({**TINY, "seed": 4242}) == key
        assert train.TrainingParamSet.insert_new_params({**TINY, "seed": 4242},
                                                        paramset_id=old_id) == key
        # a real difference is still a different parameter set
        with pytest.raises(ValueError, match="already holds other parameters"):
            train.TrainingParamSet.insert_new_params({**TINY, "seed": 4243}, paramset_id=old_id)
    finally:
        (train.TrainingParamSet & {"paramset_id": old_id}).delete_quick()


def test_failed_training_inserts_nothing(pipeline, trained):
    """A training that fails (here: multi-animal settings for a one-animal dataset) leaves no
    ModelTraining row."""
    train = pipeline.train
    paramset = train.TrainingParamSet.insert_new_params({**TINY, "multianimal": {}})
    task = {**trained["split"], **paramset, "run_id": 0}
    train.TrainingTask.insert1(task)
    with pytest.raises(ValueError, match="labels one animal"):
        train.ModelTraining.populate(task)
    assert not train.ModelTraining & task
    (train.TrainingTask & task).delete_quick()


@pytest.mark.parametrize("change, message", [
    ({"batch_size": 64}, r"'batch_size' \(64\) is larger than the \d+ training frames"),
    ({"iterations": 0}, "'iterations' is 0"),
])
def test_training_that_cannot_work_is_refused_before_it_starts(pipeline, trained, change,
                                                               message):
    train = pipeline.train
    params = train.TrainingParamSet.insert_new_params({**TINY, **change})
    task = {**trained["split"], **params, "run_id": 0}
    train.TrainingTask.insert1(task)
    with pytest.raises(ConfigError, match=message):
        train.ModelTraining.populate(task)
    assert not train.ModelTraining & task
    (train.TrainingTask & task).delete_quick()


def test_evaluation_only_pairs_matching_body_parts(pipeline, trained, tmp_path):
    train, model = pipeline.train, pipeline.model
    sample = make_sample(tmp_path / "other", n_frames=10, n_labeled=4, width=64, height=48, seed=5)
    csv = next((sample.project_dir / "labeled-data").glob("*/CollectedData_*.csv"))
    csv.write_text(csv.read_text().replace("snout", "nose"))
    config = sample.project_dir / "config.yaml"
    config.write_text(config.read_text().replace("snout", "nose"))
    other = train.LabeledDataset.import_dlc(sample.project_dir, "other_parts")
    train.DataSplit.random(other, 0.25, 0)
    pairs = model.ModelEvaluation.key_source & trained["model"]
    assert len(pairs & other) == 0
    assert len(pairs & trained["dataset"]) >= 1


def test_filtered_pose_labeled_video_and_nwb(pipeline, trained, tmp_path):
    model = pipeline.model
    filt = model.PoseFilterParamSet.insert_new_params({"confidence_threshold": 0.5, "max_gap": 3,
                                                       "smoothing": "median", "window": 3})
    key = {**trained["pose"], **filt}
    model.FilteredPose.populate(key)
    filtered, parts = model.FilteredPose.pose_array(key)
    raw, _ = model.PoseEstimation.pose_array(trained["pose"])
    assert filtered.shape == raw.shape and parts == BODYPARTS
    # filtering changes little where the raw pose is good, and keeps it near the truth
    assert np.nanmedian(np.abs(filtered[..., :2] - raw[..., :2])) < 1.0
    truth = trained["sample"].keypoints
    assert np.nanmedian(np.linalg.norm(filtered[..., :2] - truth, axis=-1)) < 3.0

    model.LabeledVideoTask.insert1({**trained["pose"], "video_id": 0, "filter_paramset_id": None})
    model.LabeledVideo.populate(trained["pose"])
    # the fingerprint DataJoint compares before inserting covers the pose it draws
    from element_pose.hashing import sha256_bytes

    fetched = model.LabeledVideo().make_fetch({**trained["pose"], "video_id": 0})
    raw_pose, _ = model.PoseEstimation.pose_array(trained["pose"])
    assert sha256_bytes(np.ascontiguousarray(raw_pose).tobytes()) in fetched
    ref = (model.LabeledVideo & trained["pose"]).fetch1("video")
    path = tmp_path / "labeled.mp4"
    path.write_bytes(ref.read())
    info = probe_video(path)
    assert (info.frame_count, info.width, info.height) == (60, 128, 96)
    original = next(iter_frames(trained["sample"].video_path))
    drawn = next(iter_frames(path))
    assert np.abs(drawn.astype(int) - original.astype(int)).max() > 100  # something was drawn

    from element_pose.io.nwb import read_nwb_pose

    # DANDI needs the subject's age or birth date: the sample Subject row has neither
    with pytest.raises(ValueError, match="age or date_of_birth.*subject="):
        model.export_nwb(trained["pose"], tmp_path / "pose.nwb")
    assert not (tmp_path / "pose.nwb").exists()
    nwb = model.export_nwb(trained["pose"], tmp_path / "pose.nwb", subject={"age": "P90D"},
                           metadata={"experimenter": ["Doe, Jane"], "institution": "Lab U"})
    from nwbinspector import Importance, inspect_nwbfile, load_config

    found = [m for m in inspect_nwbfile(nwbfile_path=str(nwb), config=load_config("dandi"))
             if m.importance in (Importance.CRITICAL, Importance.ERROR)]
    assert found == [], [m.message for m in found]
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(nwb), "r") as io:
        subject = io.read().subject
        assert (subject.species, subject.sex, subject.age) == ("Mus musculus", "U", "P90D")
    pose, names, timestamps = read_nwb_pose(nwb)
    assert names == parts
    np.testing.assert_allclose(pose, raw, rtol=1e-6)
    np.testing.assert_allclose(timestamps, np.arange(60) / 30.0, atol=1e-6)
    with pytest.raises(FileExistsError):
        model.export_nwb(trained["pose"], nwb, subject={"age": "P90D"})


def test_openfield_end_to_end(pipeline, tmp_path, data_root):
    """Real data: import, split from split.json, train briefly, evaluate, analyze 200 frames."""
    project = shared_dataset("openfield-Pranav-2018-10-30")
    train, model = pipeline.train, pipeline.model
    dataset = train.LabeledDataset.import_dlc(project, "openfield_e2e")
    split = train.DataSplit.from_split_json(dataset, project / "split.json")
    params = {**TINY, "input_scale": 0.5, "crop_size": 128, "iterations": 40}
    paramset = train.TrainingParamSet.insert_new_params(params)
    task = {**split, **paramset, "run_id": 0}
    train.TrainingTask.insert1(task, skip_duplicates=True)
    train.ModelTraining.populate(task)
    model_key = model.Model.from_training(task, "openfield_brief")
    model.ModelEvaluation.populate({**model_key, **split})
    row = (model.ModelEvaluation & model_key & split).fetch1()
    assert row["test_error_px"] is not None and row["test_error_px"] > 0
    assert len(model.ModelEvaluation.Frame & model_key & split) == 116

    clip = data_root / "openfield" / "m3v1_200.mp4"
    write_clip(project / "videos" / "m3v1mp4.mp4", clip, 200)
    pipeline.Subject.insert1({"subject": "openfield_mouse"}, skip_duplicates=True)
    session = {"subject": "openfield_mouse", "session_id": 1}
    pipeline.Session.insert1({**session, "session_datetime": "2018-10-30 12:00:00"}, skip_duplicates=True)
    pipeline.Device.insert1({"device": "openfield_cam"}, skip_duplicates=True)
    recording = model.VideoRecording.add(session, 1, {"device": "openfield_cam"}, [clip])
    model.RecordingInfo.populate(recording)
    key = model.PoseEstimationTask.add(recording, model_key)
    model.PoseEstimation.populate(key)
    trajectory = model.PoseEstimation.get_trajectory(key)
    assert len(trajectory) == 200
    x = trajectory.xs("x", level="coords", axis=1).to_numpy()
    assert np.all((x >= 0) & (x < 640))


def write_clip(source, target, n_frames: int) -> None:
    """The first ``n_frames`` of a video, re-encoded with OpenCV."""
    import cv2

    target.parent.mkdir(parents=True, exist_ok=True)
    frames = list(iter_frames(source, stop=n_frames))
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (width, height))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def test_two_processes_populating_at_once_do_the_work_once(pipeline, trained):
    """Two workers with reserve_jobs=True: one analysis, no error, no duplicate rows."""
    import os
    import subprocess
    import sys

    model = pipeline.model
    recording = model.VideoRecording.add(trained["session"], 9, {"device": "cam_e2e"},
                                         [trained["sample"].video_path])
    model.RecordingInfo.populate(recording)
    key = model.PoseEstimationTask.add(recording, trained["model"])
    script = ("from workflow.pipeline import model\n"
              f"model.PoseEstimation.populate({key!r}, reserve_jobs=True)\n")
    workers = [subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    results = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], results
    assert len(model.PoseEstimation & key) == 1
    assert len(model.PoseEstimation.BodyPartPosition & key) == len(BODYPARTS)
