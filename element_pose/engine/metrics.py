"""Accuracy of predicted keypoints against labels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _nanmean(a: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    a = np.asarray(a, dtype=np.float64)
    count = np.sum(np.isfinite(a), axis=axis)
    total = np.nansum(a, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return float(out) if np.ndim(out) == 0 else out


def evaluate(predictions: np.ndarray, ground_truth: np.ndarray, pcutoff: float = 0.6,
             pck_thresholds: Sequence[float] = (5.0, 10.0)) -> dict:
    """Pixel errors of predictions against labeled keypoints.

    Parameters
    ----------
    predictions : np.ndarray
        (N, K, 3) x, y, confidence.
    ground_truth : np.ndarray
        (N, K, 2) x, y; NaN = not visible (excluded from every figure).
    pcutoff : float
        Confidence cut-off for the ``*_pcutoff_*`` figures (predictions below it are
        excluded, as DeepLabCut does).
    pck_thresholds : sequence of float
        Pixel thresholds for PCK (fraction of visible keypoints within the threshold).

    Returns
    -------
    dict
        ``mean_error_px`` (mean Euclidean error, what DeepLabCut calls RMSE),
        ``median_error_px``, ``rmse_px`` (root of the mean squared Euclidean error),
        ``mean_error_pcutoff_px``, ``rmse_pcutoff_px``, ``pck`` {threshold: fraction},
        ``per_bodypart_error_px`` (K,), ``per_frame_error_px`` (N,; NaN where a frame has no
        visible label), ``errors`` (N, K; NaN where not visible), ``n_keypoints`` (visible
        labels counted), ``fraction_above_pcutoff`` (of visible labels),
        ``mean_error_below_pcutoff_px`` and ``absent_below_pcutoff`` (of keypoints *not*
        labeled, i.e. absent or occluded, the fraction predicted below the cut-off: a
        confidence that means something makes this close to 1).
    """
    pred = np.asarray(predictions, dtype=np.float64)
    gt = np.asarray(ground_truth, dtype=np.float64)
    if pred.ndim != 3 or pred.shape[2] != 3:
        raise ValueError(f"predictions has shape {pred.shape}; expected (frames, bodyparts, 3).")
    if gt.shape != pred.shape[:2] + (2,):
        raise ValueError(f"ground_truth has shape {gt.shape}; expected {pred.shape[:2] + (2,)} "
                         "to match predictions.")
    visible = np.isfinite(gt).all(axis=2)
    errors = np.linalg.norm(pred[..., :2] - gt, axis=2)
    errors[~visible] = np.nan
    flat = errors[visible]
    confident = visible & (pred[..., 2] >= pcutoff)
    cut = errors[confident]
    below = errors[visible & ~confident]
    absent = ~visible
    n = int(flat.size)

    def rmse(values: np.ndarray) -> float:
        return float(np.sqrt(np.mean(values ** 2))) if values.size else float("nan")

    return {
        "mean_error_px": float(np.mean(flat)) if n else float("nan"),
        "median_error_px": float(np.median(flat)) if n else float("nan"),
        "rmse_px": rmse(flat),
        "mean_error_pcutoff_px": float(np.mean(cut)) if cut.size else float("nan"),
        "rmse_pcutoff_px": rmse(cut),
        "pck": {float(t): (float(np.mean(flat <= t)) if n else float("nan"))
                for t in pck_thresholds},
        "per_bodypart_error_px": np.asarray(_nanmean(errors, axis=0), dtype=np.float64),
        "per_frame_error_px": np.asarray(_nanmean(errors, axis=1), dtype=np.float64),
        "errors": errors,
        "n_keypoints": n,
        "fraction_above_pcutoff": float(confident.sum() / n) if n else float("nan"),
        "mean_error_below_pcutoff_px": float(np.mean(below)) if below.size else float("nan"),
        "absent_below_pcutoff": (float(np.mean(pred[..., 2][absent] < pcutoff))
                                 if absent.any() else float("nan")),
    }
