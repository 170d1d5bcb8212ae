"""NaN-aware filtering of pose trajectories (pure NumPy/SciPy, no database).

Function and argument names follow `movement <https://movement.neuroinformatics.dev>`_
(``filter_by_confidence``, ``interpolate_over_time``, ``rolling_filter``, ``savgol_filter``)
so users of both find the same vocabulary, but they operate on plain arrays: every function
takes an array of shape ``(F, ...)`` and filters along axis 0 (time), independently for every
other index (body part, individual, coordinate).

:func:`filter_pose` chains them on a pose array ``(F, K, 3)`` = frames x body parts x
``[x, y, likelihood]`` driven by a validated :class:`FilterParams`:

1. confidence cut-off: x, y -> NaN where likelihood < ``confidence_threshold``;
2. jump rejection: x, y -> NaN where a point moves more than ``max_jump_px`` per frame
   from the previous kept point;
3. linear interpolation over gaps of at most ``max_gap`` frames (edges and longer gaps
   stay NaN);
4. smoothing with a centred median or a Savitzky-Golay filter of ``window`` frames.

What happens to the likelihood channel
--------------------------------------
The likelihood is never smoothed. In the output it is

* the original likelihood where the point was kept (measured, possibly smoothed in x, y);
* linearly interpolated between the two kept points that bracket a gap where the point was
  filled by interpolation (so it is >= the confidence threshold, like its neighbours, and
  a display cut-off treats the filled point like them);
* NaN wherever x, y are NaN (removed and not refilled, or missing in the input).

Smoothing never creates points: a frame whose x, y are NaN before smoothing is NaN after it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.signal

from .params import DictParams

logger = logging.getLogger(__name__)

__all__ = [
    "FilterParams",
    "filter_by_confidence",
    "filter_pose",
    "interpolate_over_time",
    "reject_jumps",
    "rolling_filter",
    "savgol_filter",
]

_ROLLING_STATISTICS = ("median", "mean", "max", "min")
_INTERPOLATION_METHODS = ("linear", "nearest")
_SMOOTHING = ("median", "savgol")


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _as_float_array(data: Any, name: str = "data") -> np.ndarray:
    array = np.asarray(data)
    if array.ndim < 1:
        raise ValueError(f"{name} must be an array of shape (F, ...) with time on axis 0, got a scalar.")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}.")
    return array.astype(np.float64, copy=True)


def _as_columns(array: np.ndarray) -> np.ndarray:
    """View ``(F, ...)`` as ``(F, N)`` (copy-free for C-contiguous input)."""
    return array.reshape(array.shape[0], -1)


def _check_window(window: Any, n_frames: int | None = None, name: str = "window") -> int:
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)):
        raise ValueError(f"{name} must be an odd positive integer number of frames, got {window!r}.")
    window = int(window)
    if window < 1 or window % 2 == 0:
        raise ValueError(
            f"{name}={window} is invalid: use an odd positive number of frames (e.g. {window + 1 if window > 0 else 1}) "
            "so the window is centred on each frame."
        )
    if n_frames is not None and window > n_frames:
        raise ValueError(
            f"{name}={window} frames is longer than the data ({n_frames} frames); use a window "
            f"of at most {n_frames if n_frames % 2 else n_frames - 1} frames."
        )
    return window


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Start/stop (exclusive) of the runs of True in a 1-D boolean array."""
    if not mask.any():
        return []
    padded = np.concatenate(([False], mask, [False]))
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


# --------------------------------------------------------------------------------------
# building blocks (movement names)
# --------------------------------------------------------------------------------------


def filter_by_confidence(data: np.ndarray, confidence: np.ndarray, threshold: float = 0.6) -> np.ndarray:
    """Set data to NaN where the confidence is below a threshold.

    Parameters
    ----------
    data : np.ndarray
        Array of shape ``(F, ...)``, e.g. positions ``(F, K, 2)``.
    confidence : np.ndarray
        Confidence with the same shape as ``data``, or with ``data``'s shape without its last
        axis (e.g. ``(F, K)`` for positions ``(F, K, 2)``; broadcast over the coordinates).
    threshold : float, default 0.6
        Values whose confidence is below ``threshold`` (or NaN) become NaN.

    Returns
    -------
    np.ndarray
        A float64 copy of ``data`` with the low-confidence values set to NaN.
    """
    result = _as_float_array(data)
    confidence = np.asarray(confidence, dtype=np.float64)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating, np.integer)):
        raise ValueError(f"threshold must be a number, got {threshold!r}.")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}.")
    if confidence.shape == result.shape:
        keep = confidence >= threshold
    elif result.ndim >= 2 and confidence.shape == result.shape[:-1]:
        keep = (confidence >= threshold)[..., np.newaxis]
    else:
        raise ValueError(
            f"confidence has shape {confidence.shape}; expected {result.shape} (same as data) "
            f"or {result.shape[:-1]} (data without its last, coordinate axis)."
        )
    result[~np.broadcast_to(keep, result.shape)] = np.nan
    return result


