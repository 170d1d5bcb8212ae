"""Fixed geometry between body parts, learned from the labels, and decoding that keeps to it.

Some body parts keep a fixed relation along one image axis whatever the animal does: a paw
seen directly and in a mirror is at the same x in both views (up to a few pixels), the two ears
of a head-fixed mouse stay at one height. The training labels show such relations as a
coordinate difference that varies little compared with the size of the animal. When a
prediction breaks one (beyond the labeled range widened by half its width and 2 % of the
animal: a paw of the top view placed on another paw 100 px away while its mirror image is
found), it is the wrong heatmap peak: the part moves to its strongest peak that keeps every
relation, if it has one.

Freely moving animals have few such relations (turning changes every difference), so on them
this does nothing; it only acts where the labels show the geometry fixed.

The other axis of a pair with such a relation gets a *bound*: its labeled range, widened the
same way. A bound never starts a move (the difference is free within it), but the peak a part
moves to must keep it: a paw of the top view must not move to the faint echo of itself in the
bottom view, whose x agrees with its mirror image but whose y is a view away.
"""

from __future__ import annotations

import numpy as np
import torch

#: A difference is a relation when its labeled range is at most this fraction of the animal.
RELATION_MAX_SPREAD = 0.1
#: ... in at least this many frames labeled with both parts.
RELATION_MIN_FRAMES = 20
#: The allowed window is the labeled range widened on each side by this fraction of its width
#: plus ``RELATION_MARGIN_ANIMAL`` of the animal's size: a new pose may stretch a relation a
#: little, never by several times its range.
RELATION_MARGIN = 0.5
RELATION_MARGIN_ANIMAL = 0.02
#: Heatmap peaks per part looked at for one that keeps the relations, the least confidence of
#: a partner whose position is trusted to judge, and the least confidence of a peak to move to
#: (lower: a relation the labels fix is stronger evidence than a faint heatmap; on mirror-mouse
#: the right place of a paw its model put on another paw had 0.03, BENCHMARKS.md).
RELATION_PEAKS = 8
RELATION_MIN_CONFIDENCE = 0.05
RELATION_MIN_PEAK = 0.02


