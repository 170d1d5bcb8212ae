"""Triangulation of 2D detections from N calibrated cameras (database-free).

Each 3D point is the confidence-weighted linear (DLT) solution over the cameras that see it,
in distortion-free normalised coordinates. With three or more cameras a wrong camera (a
detection on the wrong paw, a reflection) is rejected the RANSAC way: every pair of cameras
proposes a point, the cameras reprojecting within ``threshold`` pixels of it vote for it, and
the point is solved again from the largest agreeing set. Optional temporal smoothing is a
NaN-aware rolling median (:func:`element_pose.filtering.rolling_filter`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from .calibration import Camera
from .params import DictParams


@dataclass(frozen=True)
class TriangulationParams(DictParams):
    """How 2D detections become 3D points.

    Attributes
    ----------
    min_score : float
        Detections with a lower likelihood are not used (0..1).
    threshold : float
        Reprojection error (px) above which a camera disagrees with the others and is left out.
    min_cameras : int
        Cameras that must agree for a point (>= 2); otherwise the point is NaN.
    weighted : bool
        Weight each camera by its detection's likelihood.
    smooth_window : int
        Rolling median over this many frames (odd; 0 or 1 = none) after triangulation.
    """

    min_score: float = 0.1
    threshold: float = 10.0
    min_cameras: int = 2
    weighted: bool = True
    smooth_window: int = 0

    _what = "triangulation"

    def __post_init__(self) -> None:
        for name in ("min_score", "threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ValueError(f"Triangulation parameter {name} must be a number, got {value!r}.")
        if not 0 <= self.min_score <= 1:
            raise ValueError(f"min_score must be within 0..1, got {self.min_score}.")
        if self.threshold <= 0:
            raise ValueError(f"threshold must be > 0 px, got {self.threshold}.")
        if isinstance(self.min_cameras, bool) or not isinstance(self.min_cameras, int) or self.min_cameras < 2:
            raise ValueError(f"min_cameras must be an int >= 2, got {self.min_cameras!r}.")
        if not isinstance(self.weighted, bool):
            raise ValueError(f"weighted must be true or false, got {self.weighted!r}.")
        w = self.smooth_window
        if isinstance(w, bool) or not isinstance(w, int) or w < 0 or (w > 1 and w % 2 == 0):
            raise ValueError(f"smooth_window must be 0, 1 or an odd int, got {w!r}.")


@dataclass
class Points3D:
    """Triangulated points.

    Attributes
    ----------
    points : np.ndarray
        (F, K, 3) world coordinates (the calibration's unit); NaN where too few cameras agree.
    errors : np.ndarray
        (F, K) mean reprojection error in pixels over the cameras used.
    n_cameras : np.ndarray
        (F, K) number of cameras used.
    used : np.ndarray
        (C, F, K) which cameras were used.
    scores : np.ndarray
        (F, K) mean likelihood of the detections used.
    """

    points: np.ndarray
    errors: np.ndarray
    n_cameras: np.ndarray
    used: np.ndarray
    scores: np.ndarray


def _solve(normalised: np.ndarray, projections: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted DLT for N points: normalised (C, N, 2), projections (C, 3, 4), weights (C, N)
    with 0 for unused cameras. Returns (N, 3); NaN where fewer than two cameras have weight."""
    n_cams, n = weights.shape
    xy = np.nan_to_num(normalised)
    rows = np.empty((n, 2 * n_cams, 4))
    for c in range(n_cams):
        p = projections[c]
        w = weights[c][:, None]
        rows[:, 2 * c] = w * (xy[c, :, :1] * p[2] - p[0])
        rows[:, 2 * c + 1] = w * (xy[c, :, 1:] * p[2] - p[1])
    out = np.full((n, 3), np.nan)
    ok = (weights > 0).sum(axis=0) >= 2
    if ok.any():
        _, _, vh = np.linalg.svd(rows[ok])
        homogeneous = vh[:, -1]
        with np.errstate(divide="ignore", invalid="ignore"):
            out[ok] = homogeneous[:, :3] / homogeneous[:, 3:]
    return out


def _reprojection_errors(points: np.ndarray, pixels: np.ndarray, cameras: Sequence[Camera]) -> np.ndarray:
    """(C, N) pixel distance between each camera's detection and the projected point."""
    return np.stack([np.linalg.norm(cam.project(points) - pixels[c], axis=-1)
                     for c, cam in enumerate(cameras)])


def triangulate(pixels: np.ndarray, cameras: Sequence[Camera], scores: np.ndarray | None = None,
                params: TriangulationParams | dict | None = None) -> Points3D:
    """3D points from 2D detections.

    Parameters
    ----------
    pixels : np.ndarray
        (C, F, K, 2) detections in pixels of each camera (NaN = not detected).
    cameras : sequence of Camera
        The C cameras, in the order of ``pixels``.
    scores : np.ndarray, optional
        (C, F, K) likelihoods; all 1 when omitted.
    params : TriangulationParams or dict, optional
    """
    params = TriangulationParams.from_dict(params)
    pixels = np.asarray(pixels, np.float64)
    if pixels.ndim != 4 or pixels.shape[-1] != 2:
        raise ValueError(f"pixels must be (cameras, frames, parts, 2), got shape {pixels.shape}.")
    n_cams, n_frames, n_parts, _ = pixels.shape
    if n_cams != len(cameras):
        raise ValueError(f"pixels hold {n_cams} cameras, {len(cameras)} cameras given.")
    if n_cams < 2:
        raise ValueError("Triangulation needs at least two cameras.")
    if scores is None:
        scores = np.ones(pixels.shape[:3])
    scores = np.asarray(scores, np.float64)
    if scores.shape != pixels.shape[:3]:
        raise ValueError(f"scores must have shape {pixels.shape[:3]}, got {scores.shape}.")

    flat = pixels.reshape(n_cams, -1, 2)
    flat_scores = scores.reshape(n_cams, -1)
    valid = np.all(np.isfinite(flat), axis=-1) & np.isfinite(flat_scores) & (flat_scores >= params.min_score)
    weights = np.where(valid, np.clip(flat_scores, 1e-3, None) if params.weighted else 1.0, 0.0)
    normalised = np.stack([cam.undistort(flat[c]) for c, cam in enumerate(cameras)])
    projections = np.stack([cam.extrinsics for cam in cameras])

    points = _solve(normalised, projections, weights)
    errors = _reprojection_errors(points, flat, cameras)
    used = valid.copy()
    if n_cams >= 3:
        # Every camera pair proposes a point; the proposal most cameras agree with wins.
        best_count = np.zeros(flat.shape[1], int)
        best_spread = np.full(flat.shape[1], np.inf)
        for i, j in combinations(range(n_cams), 2):
            pair = np.zeros_like(weights)
            pair[[i, j]] = weights[[i, j]]
            proposal = _solve(normalised, projections, pair)
            err = _reprojection_errors(proposal, flat, cameras)
            agree = valid & (err < params.threshold)
            count = agree.sum(axis=0)
            spread = np.where(agree, err, 0).sum(axis=0)
            better = (count > best_count) | ((count == best_count) & (spread < best_spread))
            better &= count >= 2
            used[:, better] = agree[:, better]
            best_count[better], best_spread[better] = count[better], spread[better]
        no_pair = best_count < 2
        used[:, no_pair] = False
        points = _solve(normalised, projections, np.where(used, weights, 0.0))
        errors = _reprojection_errors(points, flat, cameras)

    n_used = used.sum(axis=0)
    points[n_used < params.min_cameras] = np.nan
    used[:, n_used < params.min_cameras] = False
    n_used = used.sum(axis=0)
    with np.errstate(invalid="ignore"):
        mean_error = np.where(n_used > 0, np.where(used, errors, 0).sum(axis=0) / np.maximum(n_used, 1), np.nan)
        mean_score = np.where(n_used > 0, np.where(used, flat_scores, 0).sum(axis=0) / np.maximum(n_used, 1), np.nan)

    points = points.reshape(n_frames, n_parts, 3)
    if params.smooth_window > 1:
        from .filtering import rolling_filter

        points = rolling_filter(points, params.smooth_window, "median", min_periods=1)
        points[n_used.reshape(n_frames, n_parts) == 0] = np.nan
    return Points3D(points=points, errors=mean_error.reshape(n_frames, n_parts),
                    n_cameras=n_used.reshape(n_frames, n_parts),
                    used=used.reshape(n_cams, n_frames, n_parts),
                    scores=mean_score.reshape(n_frames, n_parts))


def reproject(points: np.ndarray, cameras: Sequence[Camera]) -> np.ndarray:
    """(C, ..., 2) pixel positions of world points (..., 3) in each camera."""
    return np.stack([cam.project(points) for cam in cameras])


def align_by_timestamps(timestamps: Sequence[np.ndarray], tolerance: float | None = None) -> np.ndarray:
    """Frame of each camera matching each frame of the first camera.

    Parameters
    ----------
    timestamps : sequence of arrays
        Frame times (s) of each camera, on a common clock.
    tolerance : float, optional
        Largest time difference accepted for a match (default: half the first camera's median
        frame interval).

    Returns
    -------
    np.ndarray
        (C, F0) frame indices, -1 where a camera has no frame within the tolerance.

    Raises
    ------
    ValueError
        When fewer than half of the first camera's frames find a match in some camera: the
        clocks are not shared or the recordings do not overlap.
    """
    reference = np.asarray(timestamps[0], np.float64)
    if tolerance is None:
        tolerance = 0.5 * float(np.median(np.diff(reference))) if len(reference) > 1 else np.inf
    out = np.empty((len(timestamps), len(reference)), int)
    for c, times in enumerate(timestamps):
        times = np.asarray(times, np.float64)
        if len(times) == 0:
            raise ValueError(f"Camera {c} has no frames.")
        right = np.clip(np.searchsorted(times, reference), 1, len(times) - 1) if len(times) > 1 else np.zeros(len(reference), int)
        left = np.maximum(right - 1, 0)
        nearest = np.where(np.abs(times[left] - reference) <= np.abs(times[right] - reference), left, right)
        match = np.abs(times[nearest] - reference) <= tolerance
        out[c] = np.where(match, nearest, -1)
        if match.mean() < 0.5:
            raise ValueError(
                f"Only {match.sum()} of {len(reference)} frames of the first camera have a frame of "
                f"camera {c} within {tolerance:.4f} s: the recordings do not overlap in time or "
                "their timestamps are not on one clock.")
    return out
