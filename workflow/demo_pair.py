"""The two-animal demo: two visually distinct animals that cross each other, named by the model.

Generates a video and a DeepLabCut multi-animal project (individuals ``dark`` and ``brown``),
trains the bundled top-down model (centroid + instance networks with an identity output) on
the CPU, evaluates it (error after matching, mAP over OKS, missed / spurious animals, names
right), runs ``PoseEstimation.populate()`` (detection, tracking, naming), and writes a labeled
video with a colour per animal, a frame of it, per-animal trajectories, a DeepLabCut
multi-animal ``.h5`` and an NWB file with one series per animal.
``element-pose demo --animals 2`` calls :func:`run_pair_demo`; a second run reuses what exists.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from workflow.demo import _step, connect

# Small networks for a 2-core CPU; both are trained from random initialisation.
PAIR_PARAMS = {
    "backbone": "resnet18",
    "backbone_stride": 8,
    "head_channels": 64,
    "batch_size": 8,
    "seed": 0,
    "schedule": {"warmup_iterations": 30},
    "optimizer": {"lr": 0.003},
    "max_seconds": 240.0,
    "multianimal": {"identity": True, "centroid_iterations": 300, "instance_iterations": 700},
}


def run_pair_demo(out_dir: str | Path | None = None, train_seconds: float | None = None) -> dict:
    """Run the two-animal demo and print a summary.

    Parameters
    ----------
    out_dir : str or Path, optional
        Where the labeled video, plots and exports go (default
        ``<ELEMENT_POSE_HOME>/demo_pair``).
    train_seconds : float, optional
        Wall-clock budget of each of the two networks' training.

    Returns
    -------
    dict
        Figures of the summary (errors, detection and identity figures, speed, outputs).
    """
    started = time.perf_counter()
    root, out = connect(out_dir, "demo_pair")
    import matplotlib.pyplot as plt

    from element_pose import plotting
    from element_pose.engine.video import read_frame
    from element_pose.labeled_video import animal_colors
    from element_pose.sample import make_pair_sample
    from workflow.pipeline import Device, Session, Subject, model, train

    _step("Generating a video of two animals (dark and brown) that cross each other")
    folder = root / "demo_pair"
    if not (folder / "dlc-project" / "config.yaml").exists():  # written last: a complete sample
        make_pair_sample(folder, n_frames=240, n_labeled=60, seed=3)
    video = folder / "pair_cam.mp4"
    print(video)

    _step("Subject, session, camera, recording")
    Subject.insert1({"subject": "demo_pair", "sex": "U", "subject_birth_date": "2026-08-01"},
                    skip_duplicates=True)
    session = {"subject": "demo_pair", "session_id": 1}
    Session.insert1({**session, "session_datetime": "2026-11-22 10:00:00"}, skip_duplicates=True)
    Device.insert1({"device": "pair_cam", "device_description": "top camera, pair arena"},
                   skip_duplicates=True)
    recording = model.VideoRecording.add(session, 1, {"device": "pair_cam"}, [video])
    model.RecordingInfo.populate(recording, display_progress=True)

    _step("Importing the multi-animal DeepLabCut project and splitting it")
    dataset = train.LabeledDataset.import_dlc(folder / "dlc-project", "demo_pair",
                                              description="two synthetic animals, 60 frames")
    split = train.DataSplit.random(dataset, test_fraction=0.2, seed=0)
    print(f"individuals {train.LabeledDataset.individuals(dataset)}; "
          f"{len(train.DataSplit.frame_ids(split, 'train'))} train / "
          f"{len(train.DataSplit.frame_ids(split, 'test'))} test frames")

    _step("Training the centroid and instance networks (random initialisation, CPU)")
    params = dict(PAIR_PARAMS)
    if train_seconds is not None:
        params["max_seconds"] = float(train_seconds)
    paramset = train.TrainingParamSet.insert_new_params(
        params, description="pair demo: top-down, identity")
    task = {**split, **paramset, "run_id": 0}
    train.TrainingTask.insert1(task, skip_duplicates=True)
    train.ModelTraining.populate(task, display_progress=True)
    training = (train.ModelTraining & task).fetch1()
    print(f"{training['iterations']} iterations (both networks) in "
          f"{training['train_seconds']:.0f} s on {training['training_device']}")
    model_key = model.Model.from_training(task, f"demo_pair_p{paramset['paramset_id']}",
                                          description="pair demo model")

    _step("Evaluating: error after matching animals, mAP over OKS, names")
    model.ModelEvaluation.populate({**model_key, **split}, display_progress=True)
    evaluation = (model.ModelEvaluation & model_key & split).fetch1()
    multi = (model.ModelEvaluation.MultiAnimal & model_key & split).fetch1()
    print(model.ModelEvaluation.MultiAnimal & model_key & split)

    _step("Pose estimation: detect, track and name both animals over the whole video")
    pose_key = model.PoseEstimationTask.add(recording, model_key, batch_size=16)
    model.PoseEstimation.populate(pose_key, display_progress=True)
    print(model.PoseEstimation.Individual & pose_key)

    _step("Labeled video (a colour per animal), plots and exports")
    model.LabeledVideoTask.insert1({**pose_key, "video_id": 0, "filter_paramset_id": None},
                                   skip_duplicates=True)
    model.LabeledVideo.populate(pose_key, display_progress=True)
    outputs: dict[str, Path] = {}
    outputs["labeled video"] = out / "pair_labeled.mp4"
    outputs["labeled video"].write_bytes((model.LabeledVideo & pose_key).fetch1("video").read())
    pose, parts, names = model.PoseEstimation.multi_pose_array(pose_key)
    frame_index = len(pose) // 2
    figure, ax = plt.subplots(figsize=(6.4, 4.8))
    ax.imshow(read_frame(outputs["labeled video"], frame_index))
    ax.set_title(f"frame {frame_index}", loc="left")
    for g, (name, rgb) in enumerate(zip(names, animal_colors(len(names)), strict=True)):
        ax.text(0.35 + 0.2 * g, 1.01, name, color=np.asarray(rgb) / 255, fontweight="bold",
                transform=ax.transAxes, va="bottom")  # the colour the video draws it in
    ax.axis("off")
    outputs["labeled frame"] = out / "pair_labeled_frame.png"
    figure.savefig(outputs["labeled frame"], dpi=100, bbox_inches="tight")
    timestamps = model.PoseEstimation.get_timestamps(pose_key)
    for g, name in enumerate(names):
        figure = plotting.plot_trajectory(pose[:, g], parts, timestamps=timestamps, pcutoff=0.6)
        figure.suptitle(name)
        outputs[f"{name} trajectory"] = out / f"pair_trajectory_{name}.png"
        figure.savefig(outputs[f"{name} trajectory"], dpi=100)
    plt.close("all")
    outputs["DeepLabCut h5"], _ = model.PoseEstimation.export_dlc(pose_key, out / "pair_pose")
    outputs["NWB"] = model.export_nwb(pose_key, out / "pair_pose.nwb", overwrite=True)
    for name, path in outputs.items():
        print(f"{name:>18}: {path}")

    _step("Query: frames each animal was found in, joined to Session and Subject")
    print((model.PoseEstimation.Individual * Session * Subject & pose_key).proj(
        "individual_index", "identity_source", "frames_present", "sex"))

    speed = (model.PoseEstimation & pose_key).fetch1("frames_per_second")
    summary = {
        "test_error_px": evaluation["test_error_px"],
        "test_median_error_px": evaluation["test_median_error_px"],
        "map_oks": multi["map_oks"],
        "missed": multi["missed"], "spurious": multi["spurious"],
        "identity_accuracy": multi["identity_accuracy"],
        "frames_present": {r["individual"]: r["frames_present"]
                           for r in (model.PoseEstimation.Individual & pose_key).to_dicts()},
        "video_fps": speed,
        "outputs": {k: str(v) for k, v in outputs.items()},
        "wall_seconds": time.perf_counter() - started,
    }
    _step("Summary")
    print(f"test error after matching {summary['test_error_px']:.2f} px (median "
          f"{summary['test_median_error_px']:.2f}), mAP(OKS) {summary['map_oks']:.2f}, "
          f"missed {summary['missed']}, spurious {summary['spurious']}, names right "
          f"{np.round(100 * (summary['identity_accuracy'] or 0), 1)} %")
    print(f"video analysis {speed:.1f} frames/s; demo wall time {summary['wall_seconds']:.0f} s")
    print(f"outputs in {out}")
    return summary
