"""What limits a multi-animal model on sleap-fly-clip: its instance network given the truth.

Runs the instance network of a model written by ``benchmarks/multianimal.py`` on crops at the
*labeled* centre of every fly (and, for egocentric models, the labeled body axis), on frames
it trained among (0-999) and on the test frames (1000-1499). Errors near zero on both would
put the blame on the centroid network; a small error on training frames and a large one on
the test frames says the instance network does not carry over to poses it has not seen.

Usage::

    python benchmarks/multianimal_oracle.py /tmp/element-pose-fly/model.pt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from element_pose.engine.multianimal import axis_angles, instance_boxes, load_multianimal_model
from element_pose.io.sleap import read_sleap

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sleap-fly-clip"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()

    from multianimal import read_frames  # the benchmark's frame reader (same folder)

    labels = read_sleap(args.data / "clip.slp")
    model = load_multianimal_model(args.model, device="cpu")
    s, k = model.settings, len(labels.bodyparts)
    ego = s.align is True
    if ego:
        front, back = (labels.bodyparts.index(p) for p in s.align_parts)
    out = {}
    for name, frames_idx in (("train_frames", range(0, 1000, 25)),
                             ("test_frames", range(1000, 1500, 10))):
        idx = list(frames_idx)
        frames, truth = read_frames(args.data / "clip.mp4", idx), labels.keypoints[idx]
        errors = []
        with torch.inference_mode():
            for j, frame in enumerate(frames):
                x = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
                centre, _ = instance_boxes(truth[j])
                n = len(centre)
                angle = (torch.tensor(axis_angles(truth[j], front, back), dtype=torch.float32)
                         if ego else None)
                pred = model._instance(x, torch.zeros(n, dtype=torch.long),
                                       torch.tensor(centre[:, 0], dtype=torch.float32),
                                       torch.tensor(centre[:, 1], dtype=torch.float32),
                                       angle, int(s.instance_crop_size)).numpy()
                errors.append(np.linalg.norm(pred[:, :k, :2] - truth[j], axis=-1))
        e = np.array(errors)
        out[name] = {"mean_px": round(float(np.nanmean(e)), 2),
                     "median_px": round(float(np.nanmedian(e)), 2),
                     "per_bodypart_px": dict(zip(labels.bodyparts,
                                                 np.round(np.nanmean(e, axis=(0, 1)), 1).tolist(),
                                                 strict=True))}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
