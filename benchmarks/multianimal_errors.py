"""Where the fly model's wrong body parts land, and how new the test poses are.

Two diagnoses on sleap-fly-clip (BENCHMARKS.md, 2026-12-07):

* ``--model MODEL``: the instance network on crops at the *labeled* centre of every fly of
  every 5th test frame (1000-1499); each part more than 10 px off is put in one class: on the
  spot of its left/right twin, on another of the fly's own parts, on the other fly, or
  nowhere near a labeled part. ``--flip-test`` / ``--sides`` turn those inference steps on
  (the side rules learned from the benchmark's 200 training frames).
* always: in each fly's own frame (thorax at the origin, head up), the fraction of the test
  frames' leg and wing tips more than 10 px from every labeled pose of frames 0-999, and the
  same with the mirror images of those poses (left and right swapped) added, and how far
  each wing opens in the test frames against the widest opening of frames 0-999.

Usage::

    python benchmarks/multianimal_errors.py [--model /tmp/fly_base/model.pt [--flip-test] [--sides]]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from element_pose.engine.augment import lateral_pairs
from element_pose.engine.multianimal import instance_boxes, load_multianimal_model
from element_pose.engine.sides import learn_sides
from element_pose.io.sleap import read_sleap

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sleap-fly-clip"
NEAR_PX = 10.0


def twin_index(bodyparts: list[str]) -> np.ndarray:
    """Index of each part's left/right twin (itself when it has none)."""
    twin = np.arange(len(bodyparts))
    for a, b in lateral_pairs(bodyparts)[0]:
        twin[bodyparts.index(a)], twin[bodyparts.index(b)] = bodyparts.index(b), bodyparts.index(a)
    return twin


def egocentric(kp: np.ndarray, head: int, thorax: int) -> np.ndarray:
    """(..., K, 2) turned so thorax -> head points along +x, thorax at the origin."""
    d = kp[..., head, :] - kp[..., thorax, :]
    angle = np.arctan2(d[..., 1], d[..., 0])[..., None]
    v = kp - kp[..., thorax, None, :]
    cos, sin = np.cos(-angle), np.sin(-angle)
    return np.stack([cos * v[..., 0] - sin * v[..., 1], sin * v[..., 0] + cos * v[..., 1]], -1)


def far(queries: np.ndarray, pool: np.ndarray) -> float:
    """Fraction of ``queries`` (n, 2) more than NEAR_PX from every point of ``pool``."""
    d = np.linalg.norm(queries[:, None] - pool[None], axis=-1).min(axis=1)
    return float(np.mean(d > NEAR_PX))


def near(point: np.ndarray, points: np.ndarray) -> bool:
    """Whether ``point`` lies within NEAR_PX of a labeled one of ``points`` (n, 2)."""
    d = np.linalg.norm(points - point, axis=-1)
    return bool(np.isfinite(d).any() and np.nanmin(d) < NEAR_PX)


def novelty(labels) -> None:
    bp = list(labels.bodyparts)
    twin = twin_index(bp)
    ego = egocentric(labels.keypoints, bp.index("head"), bp.index("thorax"))  # (F, M, K, 2)
    for m, name in enumerate(labels.individuals):
        train, test = ego[:1000, m], ego[1000:, m]
        for k, part in enumerate(bp):
            if twin[k] == k:
                continue
            seen = train[:, k][np.isfinite(train[:, k]).all(-1)]
            mirrored = train[:, twin[k]] * np.array([1.0, -1.0])
            mirrored = mirrored[np.isfinite(mirrored).all(-1)]
            queries = test[:, k][np.isfinite(test[:, k]).all(-1)]

            both = np.concatenate([seen, mirrored])
            print(f"{name:7s} {part:10s} test tips > {NEAR_PX:.0f} px from every training pose: "
                  f"{far(queries, seen):.0%}; with the mirror images too: "
                  f"{far(queries, both):.0%}")
    wing_opening(labels)


