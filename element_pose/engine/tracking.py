"""Identity across frames: linking detections into tracks, and naming them.

:func:`track` links each frame's detections to the tracks alive so far by a globally optimal
assignment (Hungarian, :func:`scipy.optimize.linear_sum_assignment`) on a cost that combines
motion (distance from where the track is predicted to be, by its recent velocity) and pose
similarity (mean distance of the body parts both confidently show), in units of the animal's
size. A track not seen for up to ``max_gap`` frames can still be re-identified; after that a
new track starts.

:func:`assign_identities` names detections when the model has an identity output: per frame
the names go to the detections by optimal matching of their log-probabilities, pooled over a
window of the same track so a single ambiguous frame (two animals touching) cannot swap them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class TrackerSettings:
    """Settings of :func:`track`.

    Attributes
    ----------
    max_gap : int
        Frames a track may go unseen and still be continued (re-identification).
    max_cost : float
        Largest assignment cost (in animal lengths) of a detection continuing a track.
    pose_weight : float
        Weight of pose distance against motion distance in the cost.
    pcutoff : float
        Body parts below this confidence do not count in the pose distance.
    """

    max_gap: int = 15
    max_cost: float = 1.0
    pose_weight: float = 0.5
    pcutoff: float = 0.3


def _centre(pose: np.ndarray, pcutoff: float) -> np.ndarray:
    good = np.isfinite(pose[:, :2]).all(axis=1) & (np.nan_to_num(pose[:, 2]) >= pcutoff)
    if not good.any():
        good = np.isfinite(pose[:, :2]).all(axis=1)
    if not good.any():
        return np.full(2, np.nan)
    return pose[good, :2].mean(axis=0)


def _size(poses: np.ndarray) -> float:
    """Median animal length (box side) over all detections, for scale-free costs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        span = np.nanmax(poses[..., :2], axis=-2) - np.nanmin(poses[..., :2], axis=-2)
    ext = span.max(axis=-1)
    ext = ext[np.isfinite(ext)]
    return float(np.median(ext)) if len(ext) else 1.0


def track(poses: np.ndarray, settings: TrackerSettings | None = None) -> np.ndarray:
    """Link detections over time.

    Parameters
    ----------
    poses : np.ndarray
        (F, M, K, 3) detections per frame ([x, y, confidence]; all-NaN rows: no detection).
    settings : TrackerSettings, optional

    Returns
    -------
    np.ndarray
        (F, M) int track id of each detection, -1 where there is none. Ids are 0, 1, ...
        in order of first appearance.
    """
    s = settings or TrackerSettings()
    poses = np.asarray(poses, dtype=np.float64)
    f, m = poses.shape[:2]
    ids = np.full((f, m), -1, dtype=np.int64)
    size = max(_size(poses), 1.0)
    # Per live track: last pose, last centre, velocity (px/frame), last frame seen.
    tracks: dict[int, dict] = {}
    next_id = 0
    for i in range(f):
        dets = [j for j in range(m) if np.isfinite(poses[i, j, :, :2]).any()]
        live = [t for t, st in tracks.items() if i - st["frame"] <= s.max_gap + 1]
        cost = np.full((len(live), len(dets)), np.inf)
        for a, t in enumerate(live):
            st = tracks[t]
            gap = i - st["frame"]
            predicted = st["centre"] + st["velocity"] * gap
            for b, j in enumerate(dets):
                centre = _centre(poses[i, j], s.pcutoff)
                motion = np.linalg.norm(centre - predicted) / size
                both = ((np.nan_to_num(st["pose"][:, 2]) >= s.pcutoff)
                        & (np.nan_to_num(poses[i, j, :, 2]) >= s.pcutoff))
                if both.any():
                    shift = st["velocity"] * gap
                    d = np.linalg.norm(poses[i, j, both, :2] - st["pose"][both, :2] - shift,
                                       axis=1)
                    pose_d = float(np.mean(d)) / size
                else:
                    pose_d = motion
                c = (1 - s.pose_weight) * motion + s.pose_weight * pose_d
                # A long gap allows a longer way: re-identification after short losses.
                if c <= s.max_cost * (1 + 0.1 * (gap - 1)):
                    cost[a, b] = c
        matched: set[int] = set()
        if cost.size:
            big = 1e6
            rows, cols = linear_sum_assignment(np.where(np.isfinite(cost), cost, big))
            for a, b in zip(rows, cols, strict=True):
                if cost[a, b] < big:
                    _update(tracks[live[a]], poses[i, dets[b]], i, s.pcutoff)
                    ids[i, dets[b]] = live[a]
                    matched.add(b)
        for b, j in enumerate(dets):
            if b not in matched:
                tracks[next_id] = {"pose": poses[i, j].copy(), "centre": _centre(poses[i, j],
                                   s.pcutoff), "velocity": np.zeros(2), "frame": i}
                ids[i, j] = next_id
                next_id += 1
    return ids


