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
        (R, 5) rows ``[a, b, axis, low, high]``: ``low <= p[b, axis] - p[a, axis] <= high``
        for every prediction ``p`` (a < b; axis 0 = x, 1 = y), windows already widened by the
        margins above. (0, 5) when there are none.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[-1] != 2:
        raise ValueError(f"keypoints must be (N, K, 2), got shape {kp.shape}.")
    if not np.isfinite(animal_size) or animal_size <= 0:
        return np.zeros((0, 5))
    rows = []
    k = kp.shape[1]
    for a in range(k):
        for b in range(a + 1, k):
            for axis in (0, 1):
                d = kp[:, b, axis] - kp[:, a, axis]
                d = d[np.isfinite(d)]
                if len(d) < max(1, min_frames):
                    continue
                lo, hi = float(d.min()), float(d.max())
                if hi - lo > max_spread * animal_size:
                    continue
                margin = RELATION_MARGIN * (hi - lo) + RELATION_MARGIN_ANIMAL * animal_size
                rows.append((a, b, axis, lo - margin, hi + margin))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5)


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
        (R, 5) from :func:`learn_relations`, in the same pixels.

    Returns
    -------
    torch.Tensor
        ``pose`` where, in a frame with broken relations, a part moved to its strongest other
        peak that breaks none of its relations. Of the parts that could move, the one in most
        broken relations moves first, then the one whose move leaves the most summed confidence
        (its new peak's and its strongest accuser's). A part never moves for partners weaker
        than itself unless its new peak makes up the difference (a paw found with 0.9 does not
        move because a 0.1 flicker of its mirror image disagrees, as in
        :func:`element_pose.engine.separation.separate_parts`). Repeated until nothing breaks
        or nothing can move; a part moves at most once.
    """
    if len(relations) == 0:
        return pose
    frames = broken_relations(pose, relations.to(pose.device, pose.dtype)).any(dim=1)
    if not bool(frames.any()):
        return pose
    # the few frames that need it are mended on the CPU: a Python loop of small steps would
    # wait for a GPU at every one
    out = pose.clone()
    index = frames.nonzero().flatten()
    mended = _mend_frames(out[index].cpu(), peaks[index].cpu(), relations.cpu().to(pose.dtype))
    out[index] = mended.to(out.device)
    return out


def _mend_frames(pose: torch.Tensor, peaks: torch.Tensor, relations: torch.Tensor
                 ) -> torch.Tensor:
    """:func:`keep_relations` on CPU tensors of frames that break relations."""
    k = pose.shape[1]
    rel_a, rel_b = relations[:, 0].long(), relations[:, 1].long()
    for f in range(len(pose)):
        moved: set[int] = set()
        for _ in range(k):
            broken = broken_relations(pose[f:f + 1], relations)[0]
            if not bool(broken.any()):
                break
            count = torch.bincount(rel_a[broken], minlength=k) + \
                torch.bincount(rel_b[broken], minlength=k)
            moves = []
            for part in count.nonzero().flatten().tolist():
                if part in moved:
                    continue
                accusers = torch.cat([rel_b[broken & (rel_a == part)],
                                      rel_a[broken & (rel_b == part)]])
                support = float(pose[f, accusers, 2].max())
                alt = _peak_keeping_relations(pose[f], peaks[f, part], part, relations)
                if alt is None or support + float(alt[2]) <= max(float(pose[f, part, 2]),
                                                                  support):
                    continue
                moves.append((int(count[part]), support + float(alt[2]), part, alt))
            if not moves:
                break
            _, _, part, alt = max(moves, key=lambda m: (m[0], m[1]))
            pose[f, part] = alt
            moved.add(part)  # never back and forth
    return pose


def _peak_keeping_relations(pose: torch.Tensor, candidates: torch.Tensor, part: int,
                            relations: torch.Tensor) -> torch.Tensor | None:
    """The strongest non-first peak of ``part`` that breaks none of its relations with the
    other parts where they are now."""
    mine = (relations[:, 0] == part) | (relations[:, 1] == part)
    if not bool(mine.any()):
        return None
    for row in candidates[1:]:
        if not bool(torch.isfinite(row).all()) or float(row[2]) < RELATION_MIN_PEAK:
            break  # strongest first: the rest are weaker
        trial = pose.clone()
        trial[part] = row
        if not bool(broken_relations(trial[None], relations[mine])[0].any()):
            return row
    return None
