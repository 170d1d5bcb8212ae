"""Frames worth labeling: k-means on downsampled frames (as DeepLabCut does) plus uniform picks.

Pure NumPy/OpenCV (no database): :func:`frame_features` decodes a recording once and keeps a
small grayscale thumbnail of every ``step``-th frame; :func:`pick_frames` clusters them and
takes, from each cluster, the frame nearest its centre, so the picks cover the different
appearances of the recording (postures, places in the arena, lighting) rather than the most
common one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

METHODS = ("kmeans", "uniform")


def frame_features(paths: Sequence[str | Path], frame_count: int, width: int = 30,
                   max_frames: int = 3000, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Grayscale thumbnails of evenly spaced frames of a recording (one or several files).

    Parameters
    ----------
    paths : sequence of str or Path
        The recording's files in order; frame indices count across them.
    frame_count : int
        Frames in the recording (``RecordingInfo.frame_count``).
    width : int, default 30
        Thumbnail width in pixels (DeepLabCut's k-means uses 30).
    max_frames : int, default 3000
        At most this many frames are kept (every ``ceil(frame_count / max_frames)``-th), which
        bounds the memory and the clustering time of long recordings.

    Returns
    -------
    indices : np.ndarray
        int64 (n,) frame indices of the kept frames.
    features : np.ndarray
        float32 (n, d) thumbnails, each scaled to zero mean and unit norm so that overall
        brightness changes do not dominate the clusters.
    """
    from .engine.video import iter_frames

    if frame_count < 1:
        raise ValueError(f"The recording has {frame_count} frames; nothing to select from.")
    step = max(1, -(-frame_count // max_frames))
    indices, features = [], []
    offset = 0
    bar = tqdm(total=frame_count, desc="read frames for selection", unit="frame", disable=not progress,
               leave=False)
    for path in paths:
        n_file = 0
        for frame in iter_frames(path):
            index = offset + n_file
            if index % step == 0:
                height = max(1, round(frame.shape[0] * width / frame.shape[1]))
                gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
                small = cv2.resize(gray, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
                small -= small.mean()
                small /= np.linalg.norm(small) + 1e-6
                indices.append(index)
                features.append(small.ravel())
            n_file += 1
            bar.update(1)
        offset += n_file
    bar.close()
    if not features:
        raise ValueError(f"No frames could be decoded from {[str(p) for p in paths]}.")
    return np.asarray(indices, dtype=np.int64), np.stack(features)


def uniform_frames(candidates: np.ndarray, n: int) -> np.ndarray:
    """``n`` frames evenly spread over ``candidates`` (sorted frame indices)."""
    candidates = np.asarray(candidates)
    if n <= 0:
        return candidates[:0]
    positions = np.unique(np.linspace(0, len(candidates) - 1, min(n, len(candidates))).round().astype(int))
    return candidates[positions]


def kmeans_frames(indices: np.ndarray, features: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """One frame per k-means cluster (``n`` clusters): the one nearest its cluster's centre.

    Deterministic for a given ``seed`` (OpenCV's k-means++ with a seeded RNG, 3 restarts).
    """
    n = min(n, len(indices))
    if n <= 0:
        return indices[:0]
    if n == len(indices):
        return np.sort(indices)
    cv2.setRNGSeed(int(seed))
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 100, 1e-4)
    _, labels, centres = cv2.kmeans(features, n, None, criteria, 3, cv2.KMEANS_PP_CENTERS)
    labels = labels.ravel()
    picks = []
    for cluster in range(n):
        members = np.flatnonzero(labels == cluster)
        if len(members) == 0:
            continue
        distance = np.linalg.norm(features[members] - centres[cluster], axis=1)
        picks.append(indices[members[np.argmin(distance)]])
    return np.sort(np.asarray(picks, dtype=np.int64))


def pick_frames(indices: np.ndarray, features: np.ndarray, n: int, method: str = "kmeans",
                uniform_fraction: float = 0.2, seed: int = 0,
                exclude: Sequence[int] = ()) -> list[tuple[int, str]]:
    """Choose ``n`` frames to label.

    Parameters
    ----------
    indices, features : np.ndarray
        From :func:`frame_features`.
    n : int
        Frames wanted (fewer when the recording has fewer candidates).
    method : {"kmeans", "uniform"}
        ``"kmeans"`` clusters ``round(n * (1 - uniform_fraction))`` frames and fills the rest
        uniformly in time; ``"uniform"`` spreads all ``n`` evenly.
    uniform_fraction : float, default 0.2
        Share of uniform picks with ``"kmeans"`` (in [0, 1]).
    exclude : sequence of int
        Frame indices never picked (e.g. frames already labeled).

    Returns
    -------
    list of (frame index, reason)
        Sorted by frame index; reason is ``"kmeans"`` or ``"uniform"``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n_frames must be a positive integer, got {n!r}.")
    if not 0.0 <= float(uniform_fraction) <= 1.0:
        raise ValueError(f"uniform_fraction must be in [0, 1], got {uniform_fraction!r}.")
    keep = ~np.isin(indices, np.asarray(list(exclude), dtype=np.int64))
    indices, features = indices[keep], features[keep]
    n_kmeans = 0 if method == "uniform" else int(round(n * (1.0 - float(uniform_fraction))))
    chosen = {int(i): "kmeans" for i in kmeans_frames(indices, features, n_kmeans, seed)}
    rest = indices[~np.isin(indices, list(chosen))]
    for i in uniform_frames(rest, n - len(chosen)):
        chosen[int(i)] = "uniform"
    return sorted(chosen.items())
