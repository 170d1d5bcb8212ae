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


#: Validation caps each keypoint's error at this fraction of the animal's size (see
#: :func:`capped_mean_error`).
VALIDATION_CAP_FRACTION = 0.25
#: ... and at no less than this many pixels (one labeled part has no size).
MIN_VALIDATION_CAP_PX = 8.0


def animal_size(keypoints: np.ndarray) -> float:
    """Median over frames of the diagonal of the labeled keypoints' bounding box (px).

    ``keypoints`` is (N, K, 2), NaN where not labeled; 0 when no frame has two labels.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    sizes = []
    for frame in kp.reshape(len(kp), -1, 2):
        seen = frame[np.isfinite(frame).all(axis=1)]
        if len(seen) >= 2:
            sizes.append(float(np.linalg.norm(seen.max(axis=0) - seen.min(axis=0))))
    return float(np.median(sizes)) if sizes else 0.0


def validation_cap(keypoints: np.ndarray) -> float:
    """The error cap (px) of :func:`capped_mean_error` for an animal labeled as ``keypoints``."""
    return max(VALIDATION_CAP_FRACTION * animal_size(keypoints), MIN_VALIDATION_CAP_PX)


def capped_mean_error(predictions: np.ndarray, ground_truth: np.ndarray, cap: float) -> float:
    """Mean keypoint error (px) with each error capped at ``cap``: the validation criterion.

    On the ten or so frames held back for validation, one keypoint found on the wrong animal
    part (a 200 px miss) moves the plain mean more than all other keypoints together, so the
    snapshot kept would be the one that happened to miss once less. Capped, a gross miss
    counts as ``cap`` and the criterion follows how well most keypoints are placed.
    NaN labels are excluded; NaN when none is visible.
    """
    errors = evaluate(predictions, ground_truth)["errors"]
    seen = errors[np.isfinite(errors)]
    return float(np.mean(np.minimum(seen, cap))) if seen.size else float("nan")


#: Per-part OKS falloff (COCO's kappa) used for every body part: we have no per-part
#: labeling variability for a lab's animals, so one value, that of COCO's hips and knees.
OKS_KAPPA = 0.1


def match_animals(predictions: np.ndarray, ground_truth: np.ndarray,
                  max_distance: float | None = None) -> np.ndarray:
    """Optimal one-to-one matching of predicted to labeled animals in each frame.

    The cost is the mean distance over the body parts labeled and predicted (Hungarian
    algorithm); pairs without a shared part, or farther apart than ``max_distance``, are
    not matched.

    Parameters
    ----------
    predictions : np.ndarray
        (F, P, K, 3) predicted animals (all-NaN rows: none).
    ground_truth : np.ndarray
        (F, M, K, 2) labeled animals (all-NaN rows: not in the frame).

    Returns
    -------
    np.ndarray
        (F, M) index of the prediction matched to each labeled animal, -1 for none.
    """
    from scipy.optimize import linear_sum_assignment

    pred = np.asarray(predictions, dtype=np.float64)
    gt = np.asarray(ground_truth, dtype=np.float64)
    f, m = gt.shape[:2]
    out = np.full((f, m), -1, dtype=np.int64)
    for i in range(f):
        d = np.linalg.norm(gt[i, :, None, :, :] - pred[i, None, :, :, :2], axis=-1)  # (M, P, K)
        with np.errstate(invalid="ignore"):
            cost = _nanmean(d, axis=2)
        cost = np.asarray(cost, dtype=np.float64).reshape(m, pred.shape[1])
        if max_distance is not None:
            cost[cost > max_distance] = np.nan
        if not np.isfinite(cost).any():
            continue
        rows, cols = linear_sum_assignment(np.where(np.isfinite(cost), cost, 1e9))
        for r, c in zip(rows, cols, strict=True):
            if np.isfinite(cost[r, c]):
                out[i, r] = c
    return out


def oks(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Object keypoint similarity of one predicted (K, 2+) and one labeled (K, 2) animal.

    The scale ``s`` is the animal's length, the longer side of the box around its labels, so
    that it does not depend on the animal's heading (COCO's segment area collapses for a
    thin animal that lies along an axis); every part has :data:`OKS_KAPPA`, so a part
    ``0.1 s`` away scores ``exp(-1/2)``.
    """
    vis = np.isfinite(truth).all(axis=1)
    if not vis.any():
        return float("nan")
    span = truth[vis].max(axis=0) - truth[vis].min(axis=0)
    area = max(float(span.max()) ** 2, 1.0)
    d2 = np.sum((prediction[vis, :2] - truth[vis]) ** 2, axis=1)
    d2 = np.where(np.isfinite(d2), d2, np.inf)
    return float(np.mean(np.exp(-d2 / (2 * area * OKS_KAPPA ** 2))))


