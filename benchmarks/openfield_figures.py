"""Figures of a trained openfield model, made through the Element's tables.

    python benchmarks/openfield_figures.py --checkpoint model.pt [--frames 600] [--out docs]

Imports the openfield project (../shared/data), registers the checkpoint as a Model, evaluates
it on split.json, runs PoseEstimation on the first ``--frames`` frames of the project's video,
filters the pose, renders a labeled video, and writes a labeled frame and the plots as PNGs.
Uses a throw-away embedded database (ELEMENT_POSE_HOME in a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "openfield-Pranav-2018-10-30"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--frames", type=int, default=600, help="video frames to analyse")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--dataset", type=Path, default=DATA)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="element_pose_figures_"))
    os.environ["ELEMENT_POSE_HOME"] = str(home)
    os.environ["ELEMENT_POSE_ROOT_DATA_DIR"] = str(home / "data")
    (home / "data").mkdir()
    import cv2
    import numpy as np

    from element_pose import plotting
    from element_pose.engine.video import iter_frames, read_frame
    from workflow.pipeline import Device, Session, Subject, db, model, train

    db.stop_embedded_on_exit()
    args.out.mkdir(parents=True, exist_ok=True)
    dataset = train.LabeledDataset.import_dlc(args.dataset, "openfield")
    split = train.DataSplit.from_split_json(dataset, args.dataset / "split.json")
    model_key = model.Model.from_checkpoint(args.checkpoint, "openfield_bench")
    model.ModelEvaluation.populate({**model_key, **split})
    evaluation = (model.ModelEvaluation & model_key & split).fetch1()

    clip = home / "data" / "m3v1_clip.mp4"
    frames = list(iter_frames(args.dataset / "videos" / "m3v1mp4.mp4", stop=args.frames))
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, frames[0].shape[1::-1])
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    Subject.insert1({"subject": "m3"})
    Session.insert1({"subject": "m3", "session_id": 1, "session_datetime": "2018-10-30 12:00:00"})
    Device.insert1({"device": "openfield_cam"})
    recording = model.VideoRecording.add({"subject": "m3", "session_id": 1}, 1, {"device": "openfield_cam"}, [clip])
    model.RecordingInfo.populate(recording)
    key = model.PoseEstimationTask.add(recording, model_key, batch_size=8)
    model.PoseEstimation.populate(key)
    filt = model.PoseFilterParamSet.insert_new_params({"confidence_threshold": 0.6, "max_jump_px": 30.0,
                                                       "max_gap": 5, "smoothing": "median", "window": 5})
    model.FilteredPose.populate({**key, **filt})
    model.LabeledVideoTask.insert1({**key, "video_id": 0, **filt})
    model.LabeledVideo.populate(key)

    pose, parts = model.PoseEstimation.pose_array(key)
    timestamps = np.asarray((model.RecordingInfo & key).fetch1("timestamps"))
    index = int(np.argmax(np.nanmean(pose[:, :, 2], axis=1)[len(pose) // 3:])) + len(pose) // 3
    figures = {
        "openfield_labeled_frame.png": plotting.plot_labeled_frame(read_frame(clip, index), pose[index], parts),
        "openfield_trajectory.png": plotting.plot_trajectory(pose, parts, timestamps=timestamps, pcutoff=0.6),
        "openfield_likelihood.png": plotting.plot_likelihood(pose, parts, timestamps=timestamps, pcutoff=0.6),
        "openfield_test_errors.png": plotting.plot_evaluation_errors(
            {r["body_part"]: r["test_error_px"] for r in (model.ModelEvaluation.BodyPart & model_key & split).to_dicts()}),
    }
    for name, figure in figures.items():
        figure.savefig(args.out / name, dpi=90)
    video = (model.LabeledVideo & key).fetch1()
    summary = {
        "test_error_px": evaluation["test_error_px"], "test_pck5": evaluation["test_pck5"],
        "video_frames": int((model.PoseEstimation & key).fetch1("pose_frame_count")),
        "video_fps": (model.PoseEstimation & key).fetch1("frames_per_second"),
        "labeled_video_frames": video["video_frame_count"], "labeled_frame_index": index,
        "figures": sorted(figures),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
