"""What each decoding rule does to one trained model's test error (no retraining).

Runs the model that ``benchmarks/accuracy.py`` registered (``bench_<dataset>``) in its
benchmark home on the test frames of its split, with the learned part relations
(``part_relations``) and the twin separation (``separate_parts``) each on and off, and writes
per body part errors and every test keypoint that the relations moved::

    python benchmarks/decoding.py --home /tmp/bench/h_mm --dataset mirror-mouse
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

VARIANTS = {
    "both rules (default)": {"part_relations": True, "separate_parts": True},
    "no part relations": {"part_relations": False, "separate_parts": True},
    "no separation": {"part_relations": True, "separate_parts": False},
    "neither": {"part_relations": False, "separate_parts": False},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", required=True, help="the ELEMENT_POSE_HOME accuracy.py used")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--video", default=None,
                    help="also analyse this video with and without the relations: how often "
                         "they act where there are no labels")
    ap.add_argument("--video-frames", type=int, default=300)
    ap.add_argument("--video-repeat", type=int, default=1,
                    help="time the video this many times with and without relations, "
                         "alternating; the median frames/s is reported")
    ap.add_argument("--relearn", action="store_true",
                    help="learn the part relations again from the split's training frames with "
                         "the current rule (a model trained before a change to it)")
    args = ap.parse_args()
    os.environ["ELEMENT_POSE_HOME"] = args.home
    os.environ.setdefault("ELEMENT_POSE_PREFIX", "bench_")  # accuracy.py's schemas
    from element_pose.engine.relations import fixed_relations
    from workflow.pipeline import model, train

    key = (model.Model & {"model_name": f"bench_{args.dataset}"}).keys()[0]
    split = (train.DataSplit & {"dataset": args.dataset}).keys()[0]
    parts = model.Model.bodyparts(key)
    data_parts = train.LabeledDataset.bodyparts({"dataset": args.dataset})
    order = [data_parts.index(p) for p in parts]
    ids = train.DataSplit.frame_ids(split, "test")
    truth = train.LabeledDataset.keypoints({"dataset": args.dataset}, ids)[:, 0][:, order]
    images = train.LabeledDataset.images({"dataset": args.dataset}, ids)
    net = model.Model.load(key)
    if args.relearn:
        import torch

        from element_pose.engine.autoconfig import dataset_stats
        from element_pose.engine.relations import learn_relations

        fit = train.DataSplit.frame_ids(split, "train")
        kp = train.LabeledDataset.keypoints({"dataset": args.dataset}, fit)[:, 0][:, order]
        sizes = [(im.shape[1], im.shape[0])
                 for im in train.LabeledDataset.images({"dataset": args.dataset}, fit)]
        rel = learn_relations(kp, dataset_stats(sizes, kp).animal_size_px)
        net.relations = torch.as_tensor(rel, dtype=torch.float32) if len(rel) else None
    n_rel = 0 if net.relations is None else len(fixed_relations(net.relations))
    print(f"{args.dataset}: {len(ids)} test frames, {n_rel} learned relations")
    base = net.config
    preds, rows = {}, {}
    for name, change in VARIANTS.items():
        net.config = base.replace(**change)
        pred = net.predict_frames(images)
        err = np.linalg.norm(pred[..., :2] - truth, axis=-1)
        per = np.nanmean(err, axis=0)
        med = float(np.nanmedian(err))
        preds[name] = (pred, err)
        rows[name] = {"mean_px": float(np.nanmean(err)), "median_px": med,
                      "worst_part": parts[int(np.nanargmax(per))],
                      "worst_over_median": float(np.nanmax(per) / med),
                      "over_20px": int((err > 20).sum()),
                      "per_bodypart_px": {p: float(v) for p, v in zip(parts, per, strict=True)}}
        print(f"  {name:22s} mean {rows[name]['mean_px']:.2f} median {med:.2f} px, worst "
              f"{rows[name]['worst_part']} {np.nanmax(per):.1f} px = "
              f"{rows[name]['worst_over_median']:.1f}x, errors > 20 px: {rows[name]['over_20px']}")
    on, off = preds["both rules (default)"], preds["no part relations"]
    moved = np.argwhere(np.abs(on[0][..., :2] - off[0][..., :2]).sum(-1) > 1e-3)
    changes = [{"frame_id": int(ids[f]), "part": parts[k], "error_without_px": float(off[1][f, k]),
                "error_with_px": float(on[1][f, k])} for f, k in moved]
    for c in changes:
        print(f"  moved by the relations: frame {c['frame_id']} {c['part']}: "
              f"{c['error_without_px']:.1f} -> {c['error_with_px']:.1f} px")
    video = (video_effect(net, base, args.video, args.video_frames, args.video_repeat)
             if args.video else None)
    out = Path(args.out) / f"decoding_{args.dataset}.json"
    out.write_text(json.dumps({"dataset": args.dataset, "relations": n_rel, "variants": rows,
                               "moved_by_relations": changes, "video": video}, indent=1))
    print("wrote", out)


def video_effect(net, base, video: str, frames: int, repeat: int = 1) -> dict:
    """On unlabeled video: the frames that break a relation, those the relations change, and
    the confidence and distance of the moved parts; frames/s with and without them (median of
    ``repeat`` alternating timings)."""
    import torch

    from element_pose.engine.relations import broken_relations, fixed_relations

    poses, speeds = {}, {False: [], True: []}
    for _ in range(max(1, repeat)):
        for on in (False, True):
            net.config = base.replace(part_relations=on)
            poses[on], stats = net.predict_video(video, stop=frames, progress=False)
            speeds[on].append(stats["fps"])
    net.config = base
    speed = {on: float(np.median(v)) for on, v in speeds.items()}
    off, on = poses[False], poses[True]
    moved = np.abs(on - off).sum(axis=2) > 1e-3
    result = {
        "frames": len(off),
        "breaking_before_mending": float(broken_relations(torch.from_numpy(off),
                                                          fixed_relations(net.relations))
                                         .any(dim=1).float().mean()),
        "frames_changed": float(moved.any(axis=1).mean()),
        "moved_per_part": {p: int(moved[:, k].sum()) for k, p in enumerate(net.bodyparts)
                           if moved[:, k].any()},
        "median_confidence_before": float(np.median(off[moved][:, 2])) if moved.any() else None,
        "median_confidence_after": float(np.median(on[moved][:, 2])) if moved.any() else None,
        "median_move_px": float(np.median(np.linalg.norm((on - off)[moved][:, :2], axis=1)))
        if moved.any() else None,
        "fps_without": speed[False], "fps_with": speed[True],
        "fps_timings": {"without": speeds[False], "with": speeds[True]}}
    print("  video:", json.dumps(result))
    return result


if __name__ == "__main__":
    main()