def average_precision(predictions: np.ndarray, scores: np.ndarray, ground_truth: np.ndarray,
                      thresholds: Sequence[float] = tuple(np.arange(0.5, 0.96, 0.05))) -> float:
    """COCO-style mAP over OKS thresholds (0.50:0.05:0.95), detections ranked by score."""
    pred = np.asarray(predictions, dtype=np.float64)
    f = len(pred)
    dets = [(float(scores[i, p]), i, p) for i in range(f) for p in range(pred.shape[1])
            if np.isfinite(pred[i, p, :, :2]).any()]
    dets.sort(key=lambda t: -t[0])
    n_gt = int(np.isfinite(ground_truth).all(axis=-1).any(axis=-1).sum())
    if n_gt == 0:
        return float("nan")
    sims = {}
    for i in range(f):
        for g in range(ground_truth.shape[1]):
            for p in range(pred.shape[1]):
                sims[(i, g, p)] = oks(pred[i, p], ground_truth[i, g])
    aps = []
    for t in thresholds:
        taken: set[tuple[int, int]] = set()
        tp = []
        for _, i, p in dets:
            best, best_g = t, -1
            for g in range(ground_truth.shape[1]):
                s = sims[(i, g, p)]
                if (i, g) not in taken and np.isfinite(s) and s >= best:
                    best, best_g = s, g
            tp.append(best_g >= 0)
            if best_g >= 0:
                taken.add((i, best_g))
        tp_arr = np.asarray(tp, dtype=np.float64)
        ctp = np.cumsum(tp_arr)
        precision = ctp / np.arange(1, len(tp_arr) + 1)
        recall = ctp / n_gt
        # 101-point interpolated precision, as COCO.
        prec = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
        points = []
        for r in np.linspace(0, 1, 101):
            idx = np.searchsorted(recall, r, side="left")
            points.append(prec[idx] if idx < len(prec) else 0.0)
        aps.append(float(np.mean(points)))
    return float(np.mean(aps))


def evaluate_multianimal(predictions: np.ndarray, scores: np.ndarray, ground_truth: np.ndarray,
                         pcutoff: float = 0.6, max_distance: float | None = None) -> dict:
    """Accuracy of several animals per frame.

    Predicted animals are matched to labeled ones per frame (:func:`match_animals`); the
    keypoint figures of :func:`evaluate` are computed on the matched pairs. Also: ``missed``
    (labeled animals without a match), ``spurious`` (predicted animals without one),
    ``frames_with_missed_or_spurious`` (fraction of frames), ``map_oks`` (mAP over OKS
    0.50:0.95) and ``matches`` (F, M).
    """
    pred = np.asarray(predictions, dtype=np.float64)
    gt = np.asarray(ground_truth, dtype=np.float64)
    if pred.ndim != 4 or gt.ndim != 4 or pred.shape[2] != gt.shape[2]:
        raise ValueError(f"predictions {pred.shape} and ground_truth {gt.shape} must be "
                         "(frames, animals, bodyparts, 3) and (frames, animals, bodyparts, 2) "
                         "with the same body parts.")
    matches = match_animals(pred, gt, max_distance)
    f, m, k = gt.shape[:3]
    matched = np.full((f, m, k, 3), np.nan)
    frame, slot = np.nonzero(matches >= 0)
    matched[frame, slot] = pred[frame, matches[frame, slot]]
    labeled = np.isfinite(gt).all(axis=-1).any(axis=-1)
    present = np.isfinite(pred[..., :2]).all(axis=-1).any(axis=-1)
    missed = labeled & (matches < 0)
    used = np.zeros_like(present)
    used[frame, matches[frame, slot]] = True
    spurious = present & ~used
    out = evaluate(matched[labeled & ~missed], gt[labeled & ~missed], pcutoff)
    bad_frames = missed.any(axis=1) | spurious.any(axis=1)
    out.update(missed=int(missed.sum()), spurious=int(spurious.sum()),
               labeled_animals=int(labeled.sum()),
               frames_with_missed_or_spurious=float(bad_frames.mean()) if f else float("nan"),
               map_oks=average_precision(pred, scores, gt), matches=matches)
    return out


def identity_switches(assigned: np.ndarray, matches: np.ndarray) -> int:
    """How often the track (or name) matched to a labeled animal changes over the frames.

    ``assigned`` is (F, P) the track id (or individual index) of each prediction and
    ``matches`` (F, M) the prediction matched to each labeled animal (:func:`match_animals`);
    frames where a labeled animal is unmatched are skipped.
    """
    switches = 0
    for g in range(matches.shape[1]):
        last = None
        for i in range(len(matches)):
            p = matches[i, g]
            if p < 0:
                continue
            current = int(assigned[i, p])
            if last is not None and current != last:
                switches += 1
            last = current
    return switches