def learn_relations(keypoints: np.ndarray, animal_size: float,
                    max_spread: float = RELATION_MAX_SPREAD,
                    min_frames: int = RELATION_MIN_FRAMES) -> np.ndarray:
    """The coordinate differences between body parts that the labels show fixed.

    Parameters
    ----------
    keypoints : np.ndarray
        (N, K, 2) labeled x, y in pixels; NaN = not labeled.
    animal_size : float
        The labeled animal's size in pixels (median diagonal of its labels' box).
    max_spread, min_frames : float, int
        A difference is kept when labeled in at least ``min_frames`` frames and its range is
        at most ``max_spread * animal_size``.

    Returns
    -------
    np.ndarray
        (R, 6) rows ``[a, b, axis, low, high, fixed]``: ``low <= p[b, axis] - p[a, axis] <=
        high`` for every prediction ``p`` (a < b; axis 0 = x, 1 = y), windows already widened
        by the margins above; ``fixed`` 1 for a relation, 0 for the bound on the other axis of
        a pair with a relation. (0, 6) when there are none.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[-1] != 2:
        raise ValueError(f"keypoints must be (N, K, 2), got shape {kp.shape}.")
    if not np.isfinite(animal_size) or animal_size <= 0:
        return np.zeros((0, 6))
    rows = []
    k = kp.shape[1]
    for a in range(k):
        for b in range(a + 1, k):
            d = kp[:, b] - kp[:, a]
            d = d[np.isfinite(d).all(axis=1)]
            if len(d) < max(1, min_frames):
                continue
            lo, hi = d.min(axis=0), d.max(axis=0)
            fixed = hi - lo <= max_spread * animal_size
            if not fixed.any():
                continue
            margin = RELATION_MARGIN * (hi - lo) + RELATION_MARGIN_ANIMAL * animal_size
            for axis in (0, 1):
                rows.append((a, b, axis, lo[axis] - margin[axis], hi[axis] + margin[axis],
                             float(fixed[axis])))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 6)


def fixed_relations(relations: torch.Tensor) -> torch.Tensor:
    """The relations among ``relations`` (without the bounds); a model file written before
    bounds existed has five columns, all relations."""
    if relations.shape[1] < 6:
        return relations
    return relations[relations[:, 5] > 0.5]


def broken_relations(pose: torch.Tensor, relations: torch.Tensor,
                     min_confidence: float = RELATION_MIN_CONFIDENCE) -> torch.Tensor:
    """(B, R) True where a relation is broken by two parts both found with some confidence."""
    a, b, axis = (relations[:, i].long() for i in range(3))
    d = pose[:, b, :2].gather(2, axis[None, :, None].expand(len(pose), -1, 1))[..., 0] - \
        pose[:, a, :2].gather(2, axis[None, :, None].expand(len(pose), -1, 1))[..., 0]
    found = (pose[:, a, 2] >= min_confidence) & (pose[:, b, 2] >= min_confidence)
    return found & ((d < relations[:, 3]) | (d > relations[:, 4]))


def keep_relations(pose: torch.Tensor, peaks: torch.Tensor, relations: torch.Tensor
                   ) -> torch.Tensor:
    """Move parts that break a learned relation to their strongest peak that keeps them all.

    Parameters
    ----------
    pose : torch.Tensor
        (B, K, 3) [x, y, confidence]: each part's strongest peak.
    peaks : torch.Tensor
        (B, K, M, 3) each part's peaks, strongest first, in the same pixels (NaN rows where
        there are fewer).
    relations : torch.Tensor
        (R, 6) from :func:`learn_relations` (or (R, 5), all relations), in the same pixels.

    Returns
    -------
    torch.Tensor
        ``pose`` where, in a frame with broken relations, a part moved to its strongest other
        peak that breaks none of its relations and bounds. Of the parts that could move, the one in most
        broken relations moves first, then the one whose move leaves the most summed confidence
        (its new peak's and its strongest accuser's). A part never moves for partners weaker
        than itself unless its new peak makes up the difference (a paw found with 0.9 does not
        move because a 0.1 flicker of its mirror image disagrees, as in
        :func:`element_pose.engine.separation.separate_parts`). Repeated until nothing breaks
        or nothing can move; a part moves at most once.
    """
    relations = relations.to(pose.device, pose.dtype)
    fixed = fixed_relations(relations)
    if len(fixed) == 0:
        return pose
    frames = broken_relations(pose, fixed).any(dim=1)
    if not bool(frames.any()):
        return pose
    out = pose.clone()
    index = frames.nonzero().flatten()
    out[index] = _mend_frames(out[index], peaks[index].to(pose.dtype), fixed, relations)
    return out


def _mend_frames(pose: torch.Tensor, peaks: torch.Tensor, fixed: torch.Tensor,
                 keep: torch.Tensor) -> torch.Tensor:
    """:func:`keep_relations` on the frames that break ``fixed`` relations, all frames at
    once; a part moves only to a peak that keeps every row of ``keep`` (relations and bounds).

    Every round moves at most one part per frame, the same one a frame-by-frame search would
    choose, with tensor operations over frames, parts and peaks (no Python loop over frames:
    on a video 40 % of the frames may need it, and on a GPU each small step would wait).
    """
    n, k, m = peaks.shape[:3]
    a, b, axis = (keep[:, i].long() for i in range(3))
    low, high = keep[:, 3], keep[:, 4]
    fa, fb = fixed[:, 0].long(), fixed[:, 1].long()
    cand = peaks[:, :, 1:]  # the strongest peak is where the part is
    usable = torch.isfinite(cand).all(-1) & (cand[..., 2] >= RELATION_MIN_PEAK)
    # each relation's coordinate of every candidate peak of its two parts: (N, R, M-1)
    ax = axis[None, :, None].expand(n, -1, m - 1)
    cand_a = cand[:, a, :, :2].gather(3, ax[..., None])[..., 0]
    cand_b = cand[:, b, :, :2].gather(3, ax[..., None])[..., 0]
    moved = torch.zeros(n, k, dtype=torch.bool, device=pose.device)
    rows = torch.arange(n, device=pose.device)
    for _ in range(k):
        broken = broken_relations(pose, fixed)
        if not bool(broken.any()):
            break
        pa = pose[:, a, :2].gather(2, axis[None, :, None].expand(n, -1, 1))  # (N, R, 1)
        pb = pose[:, b, :2].gather(2, axis[None, :, None].expand(n, -1, 1))
        found_a = (pose[:, a, 2] >= RELATION_MIN_CONFIDENCE)[..., None]
        found_b = (pose[:, b, 2] >= RELATION_MIN_CONFIDENCE)[..., None]
        # a candidate of part a (or b) breaks relation r with the partner where it is now
        # (judged whatever the candidate's own confidence: a faint peak is no excuse)
        d_a, d_b = pb - cand_a, cand_b - pa
        bad_a = found_b & ((d_a < low[:, None]) | (d_a > high[:, None]))
        bad_b = found_a & ((d_b < low[:, None]) | (d_b > high[:, None]))
        bad = torch.zeros(n, k, m - 1, device=pose.device)
        bad.index_add_(1, a, bad_a.to(bad.dtype)).index_add_(1, b, bad_b.to(bad.dtype))
        keeps = usable & (bad == 0)
        has_alt = keeps.any(-1)
        first = keeps.to(torch.int8).argmax(-1)  # strongest keeping peak
        alt = cand.gather(2, first[..., None, None].expand(-1, -1, 1, 3))[:, :, 0]
        # how many broken relations each part is in, and its strongest accuser
        brk = broken.to(pose.dtype)
        count = torch.zeros(n, k, dtype=pose.dtype, device=pose.device)
        count.index_add_(1, fa, brk).index_add_(1, fb, brk)
        accuse_a = torch.where(broken, pose[:, fb, 2], -torch.inf)
        accuse_b = torch.where(broken, pose[:, fa, 2], -torch.inf)
        support = torch.full((n, k), -torch.inf, dtype=pose.dtype, device=pose.device)
        support = support.scatter_reduce(1, fa[None].expand(n, -1), accuse_a, "amax")
        support = support.scatter_reduce(1, fb[None].expand(n, -1), accuse_b, "amax")
        gain = support + alt[..., 2]
        can = (count > 0) & ~moved & has_alt & (gain > torch.maximum(pose[..., 2], support))
        go = can.any(1)
        if not bool(go.any()):
            break
        # most broken relations first, then the most summed confidence (gain <= 2)
        score = torch.where(can, count * 4 + gain, -torch.inf)
        part = score.argmax(1)
        f, p = rows[go], part[go]
        pose = pose.clone()
        pose[f, p] = alt[f, p]
        moved[f, p] = True
    return pose
