"""Left/right body parts kept on their own side of the body axis.

Seen from above, an animal's left legs are on its left: in every one of sleap-fly-clip's
3000 labeled flies the left mid-leg tip lies left of the thorax -> head axis. A heatmap
network from random initialisation still puts a part on the wrong side when a pose is new (on
its twin's spot, or on another leg of the other side). Where the training labels
show such a rule, inference keeps each part's heatmap peak on the side the labels put it:
the axis is decoded first, then every ruled part takes its best peak on its own side.

The rule is learned, never assumed: :func:`learn_sides` keeps a pair only when both parts lie
on opposite, fixed sides of one body axis in at least ``SIDE_CONSISTENCY`` of the labeled
animals (a side view, where both legs show on one side, or folded wings that cross over,
get no rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from element_pose.engine.augment import lateral_pairs
from element_pose.engine.targets import decode

#: Fraction of the labeled animals on which a part must lie on its side for a rule.
SIDE_CONSISTENCY = 0.97
#: Parts of the axis must be labeled on at least this fraction of the animals.
AXIS_LABELED = 0.9
#: A ruled part lies at least this fraction of the animal's length from the axis (median):
#: closer (a fly's eyes beside its head) a small error of the axis would flip its side.
SIDE_DISTANCE = 0.2


@dataclass(frozen=True)
class SideRules:
    """Body axis (``front``, ``back`` part indices) and the side of each ruled part: the sign
    of the cross product of back -> front with back -> part, in image coordinates."""

    front: int
    back: int
    sides: dict[int, int]

    def to_dict(self) -> dict:
        """Plain JSON types (for the model file)."""
        return {"front": self.front, "back": self.back,
                "sides": {str(k): int(v) for k, v in self.sides.items()}}

    @classmethod
    def from_dict(cls, d: dict | None) -> SideRules | None:
        """Inverse of :meth:`to_dict`; None stays None."""
        if not d:
            return None
        return cls(int(d["front"]), int(d["back"]), {int(k): int(v) for k, v in d["sides"].items()})


def _side_distances(kp: np.ndarray, front: int, back: int, part: int) -> np.ndarray:
    """Signed distance of ``part`` from the back -> front line, per animal (NaN: missing)."""
    d = kp[:, front] - kp[:, back]
    v = kp[:, part] - kp[:, back]
    return (d[:, 0] * v[:, 1] - d[:, 1] * v[:, 0]) / np.linalg.norm(d, axis=-1)


def learn_sides(keypoints: np.ndarray, bodyparts: Sequence[str]
                ) -> tuple[SideRules | None, str]:
    """Side rules from labels (..., K, 2), and why (or why not).

    Among axes of two non-lateral parts labeled on >= ``AXIS_LABELED`` of the animals, the
    one that rules the most left/right pairs (ties: the higher worst consistency).
    """
    names = list(bodyparts)
    pairs, unpaired = lateral_pairs(names)
    if unpaired or not pairs:
        return None, ("no rule: " + (f"{', '.join(unpaired)} look left/right but have no twin"
                                     if unpaired else "no left/right body parts"))
    kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, len(names), 2)
    seen = np.isfinite(kp).all(axis=-1)
    lateral = {names.index(n) for pair in pairs for n in pair}
    axial = [k for k in range(len(names)) if k not in lateral and seen[:, k].mean() >= AXIS_LABELED]
    lo, hi = np.nanmin(kp, axis=1), np.nanmax(kp, axis=1)
    near = SIDE_DISTANCE * float(np.nanmedian((hi - lo).max(axis=-1)))
    best, best_key = None, (0, 0.0)
    for i, a in enumerate(axial):
        for b in axial[i + 1:]:
            sides: dict[int, int] = {}
            worst = 1.0
            for left, right in pairs:
                li, ri = names.index(left), names.index(right)
                dl, dr = _side_distances(kp, a, b, li), _side_distances(kp, a, b, ri)
                both = np.isfinite(dl) & np.isfinite(dr) & (dl != 0) & (dr != 0)
                if both.sum() < 10 or min(np.median(np.abs(dl[both])),
                                          np.median(np.abs(dr[both]))) < near:
                    continue
                sl, sr = np.sign(dl), np.sign(dr)
                fraction = float(np.mean(sl[both] > 0))
                sign = 1 if fraction >= 0.5 else -1
                consistency = min(float(np.mean(sl[both] == sign)), float(np.mean(sr[both] == -sign)))
                if consistency >= SIDE_CONSISTENCY:
                    sides[li], sides[ri] = sign, -sign
                    worst = min(worst, consistency)
            key = (len(sides), worst)
            if sides and key > best_key:
                best, best_key = SideRules(a, b, sides), key
    if best is None:
        return None, (f"no rule: no left/right pair lies on fixed sides of a body axis in "
                      f">= {SIDE_CONSISTENCY:.0%} of the labeled animals")
    ruled = sorted({names[k] for k in best.sides})
    return best, (f"{', '.join(ruled)} lie on their own side of {names[best.back]} -> "
                  f"{names[best.front]} in >= {best_key[1]:.1%} of the labeled animals: "
                  "each takes its best heatmap peak on that side")


def decode_with_sides(heatmaps: torch.Tensor, offsets: torch.Tensor, stride: int,
                      rules: SideRules | None) -> torch.Tensor:
    """:func:`~element_pose.engine.targets.decode`, then every ruled part's peak searched
    again on its own side of the decoded axis (within one cell of the axis line either side
    is allowed). (B, K, 3) [x, y, confidence] in network-input pixels."""
    out = decode(heatmaps, offsets, stride)
    if rules is None or not rules.sides:
        return out
    b, _, h, w = heatmaps.shape
    parts = torch.tensor(sorted(rules.sides), device=heatmaps.device)
    sign = torch.tensor([rules.sides[int(k)] for k in parts], device=heatmaps.device,
                        dtype=torch.float32)
    origin = out[:, rules.back, :2]
    axis = out[:, rules.front, :2] - origin
    length = axis.norm(dim=-1).clamp(min=1e-6)
    xs = torch.arange(w, device=heatmaps.device, dtype=torch.float32) * stride + (stride - 1) / 2
    ys = torch.arange(h, device=heatmaps.device, dtype=torch.float32) * stride + (stride - 1) / 2
    # signed distance of every cell centre from the axis line, (B, h, w)
    dist = (axis[:, 0, None, None] * (ys[None, :, None] - origin[:, 1, None, None])
            - axis[:, 1, None, None] * (xs[None, None, :] - origin[:, 0, None, None])
            ) / length[:, None, None]
    allowed = sign[None, :, None, None] * dist[:, None] >= -float(stride)  # (B, P, h, w)
    usable = (length > 2.0 * stride)[:, None, None, None]  # a too short axis has no sides
    logits = heatmaps[:, parts].float()
    masked = torch.where(allowed | ~usable, logits, torch.full_like(logits, -1e4))
    redone = decode(masked, offsets[:, parts].float(), stride)
    out[:, parts] = redone
    return out
