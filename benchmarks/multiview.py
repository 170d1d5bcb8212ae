"""3D benchmark on ../shared/data/sleap-anipose-minimal-session (four calibrated cameras).

All through the tables (``multiview`` schema), on the embedded database:

1. Calibration from each camera's ChArUco board images (``Calibration.populate``): corner
   reprojection error per camera, and camera positions against anipose's ``calibration.toml``
   (both expressed in the back camera's frame; errors as a fraction of the back-mid baseline).
2. Triangulation of the proofread labels of all four views (loaded as external pose
   estimations): median reprojection error, cameras used, for the default parameters and a
   15 px outlier threshold (default 10 px); with our calibration and with anipose's.
3. With ``--iterations N``: one model per view trained on the split of
   ``benchmarks/splits/`` (N iterations, the rest automatic, random initialisation), run on
   the four videos, triangulated; median reprojection error, and the 3D error against the
   triangulated proofread labels on the 24 test frames (held out in every view).

Writes ``multiview.json`` and the figures (reprojection check, 3D trajectory) to ``--out``.

Usage::

    python benchmarks/multiview.py --home /tmp/mv/home --out benchmarks/results --iterations 800
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = Path(os.environ.get("ELEMENT_POSE_SHARED_DATA", REPO.parent / "shared" / "data"))
SESSION = DATA / "sleap-anipose-minimal-session"
CAMERAS = ["back", "mid", "side", "top"]


def triangulation_figures(mv, key) -> dict:
    row = (mv.Triangulation & key).fetch1()
    return {k: row[k] for k in ("median_reprojection_error", "mean_cameras_used",
                                "fraction_triangulated", "triangulation_seconds")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", required=True, help="ELEMENT_POSE_HOME for this run (fresh)")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--iterations", type=int, default=0,
                        help="train one model per view for this many iterations (0: skip)")
    args = parser.parse_args()
    os.environ["ELEMENT_POSE_HOME"] = args.home
    os.environ["ELEMENT_POSE_ROOT_DATA_DIR"] = str(DATA)
    sys.path.insert(0, str(REPO))
    from element_pose.calibration import relative_centers
    from workflow.pipeline import Session, Subject, model, multiview, train

    mv = multiview
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": f"{platform.node()} {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d")}

    # 1. calibration
    rig = mv.CameraRig.add("anipose4", CAMERAS)
    board = mv.CalibrationBoard.add("anipose_charuco", SESSION / "board.toml")
    ours = mv.CalibrationTask.add_board(rig, 1, board, {c: SESSION / c / "calibration_images" for c in CAMERAS})
    theirs = mv.CalibrationTask.add_file(rig, 2, SESSION / "calibration.toml")
    mv.Calibration.populate(rig)
    cal = (mv.Calibration & ours).fetch1()
    per_camera = {r["device"]: {"error_px": r["reprojection_error"], "alone_px": r["initial_error"],
                                "views": r["n_views"], "focal_px": r["camera_matrix"][0][0]}
                  for r in (mv.Calibration.Camera & ours).to_dicts()}
    a, b = relative_centers(mv.Calibration.cameras(ours)), relative_centers(mv.Calibration.cameras(theirs))
    baseline = float(np.linalg.norm(b[1] - b[0]))
    for i, cam in enumerate(CAMERAS):
        per_camera[cam]["position_vs_anipose_pct_baseline"] = float(100 * np.linalg.norm(a[i] - b[i]) / baseline)
        per_camera[cam]["position_mm"] = a[i].round(1).tolist()
        per_camera[cam]["anipose_position_mm"] = b[i].round(1).tolist()
    results["calibration"] = {"seconds": cal["calibration_seconds"], "shared_views": cal["shared_views"],
                              "baseline_back_mid_mm": baseline, "cameras": per_camera}
    print(json.dumps(results["calibration"], indent=1))

    # 2. proofread labels
    Subject.insert1({"subject": "anipose_mouse"}, skip_duplicates=True)
    session = {"subject": "anipose_mouse", "session_id": 1}
    Session.insert1({**session, "session_datetime": "2022-02-24 13:52:00"}, skip_duplicates=True)
    labels = {}
    for i, cam in enumerate(CAMERAS):
        rec = model.VideoRecording.add(session, i, {"device": cam}, [SESSION / cam / f"minimal_{cam}.mp4"])
        model.RecordingInfo.populate(rec)
        path = SESSION / cam / f"minimal_{cam}_proofread.analysis.h5"
        labels[cam] = model.Model.from_output_file(path, f"proofread_{cam}")["model_name"]
        model.PoseEstimationTask.add(rec, {"model_name": labels[cam]}, mode="load", output_path=path)
    model.PoseEstimation.populate(session)
    multi = mv.MultiCameraRecording.add(session, 1, rig, {c: i for i, c in enumerate(CAMERAS)})
    label_runs = {}
    for name, calibration, params in (("ours_default", ours, None), ("ours_threshold15", ours, {"threshold": 15}),
                                      ("anipose_default", theirs, None),
                                      ("ours_no_rejection", ours, {"threshold": 1e6})):
        key = mv.TriangulationTask.add(multi, calibration, labels, params=params, pose_set="proofread")
        mv.Triangulation.populate(key)
        label_runs[name] = triangulation_figures(mv, key)
    results["proofread_labels"] = label_runs
    print(json.dumps(label_runs, indent=1))
    reference = mv.TriangulationTask.add(multi, ours, labels, pose_set="proofread")
    mv.Triangulation.plot_reprojection(reference, frame=60).savefig(out / "multiview_reprojection_labels.png", dpi=80)
    mv.Triangulation.plot_trajectory(reference, ["Nose", "Head", "Trunk", "Tail_0", "TailTip"]).savefig(
        out / "multiview_trajectory_labels.png", dpi=80)

    # 3. per-view models
    if args.iterations:
        started = time.perf_counter()
        trained, view_errors = {}, {}
        for i, cam in enumerate(CAMERAS):
            dataset = train.LabeledDataset.import_sleap(SESSION / cam / f"minimal_{cam}_proofread.slp",
                                                        f"anipose_{cam}", include_predicted=True)
            split = train.DataSplit.from_split_json(dataset, HERE / "splits" / f"sleap-anipose-{cam}.json")
            params = train.TrainingParamSet.insert_new_params({"iterations": args.iterations})
            task = {**split, **params, "run_id": 0}
            train.TrainingTask.insert1(task, skip_duplicates=True)
            train.ModelTraining.populate(task, display_progress=False)
            trained[cam] = model.Model.from_training(task, f"view_{cam}")["model_name"]
            model.ModelEvaluation.populate({"model_name": trained[cam], **split})
            view_errors[cam] = float((model.ModelEvaluation & {"model_name": trained[cam]} & split
                                      ).fetch1("test_error_px"))
            rec = {**session, "recording_id": i}
            model.PoseEstimationTask.add(rec, {"model_name": trained[cam]})
            model.PoseEstimation.populate({**rec, "model_name": trained[cam]})
        minutes = (time.perf_counter() - started) / 60
        key = mv.TriangulationTask.add(multi, ours, trained, pose_set="trained")
        mv.Triangulation.populate(key)
        figures = triangulation_figures(mv, key)
        key15 = mv.TriangulationTask.add(multi, ours, trained, params={"threshold": 15}, pose_set="trained")
        mv.Triangulation.populate(key15)
        test = [int(n.split("/")[-1]) for n in json.loads((HERE / "splits" / "sleap-anipose-back.json").read_text())["test"]]
        predicted, parts, _ = mv.Triangulation.points_array(key)
        truth, truth_parts, _ = mv.Triangulation.points_array(reference)
        assert parts == truth_parts
        error = np.linalg.norm(predicted[test] - truth[test], axis=-1)
        figures.update({
            "iterations_per_view": args.iterations, "train_and_analyse_minutes": minutes,
            "threshold15": triangulation_figures(mv, key15),
            "test_frames": len(test),
            "error_3d_vs_labels_mm_median": float(np.nanmedian(error)),
            "error_3d_vs_labels_mm_mean": float(np.nanmean(error)),
            "per_bodypart_3d_mm_median": {p: float(np.nanmedian(error[:, k])) for k, p in enumerate(parts)},
            "per_view_test_error_px": view_errors,
        })
        results["trained"] = figures
        print(json.dumps(figures, indent=1))
        mv.Triangulation.plot_reprojection(key, frame=test[12]).savefig(
            out / "multiview_reprojection_trained.png", dpi=80)
    (out / "multiview.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out / 'multiview.json'}")


if __name__ == "__main__":
    main()