def _update(state: dict, pose: np.ndarray, frame: int, pcutoff: float) -> None:
    centre = _centre(pose, pcutoff)
    gap = frame - state["frame"]
    velocity = (centre - state["centre"]) / max(gap, 1)
    if np.isfinite(velocity).all():
        state["velocity"] = 0.5 * state["velocity"] + 0.5 * velocity  # smoothed
    keep = np.isfinite(pose[:, :2]).all(axis=1)
    state["pose"] = np.where(keep[:, None], pose, state["pose"])
    if np.isfinite(centre).all():
        state["centre"] = centre
    state["frame"] = frame


def by_track(poses: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rearrange (F, M, K, 3) detections into (F, T, K, 3) per track (NaN where unseen)."""
    n = int(ids.max()) + 1 if ids.size and ids.max() >= 0 else 0
    out = np.full((poses.shape[0], n, *poses.shape[2:]), np.nan, dtype=np.float32)
    frame, slot = np.nonzero(ids >= 0)
    out[frame, ids[frame, slot]] = poses[frame, slot]
    return out


def assign_identities(identity: np.ndarray, ids: np.ndarray | None = None, window: int = 60
                      ) -> np.ndarray:
    """Give each detection a name (index of an individual), at most once per frame.

    Parameters
    ----------
    identity : np.ndarray
        (F, M, C) probability of each detection being each of ``C`` individuals (NaN rows:
        no detection).
    ids : np.ndarray, optional
        (F, M) track ids from :func:`track`: the evidence of a detection is pooled over the
        frames of its track within ``window`` frames on either side.
    window : int
        Half-width of that window. Wide, because a name is read worst exactly where it
        matters, when the animals are close and each crop shows both: sleap-fly-clip's
        female was called "male" for 27 frames on end with the male beside her, and
        pooled over 15 frames either side the names were wrong there, over 60 right
        (BENCHMARKS.md). A track that switches animals spreads a wrong name over as many
        frames, so the tracker's switches, not this window, must stay rare.

    Returns
    -------
    np.ndarray
        (F, M) int individual index per detection, -1 where none (no detection, or more
        detections than individuals).
    """
    p = np.clip(np.asarray(identity, dtype=np.float64), 1e-4, 1.0)
    logp = np.log(p)
    f, m, c = logp.shape
    evidence = logp.copy()
    if ids is not None:
        evidence = np.zeros_like(logp)
        for t in np.unique(ids[ids >= 0]):
            frame, slot = np.nonzero(ids == t)
            values = np.nan_to_num(logp[frame, slot])
            csum = np.vstack([np.zeros((1, c)), np.cumsum(values, axis=0)])
            lo = np.searchsorted(frame, frame - window, side="left")
            hi = np.searchsorted(frame, frame + window, side="right")
            evidence[frame, slot] = csum[hi] - csum[lo]
    names = np.full((f, m), -1, dtype=np.int64)
    for i in range(f):
        dets = np.flatnonzero(np.isfinite(logp[i]).all(axis=1))
        if len(dets) == 0:
            continue
        rows, cols = linear_sum_assignment(-evidence[i, dets])
        names[i, dets[rows]] = cols
    return names


def by_identity(poses: np.ndarray, names: np.ndarray, n_individuals: int) -> np.ndarray:
    """Rearrange (F, M, K, 3) detections into (F, C, K, 3) per named individual."""
    out = np.full((poses.shape[0], n_individuals, *poses.shape[2:]), np.nan, dtype=np.float32)
    frame, slot = np.nonzero(names >= 0)
    out[frame, names[frame, slot]] = poses[frame, slot]
    return out