def reject_jumps(data: np.ndarray, max_jump_px: float) -> np.ndarray:
    """Set to NaN the points that jump too far from the previous kept point.

    A point at frame ``t`` is rejected when its Euclidean distance to the last kept point of
    the same track (frame ``s < t``) exceeds ``max_jump_px * (t - s)``: ``max_jump_px`` is a
    speed limit in pixels per frame. A one-frame spike is rejected and the next frame is
    compared with the point before the spike. Scaling the limit with the time since the last
    kept point lets a track recover after a genuine relocation (or an outlier at its first
    frame) instead of rejecting everything that follows.

    Parameters
    ----------
    data : np.ndarray
        Positions of shape ``(F, ..., D)``; the last axis holds the coordinates (x, y). A point
        with any NaN coordinate is missing and is skipped.
    max_jump_px : float
        Largest allowed displacement per frame, in pixels (> 0).

    Returns
    -------
    np.ndarray
        A float64 copy of ``data`` with the rejected points set to NaN (all coordinates).
    """
    result = _as_float_array(data)
    if result.ndim < 2:
        raise ValueError(
            f"data must have shape (F, ..., D) with coordinates on the last axis, got {result.shape}."
        )
    if isinstance(max_jump_px, bool) or not isinstance(max_jump_px, (int, float, np.integer, np.floating)):
        raise ValueError(f"max_jump_px must be a positive number of pixels, got {max_jump_px!r}.")
    if not (np.isfinite(max_jump_px) and max_jump_px > 0):
        raise ValueError(f"max_jump_px must be a positive, finite number of pixels, got {max_jump_px}.")
    n_frames, n_dims = result.shape[0], result.shape[-1]
    points = result.reshape(n_frames, -1, n_dims)  # (F, N, D) view
    n_tracks = points.shape[1]
    n_valid_before = int((~np.isnan(points).any(axis=2)).sum())
    last = np.full((n_tracks, n_dims), np.nan)
    last_frame = np.full(n_tracks, -1, dtype=np.int64)
    for t in range(n_frames):
        current = points[t]
        valid = ~np.isnan(current).any(axis=1)
        has_last = last_frame >= 0
        distance = np.sqrt(np.sum((current - last) ** 2, axis=1))
        with np.errstate(invalid="ignore"):
            jump = valid & has_last & (distance > max_jump_px * (t - last_frame))
        if jump.any():
            current[jump] = np.nan
        keep = valid & ~jump
        last[keep] = current[keep]
        last_frame[keep] = t
    n_rejected = n_valid_before - int((~np.isnan(points).any(axis=2)).sum())
    logger.debug("reject_jumps: %d points rejected (max %.3g px/frame).", n_rejected, max_jump_px)
    return result


