"""Do the frames the outlier scoring picks hold the model's mistakes? openfield, video m3v1mp4.

The video has no human labels (the labeled frames come from another video, m4s1), so the
"ground truth you can get" is a *reference model*: the default training on the 96 training
frames of split.json (1.60 px mean test error on the 20 held-out labeled frames,
BENCHMARKS.md), whose errors are small next to the mistakes looked for. The scored model is a
weak one (the same data, ``--weak-iterations`` iterations) trained twice with two seeds; the
second seed is the ensemble reference of ``refine.OutlierTask``. All through the tables:
import, split, ``ModelTraining``, ``PoseEstimation`` of the whole video for the three models,
``OutlierTask`` / ``OutlierScore``.

Reported: the mean distance to the reference model on the 20 frames picked (with and without
the second seed), against 20 random frames (mean over 2000 draws and the fraction of draws
that reach the picked frames' mean), and the reference model's confidence on the picked
frames (so a pick is not one the reference itself is unsure of).

Usage::

    python benchmarks/outliers.py --home /tmp/outliers/home --out benchmarks/results
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = Path(os.environ.get("ELEMENT_POSE_SHARED_DATA", REPO.parent / "shared" / "data"))
PROJECT = DATA / "openfield-Pranav-2018-10-30"
VIDEO = PROJECT / "videos" / "m3v1mp4.mp4"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weak-iterations", type=int, default=600)
    ap.add_argument("--n-frames", type=int, default=20)
    ap.add_argument("--home", default=None)
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    if not VIDEO.is_file():
        raise SystemExit(f"{VIDEO} not found (shared data absent).")
    os.environ["ELEMENT_POSE_HOME"] = str(Path(args.home or tempfile.mkdtemp(prefix="ep_outliers_")))
    os.environ["ELEMENT_POSE_ROOT_DATA_DIR"] = str(PROJECT)
    os.environ.setdefault("ELEMENT_POSE_PREFIX", "bench_")
    sys.path.insert(0, str(REPO))
    import torch

    from workflow.pipeline import Device, Session, Subject, model, refine, train

    started = time.time()
    dataset = train.LabeledDataset.import_dlc(PROJECT, "openfield")
    split = train.DataSplit.from_split_json(dataset, PROJECT / "split.json")
    runs = {"reference": ({}, 0), "weak_seed0": ({"iterations": args.weak_iterations}, 0),
            "weak_seed1": ({"iterations": args.weak_iterations}, 1)}
    Subject.insert1({"subject": "m3"}, skip_duplicates=True)
    session = {"subject": "m3", "session_id": 1}
    Session.insert1({**session, "session_datetime": "2018-10-30 12:00:00"}, skip_duplicates=True)
    Device.insert1({"device": "top_cam"}, skip_duplicates=True)
    recording = model.VideoRecording.add(session, 1, {"device": "top_cam"}, [VIDEO])
    model.RecordingInfo.populate(recording)
    poses, minutes = {}, {}
    for name, (params, run) in runs.items():
        paramset = train.TrainingParamSet.insert_new_params(params)
        task = {**split, **paramset, "run_id": run}
        train.TrainingTask.insert1(task, skip_duplicates=True)
        train.ModelTraining.populate(task)
        minutes[name] = (train.ModelTraining & task).fetch1("train_seconds") / 60
        key = model.Model.from_training(task, f"openfield_{name}")
        model.ModelEvaluation.populate({**key, **split})
        pose_key = model.PoseEstimationTask.add(recording, key, batch_size=16)
        model.PoseEstimation.populate(pose_key)
        poses[name] = pose_key
    test_error = {name: (model.ModelEvaluation & {"model_name": f"openfield_{name}"} & split).fetch1(
        "test_error_px") for name in runs}

    reference, _ = model.PoseEstimation.pose_array(poses["reference"])
    weak, _ = model.PoseEstimation.pose_array(poses["weak_seed0"])
    distance = np.linalg.norm(weak[..., :2] - reference[..., :2], axis=-1).mean(axis=-1)
    rng = np.random.default_rng(0)
    draws = np.array([distance[rng.choice(len(distance), args.n_frames, replace=False)].mean()
                      for _ in range(2000)])
    results = {}
    for label, refs in (("likelihood+jump+filter", []), ("with second seed", ["openfield_weak_seed1"])):
        task = refine.OutlierTask.add(poses["weak_seed0"], {"n_frames": args.n_frames},
                                      reference_models=refs)
        refine.OutlierScore.populate(task)
        rows = (refine.OutlierScore.Frame & task).to_dicts(order_by="outlier_rank")
        picked = np.array([r["frame_index"] for r in rows])
        results[label] = {
            "picked_mean_px": float(distance[picked].mean()),
            "picked_median_px": float(np.median(distance[picked])),
            "random_mean_px": float(draws.mean()),
            "ratio": float(distance[picked].mean() / draws.mean()),
            "random_draws_reaching_picked": float((draws >= distance[picked].mean()).mean()),
            "reference_min_likelihood_on_picked": float(np.median(reference[picked, :, 2].min(axis=1))),
            "main_signals": {s: sum(r["main_signal"] == s for r in rows)
                             for s in {r["main_signal"] for r in rows}},
            "picked_frames": picked.tolist(),
        }
        print(label, json.dumps({k: v for k, v in results[label].items() if k != "picked_frames"}), flush=True)
    summary = {
        "machine": f"{platform.node()}, {os.cpu_count()} CPU cores, "
                   + (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"),
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(["python", *sys.argv]), "video_frames": int(len(distance)),
        "test_error_px": test_error, "train_minutes": minutes,
        "video_mean_distance_px": float(distance.mean()), "results": results,
        "wall_minutes": (time.time() - started) / 60,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "outliers_openfield.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}, indent=1))


if __name__ == "__main__":
    main()
