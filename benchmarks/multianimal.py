"""Multi-animal benchmark on sleap-fly-clip: two flies, named female / male.

Trains the bundled top-down model (centroid + instance networks, identity output, random
initialisation, default settings) on 200 frames spread over frames 0-999, then analyses
frames 1000-1499 as a video and scores them against the human labels:

* keypoint error after optimal matching of predicted to labeled flies (mean, median, per
  body part), mAP over OKS, missed / spurious flies;
* identity switches of the tracker (anonymous tracks) against the labeled tracks;
* names: the fraction of frames in which the identity output names both flies right;
* frames/s of the analysis (decoding included), and of a single-animal model of the same
  backbone on the same frames for comparison.

Usage::

    python benchmarks/multianimal.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from element_pose.engine.config import EngineConfig
from element_pose.engine.metrics import evaluate_multianimal, identity_switches
from element_pose.engine.multianimal import (
    MultiAnimalConfig,
    load_multianimal_model,
    train_multianimal,
)
from element_pose.engine.network import build_network
from element_pose.engine.predict import PoseModel
from element_pose.engine.sides import learn_sides
from element_pose.engine.tracking import assign_identities, track
from element_pose.io.sleap import read_sleap

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sleap-fly-clip"


def read_frames(video: Path, indices: list[int]) -> list[np.ndarray]:
    """RGB frames at the given (sorted) indices, decoded sequentially."""
    wanted = set(indices)
    cap = cv2.VideoCapture(str(video))
    out, i = [], 0
    while len(out) < len(wanted):
        ok, frame = cap.read()
        if not ok:
            break
        if i in wanted:
            out.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        i += 1
    cap.release()
    return out


def analyse(model, video: Path, start: int, stop: int, batch: int = 8) -> tuple:
    """Poses of frames [start, stop) with the frames/s of decoding + inference."""
    cap = cv2.VideoCapture(str(video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, start)
    t0 = time.perf_counter()
    parts = []
    frames = []
    for _ in range(stop - start):
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        if len(frames) == 64:
            parts.append(model.predict_frames(frames, batch_size=batch))
            frames = []
    if frames:
        parts.append(model.predict_frames(frames, batch_size=batch))
    seconds = time.perf_counter() - t0
    cap.release()
    return parts, (stop - start) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/element-pose-fly"))
    ap.add_argument("--train-frames", type=int, default=200)
    ap.add_argument("--centroid-iterations", default="auto")
    ap.add_argument("--instance-iterations", default="auto")
    ap.add_argument("--test-stop", type=int, default=1500)
    ap.add_argument("--align", action="store_true",
                    help="egocentric crops (multianimal.align): turned to the body axis")
    ap.add_argument("--tag", default="", help="suffix of the result file name")
    ap.add_argument("--params", default="{}",
                    help="engine settings (JSON) both networks start from, e.g. a backbone")
    ap.add_argument("--multianimal", default="{}",
                    help="multi-animal settings (JSON) beside the benchmark's, e.g. "
                         "'{\"instance_backbone_stride\": 8}'")
    ap.add_argument("--model", type=Path,
                    help="score this model file instead of training one")
    ap.add_argument("--ablate", action="store_true",
                    help="also score the model without test-time flip, without side rules and "
                         "with one instance pass (no recentre)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    labels = read_sleap(args.data / "clip.slp")
    video = args.data / "clip.mp4"
    train_idx = [int(i) for i in np.linspace(0, 999, args.train_frames).round()]
    kp = labels.keypoints[train_idx]
    ma = MultiAnimalConfig.from_dict({
        "identity": True, "align": args.align, **json.loads(args.multianimal),
        **({} if args.centroid_iterations == "auto"
           else {"centroid_iterations": int(args.centroid_iterations)}),
        **({} if args.instance_iterations == "auto"
           else {"instance_iterations": int(args.instance_iterations)})})
    train_minutes = None
    if args.model is None:
        images = read_frames(video, train_idx)
        t0 = time.perf_counter()
        result = train_multianimal(images, kp, labels.bodyparts, labels.individuals,
                                   EngineConfig.from_dict(json.loads(args.params)), ma,
                                   args.work, progress=False)
        train_minutes = round((time.perf_counter() - t0) / 60, 1)
        del images
        path, best = result.checkpoint_path, result.best_iteration
    else:
        path = args.model
        best = torch.load(path, map_location="cpu", weights_only=True)["instance"].get(
            "iteration")
    model = load_multianimal_model(path, device="cpu")
    # an inference setting given with --multianimal applies to a stored model too
    inference = json.loads(args.multianimal)
    model.recentre = bool(inference.get("recentre", model.recentre))
    model.search_missed = bool(inference.get("search_missed", model.search_missed))
    settings = torch.load(path, map_location="cpu", weights_only=True)["settings"]
    if "flip_test" not in settings:
        # a file written before test-time flip and side rules: add them as training now
        # would (the rules from the same training frames); the networks are unchanged
        model.flip_test = model.flip_perm is not None
        model.sides, why = learn_sides(kp, labels.bodyparts)
        logging.info("Model file without flip_test / sides: flip_test %s; %s",
                     model.flip_test, why)
    row = score(model, labels, video, args.test_stop)
    if args.ablate:
        variants = {}
        saved = (model.flip_test, model.sides, model.recentre, model.search_missed)
        flip_test, sides, recentre, search = saved
        for name, variant in (("no flip_test", (False, sides, recentre, search)),
                              ("no sides", (flip_test, None, recentre, search)),
                              ("neither", (False, None, recentre, search)),
                              ("one pass (no recentre)", (flip_test, sides, False, search)),
                              ("no second looks (search_missed off)",
                               (flip_test, sides, recentre, False))):
            model.flip_test, model.sides, model.recentre, model.search_missed = variant
            variants[name] = {k: v for k, v in score(model, labels, video, args.test_stop).items()
                              if k not in ("fps_single_animal_same_frames",)}
        model.flip_test, model.sides, model.recentre, model.search_missed = saved
        row["ablations"] = variants
    row = {"dataset": "sleap-fly-clip", "train_frames": len(train_idx),
           "train_minutes": train_minutes,
           "iterations": {"centroid": model.settings.centroid_iterations, "instance": best},
           "settings": model.settings.to_dict(), "params": json.loads(args.params),
           "multianimal_params": json.loads(args.multianimal),
           "flip_test": model.flip_test,
           "sides": None if model.sides is None else model.sides.to_dict(), **row}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"multianimal_fly{args.tag}.json").write_text(json.dumps(row, indent=1))
    print(json.dumps(row, indent=1))


def score(model, labels, video: Path, test_stop: int) -> dict:
    """Analyse frames 1000..test_stop as a video and score them against the labels."""
    parts, fps = analyse(model, video, 1000, test_stop)
    poses = np.concatenate([p.poses for p in parts])
    scores = np.concatenate([p.scores for p in parts])
    identity = np.concatenate([p.identity for p in parts])
    truth = labels.keypoints[1000:test_stop]
    ev = evaluate_multianimal(poses, scores, truth, pcutoff=model.config.pcutoff)
    ids = track(poses)
    switches = identity_switches(ids, ev["matches"])
    names = assign_identities(identity, ids)
    names_frame = assign_identities(identity)
    matches = ev["matches"]

    def names_right(assigned: np.ndarray) -> float:
        ok = []
        for i in range(len(matches)):
            ok.append(all(matches[i, g] >= 0 and assigned[i, matches[i, g]] == g
                          for g in range(matches.shape[1])
                          if np.isfinite(truth[i, g]).all(axis=-1).any()))
        return float(np.mean(ok))

    # Single-animal speed on the same frames: a network of the same backbone on whole frames
    # at the centroid network's scale (weights do not change the speed).
    single_cfg = model.centroid.config
    single = PoseModel(build_network(single_cfg, len(labels.bodyparts)), single_cfg,
                       labels.bodyparts, device="cpu")
    _, single_fps = analyse(single, video, 1000, min(test_stop, 1200))
    return {
        "test_frames": int(len(truth)),
        "mean_error_px": ev["mean_error_px"], "median_error_px": ev["median_error_px"],
        "rmse_px": ev["rmse_px"], "pck": ev["pck"],
        "mean_error_pcutoff_px": ev["mean_error_pcutoff_px"],
        "per_bodypart_error_px": dict(zip(labels.bodyparts,
                                          np.round(ev["per_bodypart_error_px"], 2).tolist(),
                                          strict=True)),
        "map_oks": ev["map_oks"], "missed": ev["missed"], "spurious": ev["spurious"],
        "frames_with_missed_or_spurious": ev["frames_with_missed_or_spurious"],
        # the video frames where a labeled fly has no detection (where to look next)
        "missed_frames": (np.flatnonzero(((matches < 0) & np.isfinite(truth[..., 0]).any(-1))
                                        .any(axis=1)) + 1000).tolist(),
        "tracks": int(ids.max() + 1), "identity_switches_tracker": switches,
        "names_right_fraction": names_right(names),
        "names_right_fraction_per_frame_only": names_right(names_frame),
        # the pooling window of the runs before 2026-12-08 (15 frames either side)
        "names_right_fraction_window_15": names_right(assign_identities(identity, ids, window=15)),
        "identity_switches_names": identity_switches(names, matches),
        "fps_multianimal": fps, "fps_single_animal_same_frames": single_fps,
        "device": "cpu", "init": "random",
    }


if __name__ == "__main__":
    main()