def interpolate_over_time(
    data: np.ndarray, method: str = "linear", max_gap: int | None = None
) -> np.ndarray:
    """Fill NaN gaps along time by interpolation.

    Parameters
    ----------
    data : np.ndarray
        Array of shape ``(F, ...)``; every other index is a separate series.
    method : {"linear", "nearest"}, default "linear"
        Interpolation between the two valid values that bracket a gap.
    max_gap : int or None, default None
        Longest gap (number of consecutive NaN frames) to fill; longer gaps are left
        entirely NaN. ``None`` fills every interior gap; ``0`` fills nothing.

    Returns
    -------
    np.ndarray
        A float64 copy of ``data`` with the gaps filled. NaN before the first and after the
        last valid value of a series (the edges) is never filled.
    """
    result = _as_float_array(data)
    if method not in _INTERPOLATION_METHODS:
        raise ValueError(f"method={method!r} is not supported; use one of {_INTERPOLATION_METHODS}.")
    if max_gap is not None:
        if isinstance(max_gap, bool) or not isinstance(max_gap, (int, np.integer)):
            raise ValueError(f"max_gap must be a non-negative integer number of frames or None, got {max_gap!r}.")
        if max_gap < 0:
            raise ValueError(f"max_gap={max_gap} is negative; use 0 (fill nothing), a positive number of frames, or None (fill all).")
        if max_gap == 0:
            return result
    columns = _as_columns(result)
    frames = np.arange(result.shape[0], dtype=np.float64)
    for j in np.flatnonzero(np.isnan(columns).any(axis=0)):
        series = columns[:, j]
        missing = np.isnan(series)
        valid_index = np.flatnonzero(~missing)
        if valid_index.size < 2:
            continue
        first, last = valid_index[0], valid_index[-1]
        for start, stop in _runs(missing[first : last + 1]):
            start, stop = start + first, stop + first
            if max_gap is not None and stop - start > max_gap:
                continue
            before, after = start - 1, stop
            if method == "linear":
                series[start:stop] = np.interp(
                    frames[start:stop], [before, after], [series[before], series[after]]
                )
            else:  # nearest; ties (the middle of an odd gap) go to the earlier value
                midpoint = (before + after) / 2.0
                idx = np.arange(start, stop)
                series[start:stop] = np.where(idx <= midpoint, series[before], series[after])
    return result