def wing_opening(labels) -> None:
    """How far each wing opens (angle at the thorax from the thorax -> abdomen line) in the
    test frames, against the widest opening of frames 0-999."""
    bp = list(labels.bodyparts)
    kp = labels.keypoints[..., :2]
    back = kp[:, :, bp.index("abdomen")] - kp[:, :, bp.index("thorax")]
    for wing in ("wingL", "wingR"):
        tip = kp[:, :, bp.index(wing)] - kp[:, :, bp.index("thorax")]
        cos = (tip * back).sum(-1) / (np.linalg.norm(tip, axis=-1) * np.linalg.norm(back, axis=-1))
        angle = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))  # (F, M)
        for m, name in enumerate(labels.individuals):
            train, test = angle[:1000, m], angle[1000:, m]
            train, test = train[np.isfinite(train)], test[np.isfinite(test)]
            print(f"{name:7s} {wing}: opens at most {train.max():.0f} deg in frames 0-999; "
                  f"further in {(test > train.max()).mean():.0%} of the test frames "
                  f"(90th percentile {np.percentile(test, 90):.0f} deg)")


def classify(labels, data: Path, model_path: Path, flip_test: bool, sides: bool) -> None:
    from multianimal import read_frames  # the benchmark's frame reader (same folder)

    bp = list(labels.bodyparts)
    k_parts = len(bp)
    twin = twin_index(bp)
    model = load_multianimal_model(model_path, device="cpu")
    model.flip_test = flip_test and model.flip_perm is not None
    train_idx = [int(i) for i in np.linspace(0, 999, 200).round()]
    model.sides = learn_sides(labels.keypoints[train_idx], bp)[0] if sides else None
    idx = list(range(1000, 1500, 5))
    frames, truth = read_frames(data / "clip.mp4", idx), labels.keypoints[idx]
    kinds = ("ok", "twin", "own part", "other fly", "nowhere")
    counts = np.zeros((k_parts, len(kinds)), dtype=int)
    errors: list[list[float]] = [[] for _ in range(k_parts)]
    with torch.inference_mode():
        for j, frame in enumerate(frames):
            x = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
            centre, _ = instance_boxes(truth[j])
            n = len(centre)
            pred = model._instance(x, torch.zeros(n, dtype=torch.long),
                                   torch.tensor(centre[:, 0], dtype=torch.float32),
                                   torch.tensor(centre[:, 1], dtype=torch.float32), None,
                                   int(model.settings.instance_crop_size)).numpy()
            for m in range(n):
                for k in range(k_parts):
                    t, p = truth[j, m, k], pred[m, k, :2]
                    if not np.isfinite(t).all():
                        continue
                    e = float(np.linalg.norm(p - t))
                    errors[k].append(e)

                    if e < NEAR_PX:
                        kind = 0
                    elif twin[k] != k and near(p, truth[j, m, twin[k]][None]):
                        kind = 1
                    elif near(p, np.delete(truth[j, m], k, axis=0)):
                        kind = 2
                    elif near(p, truth[j, 1 - m]):
                        kind = 3
                    else:
                        kind = 4
                    counts[k, kind] += 1
    flat = np.concatenate([np.asarray(e) for e in errors])
    print(f"instance network at the labeled centres: mean {flat.mean():.2f} px, "
          f"median {np.median(flat):.2f} px (flip_test {model.flip_test}, "
          f"sides {model.sides is not None})")
    print(f"{'part':10s} {'mean px':>8s} " + " ".join(f"{k:>9s}" for k in kinds))
    for k, part in enumerate(bp):
        print(f"{part:10s} {np.mean(errors[k]):8.1f} "
              + " ".join(f"{c:9d}" for c in counts[k]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--flip-test", action="store_true")
    ap.add_argument("--sides", action="store_true")
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    labels = read_sleap(args.data / "clip.slp")
    novelty(labels)
    if args.model is not None:
        classify(labels, args.data, args.model, args.flip_test, args.sides)


if __name__ == "__main__":
    main()
