"""One trained model on a dataset's test frames with ``separate_parts`` on and off.

Evidence for :mod:`element_pose.engine.separation`: the same weights, the same frames, the
two decoders; prints the figures of each and every keypoint the separation moved (its error
before and after, its confidence, the part it was too close to). The model file is one that
``benchmarks/accuracy.py`` trained (under its ``--home``, e.g.
``<home>/store/_schema/bench_model/model/model_name=bench_mirror-mouse/weights_*.pt``).

Usage::

    python benchmarks/separation.py --dataset mirror-mouse --model path/to/weights.pt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import datasets  # noqa: E402

from element_pose.engine.metrics import evaluate  # noqa: E402
from element_pose.engine.predict import load_model  # noqa: E402
from element_pose.io.dlc import read_dlc_project  # noqa: E402
from element_pose.io.sleap import read_sleap  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, choices=sorted(datasets()))
    ap.add_argument("--model", required=True, type=Path)
    args = ap.parse_args()
    spec = datasets()[args.dataset]
    labels = (read_dlc_project(spec["path"]) if spec["kind"] == "dlc"
              else read_sleap(spec["path"], include_predicted=True))
    names = labels.frame_names
    test = [names.index(n) for n in json.loads(Path(spec["split"]).read_text())["test"]]
    images = [labels.frames[i].read() for i in test]
    truth = labels.keypoints[test, 0]
    model = load_model(args.model, device="cpu")
    if model.separation is None:
        raise SystemExit(f"{args.model} has no part separation (trained before it existed).")
    radii = model.separation.cpu().numpy()
    pred = {}
    for on in (False, True):
        model.config = model.config.replace(separate_parts=on)
        pred[on] = model.predict_frames(images)
        errors = evaluate(pred[on], truth)["errors"]
        per_part = np.nanmean(errors, axis=0)
        worst = int(np.nanargmax(per_part))
        print(json.dumps({
            "dataset": args.dataset, "separate_parts": on,
            "mean_px": round(float(np.nanmean(errors)), 2),
            "median_px": round(float(np.nanmedian(errors)), 2),
            "gross_over_50px": int((errors > 50).sum()),
            "worst_part": labels.bodyparts[worst],
            "worst_part_px": round(float(per_part[worst]), 2),
            "worst_part_over_median": round(float(per_part[worst] / np.nanmedian(per_part)), 2)}))
    before = np.linalg.norm(pred[False][..., :2] - truth, axis=-1)
    after = np.linalg.norm(pred[True][..., :2] - truth, axis=-1)
    for f, k in zip(*np.nonzero(~np.isclose(pred[False], pred[True]).all(axis=-1)), strict=True):
        d = np.linalg.norm(pred[False][f, :, :2] - pred[False][f, k, :2], axis=-1)
        near = [labels.bodyparts[j] for j in range(len(d)) if j != k and 0 < radii[k, j] > d[j]]
        print(f"moved: test frame {f} {labels.bodyparts[k]}: error {before[f, k]:.1f} -> "
              f"{after[f, k]:.1f} px, confidence {pred[False][f, k, 2]:.2f} -> "
              f"{pred[True][f, k, 2]:.2f}, was on {near}")


if __name__ == "__main__":
    main()