def rolling_filter(
    data: np.ndarray, window: int, statistic: str = "median", min_periods: int | None = None
) -> np.ndarray:
    """Apply a centred rolling-window statistic along time, ignoring NaN.

    Parameters
    ----------
    data : np.ndarray
        Array of shape ``(F, ...)``.
    window : int
        Window length in frames; odd, so the window is centred (frames ``t - window // 2`` to
        ``t + window // 2``). Near the edges the window is truncated.
    statistic : {"median", "mean", "max", "min"}, default "median"
        Statistic of the valid (non-NaN) values in the window.
    min_periods : int or None, default None
        Minimum number of valid values in the window for a result; otherwise NaN. ``None``
        means ``window`` (as in movement / xarray): any NaN in the window, or a truncated
        window at the edges, gives NaN. Use 1 to keep every frame that has a value nearby.

    Returns
    -------
    np.ndarray
        A float64 array of the same shape. Note that with a small ``min_periods`` a NaN frame
        whose neighbours are valid receives a value.
    """
    result = _as_float_array(data)
    window = _check_window(window)
    if statistic not in _ROLLING_STATISTICS:
        raise ValueError(f"statistic={statistic!r} is not supported; use one of {_ROLLING_STATISTICS}.")
    if min_periods is None:
        min_periods = window
    if isinstance(min_periods, bool) or not isinstance(min_periods, (int, np.integer)) or not 1 <= min_periods <= window:
        raise ValueError(f"min_periods must be an integer in [1, window={window}] or None, got {min_periods!r}.")
    reducer = {"median": np.nanmedian, "mean": np.nanmean, "max": np.nanmax, "min": np.nanmin}[statistic]
    half = window // 2
    columns = _as_columns(result)
    n_frames = columns.shape[0]
    padded = np.full((n_frames + 2 * half,), np.nan)
    for j in range(columns.shape[1]):
        padded[half : half + n_frames] = columns[:, j]
        windows = np.lib.stride_tricks.sliding_window_view(padded, window)  # (F, window)
        counts = np.sum(~np.isnan(windows), axis=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN windows
            values = reducer(windows, axis=1)
        values[counts < min_periods] = np.nan
        columns[:, j] = values
    return result


def savgol_filter(data: np.ndarray, window: int, polyorder: int = 2, **kwargs: Any) -> np.ndarray:
    """Smooth with a Savitzky-Golay filter along time, one contiguous valid run at a time.

    NaN is not propagated: each run of consecutive valid frames is filtered on its own with
    :func:`scipy.signal.savgol_filter` (``mode="interp"`` by default, so the run's ends are
    fitted rather than padded). A run shorter than ``window`` is filtered with the longest
    odd window that fits it, and left unchanged if that window would be ``<= polyorder``.
    NaN frames stay NaN.

    Parameters
    ----------
    data : np.ndarray
        Array of shape ``(F, ...)``.
    window : int
        Window length in frames, odd, at most the number of frames.
    polyorder : int, default 2
        Order of the fitted polynomial, smaller than ``window``.
    **kwargs
        Passed to :func:`scipy.signal.savgol_filter` (e.g. ``mode``, ``deriv``, ``delta``);
        ``axis`` and ``window_length`` are set here.

    Returns
    -------
    np.ndarray
        A float64 array of the same shape.
    """
    result = _as_float_array(data)
    window = _check_window(window, result.shape[0])
    if isinstance(polyorder, bool) or not isinstance(polyorder, (int, np.integer)) or polyorder < 0:
        raise ValueError(f"polyorder must be a non-negative integer, got {polyorder!r}.")
    if polyorder >= window:
        raise ValueError(f"polyorder={polyorder} must be smaller than window={window}; lower polyorder or widen the window.")
    for key in ("axis", "window_length", "polyorder"):
        if key in kwargs:
            raise ValueError(f"savgol_filter sets {key!r} itself; remove it from the keyword arguments.")
    kwargs.setdefault("mode", "interp")
    columns = _as_columns(result)
    missing = np.isnan(columns)
    if not missing.any():
        columns[:] = scipy.signal.savgol_filter(columns, window, polyorder, axis=0, **kwargs)
        return result
    for j in range(columns.shape[1]):
        for start, stop in _runs(~missing[:, j]):
            length = stop - start
            run_window = min(window, length if length % 2 else length - 1)
            if run_window <= polyorder:
                continue
            columns[start:stop, j] = scipy.signal.savgol_filter(
                columns[start:stop, j], run_window, polyorder, **kwargs
            )
    return result


# --------------------------------------------------------------------------------------
# parameter set and pipeline
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FilterParams(DictParams):
    """Validated parameters of :func:`filter_pose`.

    Attributes
    ----------
    confidence_threshold : float or None, default 0.6
        x, y -> NaN where likelihood < threshold (or NaN); in [0, 1]. ``None`` skips the step
        (use it for data without a likelihood, e.g. imported labels).
    max_jump_px : float or None, default None
        Speed limit in pixels per frame for :func:`reject_jumps` (> 0). ``None`` skips it.
    max_gap : int or None, default 5
        Longest gap (frames) filled by interpolation; ``0`` skips interpolation, ``None``
        fills every interior gap.
    interpolation : {"linear", "nearest"}, default "linear"
    smoothing : {"median", "savgol"} or None, default "median"
        ``None`` skips smoothing.
    window : int, default 5
        Smoothing window in frames (odd, >= 1; at most the number of frames of the data).
    polyorder : int, default 2
        Savitzky-Golay polynomial order (< window); ignored by the median filter.
    min_periods : int, default 1
        Median filter: minimum valid frames in the window (1 <= min_periods <= window).
    """

    _what = "filter"

    confidence_threshold: float | None = 0.6
    max_jump_px: float | None = None
    max_gap: int | None = 5
    interpolation: str = "linear"
    smoothing: str | None = "median"
    window: int = 5
    polyorder: int = 2
    min_periods: int = 1

    def __post_init__(self) -> None:
        def is_int(value: Any) -> bool:
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

        def is_number(value: Any) -> bool:
            return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)

        def fail(name: str, expected: str) -> None:
            raise ValueError(f"Filter parameter {name}={getattr(self, name)!r} is invalid: expected {expected}.")

        threshold = self.confidence_threshold
        if threshold is not None:
            if not is_number(threshold) or not 0.0 <= float(threshold) <= 1.0:
                fail("confidence_threshold", "a number in [0, 1], or None to skip the cut-off")
            object.__setattr__(self, "confidence_threshold", float(threshold))
        jump = self.max_jump_px
        if jump is not None:
            if not is_number(jump) or not (np.isfinite(jump) and jump > 0):
                fail("max_jump_px", "a positive number of pixels per frame, or None to skip")
            object.__setattr__(self, "max_jump_px", float(jump))
        if self.max_gap is not None:
            if not is_int(self.max_gap) or self.max_gap < 0:
                fail("max_gap", "a non-negative integer number of frames (0 = no interpolation), or None to fill every gap")
            object.__setattr__(self, "max_gap", int(self.max_gap))
        if self.interpolation not in _INTERPOLATION_METHODS:
            fail("interpolation", f"one of {_INTERPOLATION_METHODS}")
        if self.smoothing is not None and self.smoothing not in _SMOOTHING:
            fail("smoothing", f"one of {_SMOOTHING} or None")
        if not is_int(self.window) or self.window < 1 or self.window % 2 == 0:
            fail("window", "an odd positive integer number of frames (e.g. 5)")
        if not is_int(self.polyorder) or self.polyorder < 0:
            fail("polyorder", "a non-negative integer")
        if self.smoothing == "savgol" and self.polyorder >= self.window:
            raise ValueError(
                f"Filter parameter polyorder={self.polyorder} must be smaller than window={self.window} "
                "for Savitzky-Golay smoothing; lower polyorder or widen the window."
            )
        if not is_int(self.min_periods) or not 1 <= self.min_periods <= self.window:
            fail("min_periods", f"an integer in [1, window={self.window}]")
        for name in ("window", "polyorder", "min_periods"):
            object.__setattr__(self, name, int(getattr(self, name)))

    def to_json(self) -> str:
        """Canonical JSON: all parameters, sorted keys, no whitespace."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        """Hex SHA-256 of :meth:`to_json`: equal parameter sets give equal hashes."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()


