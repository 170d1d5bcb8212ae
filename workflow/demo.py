"""The end-to-end demo: generate a sample, import, train, evaluate, analyze, plot, query.

Runs on the embedded database with nothing downloaded; a second run reuses what exists.
``element-pose demo`` calls :func:`run_demo`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

# A light network for a 2-core CPU: ResNet-18 cut after its stride-8 stage, at half resolution
# (its receptive field then spans the whole animal, which tells left ear from right).
DEMO_PARAMS = {
    "backbone": "resnet18",
    "backbone_stride": 8,
    "head_channels": 64,
    "input_scale": 0.5,
    "crop_size": 96,
    "iterations": 1500,
    "max_seconds": 420.0,
    "batch_size": 8,
    "sigma": 2.0,
    "locref_radius": 4.0,
    "seed": 0,
    "schedule": {"warmup_iterations": 50},
    "optimizer": {"lr": 0.003},
}
SESSIONS = [(1, "2026-11-20 10:00:00", 11), (2, "2026-11-21 10:00:00", 12)]


def _step(message: str) -> None:
    print(f"\n== {message}", flush=True)


def connect(out_dir: str | Path | None, default: str) -> tuple[Path, Path]:
    """Declare the pipeline (connecting to the database) and make the output folder.

    Returns the first root data directory and the output folder (``out_dir``, or
    ``<ELEMENT_POSE_HOME>/<default>``).
    """
    _step("Connecting and declaring the pipeline")
    from element_pose.db import home
    from workflow.pipeline import connection_info, get_pose_root_data_dir

    print(connection_info.describe())
    out = Path(out_dir) if out_dir else home() / default
    out.mkdir(parents=True, exist_ok=True)
    return Path(get_pose_root_data_dir()[0]), out


def run_demo(out_dir: str | Path | None = None, train_seconds: float | None = None) -> dict:
    """Run the whole demo and print a summary.

    Parameters
    ----------
    out_dir : str or Path, optional
        Where plots, the labeled video and exports go (default ``<ELEMENT_POSE_HOME>/demo``).
    train_seconds : float, optional
        Override the training wall-clock budget.

    Returns
    -------
    dict
        Figures of the summary (test error, frames per second, output paths).
    """
    started = time.perf_counter()
    root, out = connect(out_dir, "demo")
    from element_pose import plotting
    from element_pose.sample import make_sample
    from workflow.pipeline import Device, Session, Subject, model, train

    _step("Generating sample videos (a mouse-like animal on a textured arena)")
    samples = {}
    for session_id, _, seed in SESSIONS:
        folder = root / "demo" / f"session{session_id}"
        video = folder / "arena_cam.mp4"
        labeled = session_id == 1
        # config.yaml is written last: its presence means a complete sample.
        if not (folder / "dlc-project" / "config.yaml").exists():
            samples[session_id] = make_sample(folder, n_frames=300, n_labeled=80 if labeled else 1,
                                              width=320, height=240, seed=seed)
        print(f"session {session_id}: {video}")

    _step("Subject, sessions, camera, recordings")
    Subject.insert1({"subject": "demo_mouse", "sex": "F", "subject_birth_date": "2026-08-01"},
                    skip_duplicates=True)
    Device.insert1({"device": "arena_cam", "device_description": "top camera"}, skip_duplicates=True)
    recordings = []
    for session_id, when, _ in SESSIONS:
        session = {"subject": "demo_mouse", "session_id": session_id}
        Session.insert1({**session, "session_datetime": when}, skip_duplicates=True)
        recordings.append(model.VideoRecording.add(
            session, 1, {"device": "arena_cam"}, [root / "demo" / f"session{session_id}" / "arena_cam.mp4"]))
    model.RecordingInfo.populate(display_progress=True)
    print(model.RecordingInfo.proj("frame_count", "fps", "px_width", "px_height"))

    _step("Importing labeled frames (DeepLabCut project) and splitting them")
    dataset = train.LabeledDataset.import_dlc(root / "demo" / "session1" / "dlc-project", "demo_arena",
                                              description="synthetic arena, 80 labeled frames")
    split = train.DataSplit.random(dataset, test_fraction=0.2, seed=0)
    print(f"{len(train.LabeledDataset.Frame & dataset)} frames: "
          f"{len(train.DataSplit.frame_ids(split, 'train'))} train / "
          f"{len(train.DataSplit.frame_ids(split, 'test'))} test")

    _step("Training (bundled PyTorch engine, random initialisation, CPU)")
    params = dict(DEMO_PARAMS)
    if train_seconds is not None:
        params["max_seconds"] = float(train_seconds)
    paramset = train.TrainingParamSet.insert_new_params(params, description="demo: light ResNet-18")
    task = {**split, **paramset, "run_id": 0}
    train.TrainingTask.insert1(task, skip_duplicates=True)
    train.ModelTraining.populate(task, display_progress=True)
    training = (train.ModelTraining & task).fetch1()
    print(f"{training['iterations']} iterations in {training['train_seconds']:.0f} s on {training['training_device']}")
    model_key = model.Model.from_training(task, f"demo_resnet18_p{paramset['paramset_id']}",
                                          description="demo model")

    _step("Evaluating")
    model.ModelEvaluation.populate(display_progress=True)
    evaluation = (model.ModelEvaluation & model_key & split).fetch1()
    print(model.ModelEvaluation.BodyPart & model_key & split)

    _step("Pose estimation on both sessions")
    for recording in recordings:
        model.PoseEstimationTask.add(recording, model_key, mode="trigger", batch_size=8)
    model.PoseEstimation.populate(display_progress=True)

    _step("Filtering and labeled videos")
    filt = model.PoseFilterParamSet.insert_new_params(
        {"confidence_threshold": 0.6, "max_jump_px": 20.0, "max_gap": 5, "smoothing": "median", "window": 5},
        description="demo: cut-off 0.6, jumps > 20 px/frame, gaps <= 5, median 5")
    model.FilteredPose.populate(filt, display_progress=True)
    for recording in recordings:
        model.LabeledVideoTask.insert1({**recording, **model_key, "video_id": 0, **filt}, skip_duplicates=True)
    model.LabeledVideo.populate(display_progress=True)

    _step("Outputs")
    key = {**recordings[0], **model_key}
    pose, bodyparts = model.PoseEstimation.pose_array(key)
    timestamps = np.asarray((model.RecordingInfo & key).fetch1("timestamps"))
    video = model.VideoRecording.file_paths(key)[0]
    outputs = _write_outputs(out, model, train, key, split, pose, bodyparts, timestamps, video, plotting)
    for name, path in outputs.items():
        print(f"{name:>15}: {path}")

    _step("Across sessions: pose joined to Session and Subject")
    per_session = (model.PoseEstimation * model.RecordingInfo * Session * Subject).proj(
        "subject", "session_datetime", "frame_count", "fps", "frames_per_second")
    print(per_session)
    likelihood = {}
    for row in (model.PoseEstimation.BodyPartPosition * Session).to_dicts():
        likelihood.setdefault(row["session_id"], []).append(float(np.nanmean(row["likelihood"])))
    for session_id, values in sorted(likelihood.items()):
        print(f"session {session_id}: mean likelihood {np.mean(values):.3f}")

    speed = (model.PoseEstimation & key).fetch1("frames_per_second")
    summary = {
        "test_error_px": evaluation["test_error_px"],
        "test_pck5": evaluation["test_pck5"],
        "train_error_px": evaluation["train_error_px"],
        "video_fps": speed,
        "outputs": {k: str(v) for k, v in outputs.items()},
        "wall_seconds": time.perf_counter() - started,
    }
    _step("Summary")
    print(f"test error {summary['test_error_px']:.2f} px (train {summary['train_error_px']:.2f} px), "
          f"PCK@5px {summary['test_pck5']:.2f}")
    print(f"video analysis {speed:.1f} frames/s; demo wall time {summary['wall_seconds']:.0f} s")
    print(f"outputs in {out}")
    return summary


def _write_outputs(out, model, train, key, split, pose, bodyparts, timestamps, video, plotting) -> dict:
    """Labeled frame, plots and DeepLabCut export (files are overwritten each run)."""
    from element_pose.engine.video import read_frame

    outputs = {}
    frame_index = len(pose) // 2
    figure = plotting.plot_labeled_frame(read_frame(video, frame_index), pose[frame_index], bodyparts)
    outputs["labeled frame"] = out / "labeled_frame.png"
    figure.savefig(outputs["labeled frame"], dpi=120)
    figure = plotting.plot_trajectory(pose, bodyparts, timestamps=timestamps, pcutoff=0.6)
    outputs["trajectory plot"] = out / "trajectory.png"
    figure.savefig(outputs["trajectory plot"], dpi=100)
    figure = plotting.plot_likelihood(pose, bodyparts, timestamps=timestamps, pcutoff=0.6)
    outputs["likelihood plot"] = out / "likelihood.png"
    figure.savefig(outputs["likelihood plot"], dpi=100)
    errors = {r["body_part"]: r["test_error_px"] for r in (model.ModelEvaluation.BodyPart & key & split).to_dicts()}
    figure = plotting.plot_evaluation_errors(errors)
    outputs["error plot"] = out / "evaluation_errors.png"
    figure.savefig(outputs["error plot"], dpi=100)
    curve, validation = (train.ModelTraining & (model.Model.Training & key)).fetch1(
        "learning_curve", "validation_curve")
    figure = plotting.plot_learning_curve(np.asarray(curve), validation=np.asarray(validation))
    outputs["learning curve"] = out / "learning_curve.png"
    figure.savefig(outputs["learning curve"], dpi=100)
    outputs["labeled video"] = out / "session1_labeled.mp4"
    outputs["labeled video"].write_bytes((model.LabeledVideo & key).fetch1("video").read())
    h5, _ = model.PoseEstimation.export_dlc(key, out / "session1_pose")
    outputs["DeepLabCut h5"] = h5
    outputs["NWB"] = model.export_nwb(key, out / "session1_pose.nwb", overwrite=True)
    import matplotlib.pyplot as plt

    plt.close("all")
    return outputs