def filter_pose(pose: np.ndarray, params: Mapping[str, Any] | FilterParams | None = None) -> np.ndarray:
    """Filter a pose array: confidence cut-off, jump rejection, interpolation, smoothing.

    Parameters
    ----------
    pose : np.ndarray
        Float array ``(F, K, 3)`` = frames x body parts x ``[x, y, likelihood]``, NaN x, y
        where missing (``(F, I, K, 3)`` with individuals works the same). Every body part (and
        x, y separately) is filtered independently.
    params : dict or FilterParams or None
        See :class:`FilterParams`; a dict is validated with :meth:`FilterParams.from_dict`;
        ``None`` uses the defaults.

    Returns
    -------
    np.ndarray
        New float64 array of the same shape. See the module docstring for the likelihood
        channel.

    Raises
    ------
    ValueError
        If ``pose`` is not ``(F, K, 3)``, the parameters are invalid, or the smoothing window is
        longer than the data.
    """
    params = FilterParams.from_dict(params)
    pose = _as_float_array(pose, "pose")
    if pose.ndim < 3 or pose.shape[-1] != 3:
        raise ValueError(
            f"pose must have shape (frames, body parts, 3) = [x, y, likelihood] (or (frames, "
            f"individuals, body parts, 3)), got {pose.shape}."
        )
    n_frames = pose.shape[0]
    if params.smoothing is not None and params.window > n_frames:
        raise ValueError(
            f"Filter parameter window={params.window} frames is longer than the data ({n_frames} frames); "
            f"use a window of at most {n_frames if n_frames % 2 else n_frames - 1} frames."
        )
    xy = pose[..., :2].copy()
    likelihood = pose[..., 2].copy()
    # A point is missing when either coordinate is.
    xy[np.isnan(xy).any(axis=-1)] = np.nan
    n_valid_in = int((~np.isnan(xy[..., 0])).sum())

    if params.confidence_threshold is not None:
        xy = filter_by_confidence(xy, likelihood, params.confidence_threshold)
    n_after_confidence = int((~np.isnan(xy[..., 0])).sum())
    if params.max_jump_px is not None:
        xy = reject_jumps(xy, params.max_jump_px)
    kept = ~np.isnan(xy[..., 0])  # (F, K): measured points that survived
    n_kept = int(kept.sum())
    likelihood = np.where(kept, likelihood, np.nan)

    if params.max_gap != 0:
        xy = interpolate_over_time(xy, params.interpolation, params.max_gap)
        likelihood = interpolate_over_time(likelihood, "linear", params.max_gap)
    present = ~np.isnan(xy[..., 0])
    # the likelihood follows x, y exactly (same gaps), but keep the invariant explicit
    likelihood = np.where(present, likelihood, np.nan)

    if params.smoothing == "median":
        xy = rolling_filter(xy, params.window, "median", params.min_periods)
    elif params.smoothing == "savgol":
        xy = savgol_filter(xy, params.window, params.polyorder)
    xy[~present] = np.nan

    logger.info(
        "filter_pose: %d valid points in; %d removed by confidence, %d by jumps, %d filled by "
        "interpolation; %d valid out of %d.",
        n_valid_in, n_valid_in - n_after_confidence, n_after_confidence - n_kept,
        int(present.sum()) - n_kept, int(present.sum()), present.size,
    )
    out = np.empty_like(pose)
    out[..., :2] = xy
    out[..., 2] = likelihood
    return out
