"""Matplotlib figures for pose estimates, evaluations and training (no database, no pyplot).

Every function builds a :class:`matplotlib.figure.Figure` directly (no ``pyplot`` state, no
``plt.show()``), so it works headless, in notebooks (the figure displays itself) and in
table ``make()`` methods (``fig.savefig(...)``). Body part colours come from
:func:`element_pose.labeled_video.bodypart_colors`, the same as in labeled videos.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from element_pose.labeled_video import bodypart_colors

logger = logging.getLogger(__name__)

__all__ = [
    "plot_evaluation_errors",
    "plot_labeled_frame",
    "plot_learning_curve",
    "plot_likelihood",
    "plot_reprojection",
    "plot_trajectory",
    "plot_trajectory_3d",
]


def _check_pose(pose: Any, bodyparts: Sequence[str]) -> np.ndarray:
    pose = np.asarray(pose, dtype=np.float64)
    if pose.ndim != 3 or pose.shape[2] != 3:
        raise ValueError(f"pose must have shape (frames, body parts, 3) = [x, y, likelihood], got {pose.shape}.")
    if pose.shape[1] != len(bodyparts):
        raise ValueError(f"pose has {pose.shape[1]} body parts but bodyparts names {len(bodyparts)}: {list(bodyparts)}.")
    return pose


def _time_axis(timestamps: Any, n_frames: int) -> tuple[np.ndarray, str]:
    if timestamps is None:
        return np.arange(n_frames, dtype=np.float64), "frame"
    timestamps = np.asarray(timestamps, dtype=np.float64)
    if timestamps.shape != (n_frames,):
        raise ValueError(f"timestamps has shape {timestamps.shape}; expected ({n_frames},), one per frame of pose.")
    return timestamps, "time (s)"


def _rgb01(colors: list[tuple[int, int, int]]) -> list[tuple[float, float, float]]:
    return [tuple(c / 255.0 for c in rgb) for rgb in colors]


def _masked_xy(pose: np.ndarray, pcutoff: float | None) -> np.ndarray:
    xy = pose[..., :2].copy()
    if pcutoff is not None:
        xy[pose[..., 2] < pcutoff] = np.nan
    return xy


def plot_trajectory(
    pose: np.ndarray,
    bodyparts: Sequence[str],
    timestamps: np.ndarray | None = None,
    pcutoff: float | None = None,
    colormap: str = "jet",
) -> Figure:
    """Plot x and y over time and the path in the image plane.

    Parameters
    ----------
    pose : np.ndarray
        (F, K, 3) ``[x, y, likelihood]``.
    bodyparts : sequence of str
        K names (legend).
    timestamps : np.ndarray, optional
        (F,) seconds; default frame index.
    pcutoff : float, optional
        Points with likelihood below it are not drawn (gaps in the lines).
    colormap : str, default "jet"

    Returns
    -------
    Figure
        Three axes: ``x`` vs time, ``y`` vs time, and ``y`` vs ``x`` with the y axis inverted
        (image coordinates, origin top-left, equal aspect). Each holds one line per body part,
        in body part order.
    """
    pose = _check_pose(pose, bodyparts)
    t, t_label = _time_axis(timestamps, pose.shape[0])
    xy = _masked_xy(pose, pcutoff)
    colors = _rgb01(bodypart_colors(list(bodyparts), colormap))
    fig = Figure(figsize=(12, 5), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=(3, 2))
    ax_x = fig.add_subplot(grid[0, 0])
    ax_y = fig.add_subplot(grid[1, 0], sharex=ax_x)
    ax_path = fig.add_subplot(grid[:, 1])
    for k, name in enumerate(bodyparts):
        ax_x.plot(t, xy[:, k, 0], color=colors[k], label=name, linewidth=1)
        ax_y.plot(t, xy[:, k, 1], color=colors[k], label=name, linewidth=1)
        ax_path.plot(xy[:, k, 0], xy[:, k, 1], color=colors[k], label=name, linewidth=1)
    ax_x.set_ylabel("x (px)")
    ax_y.set_ylabel("y (px)")
    ax_y.set_xlabel(t_label)
    ax_path.set_xlabel("x (px)")
    ax_path.set_ylabel("y (px)")
    ax_path.set_aspect("equal", adjustable="datalim")
    ax_path.invert_yaxis()
    ax_path.set_title("path (image coordinates)")
    ax_path.legend(loc="best", fontsize="small", frameon=False)
    if pcutoff is not None:
        ax_x.set_title(f"points with likelihood < {pcutoff:g} hidden", fontsize="small")
    return fig


def plot_likelihood(
    pose: np.ndarray,
    bodyparts: Sequence[str],
    timestamps: np.ndarray | None = None,
    pcutoff: float | None = None,
    colormap: str = "jet",
) -> Figure:
    """Plot each body part's likelihood over time.

    Returns
    -------
    Figure
        One axes with one line per body part (in order) and, when ``pcutoff`` is given, a
        dashed horizontal line at the cut-off (the last line).
    """
    pose = _check_pose(pose, bodyparts)
    t, t_label = _time_axis(timestamps, pose.shape[0])
    colors = _rgb01(bodypart_colors(list(bodyparts), colormap))
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax = fig.add_subplot()
    for k, name in enumerate(bodyparts):
        ax.plot(t, pose[:, k, 2], color=colors[k], label=name, linewidth=1)
    if pcutoff is not None:
        ax.axhline(pcutoff, color="black", linestyle="--", linewidth=1, label=f"p-cutoff {pcutoff:g}")
    ax.set_xlabel(t_label)
    ax.set_ylabel("likelihood")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower left", fontsize="small", ncols=min(4, len(bodyparts) + 1), frameon=False)
    return fig


def plot_evaluation_errors(
    errors: Mapping[str, float] | Mapping[str, Mapping[str, float]] | Mapping[str, Sequence[float]],
    bodyparts: Sequence[str] | None = None,
    ylabel: str = "mean error (px)",
    title: str | None = None,
) -> Figure:
    """Bar chart of per-body-part errors, optionally grouped by split (train/test).

    Parameters
    ----------
    errors : mapping
        One of

        * ``{body part: error}`` -- one bar per body part;
        * ``{split: {body part: error}}`` -- e.g. ``{"train": {...}, "test": {...}}``;
        * ``{split: array}`` with ``bodyparts`` giving the body part of each array entry.
    bodyparts : sequence of str, optional
        Body part order (required for the array form; otherwise the order of first appearance).
    ylabel, title : str

    Returns
    -------
    Figure
        One axes; one bar container per split (``ax.containers``), bars in body part order,
        heights = the errors (NaN for a body part missing from a split).
    """
    if not isinstance(errors, Mapping) or not errors:
        raise ValueError("errors must be a non-empty dict: {body part: error} or {split: {body part: error}}.")
    values = list(errors.values())
    if all(np.isscalar(v) or v is None for v in values):
        series = {"": {str(k): (np.nan if v is None else float(v)) for k, v in errors.items()}}
    elif all(isinstance(v, Mapping) for v in values):
        series = {str(split): {str(k): float(v) for k, v in d.items()} for split, d in errors.items()}
    else:
        if bodyparts is None:
            raise ValueError("errors holds arrays per split; pass bodyparts= naming each array entry.")
        series = {}
        for split, array in errors.items():
            array = np.asarray(array, dtype=np.float64)
            if array.shape != (len(bodyparts),):
                raise ValueError(
                    f"errors[{split!r}] has shape {array.shape}; expected ({len(bodyparts)},), one per body part."
                )
            series[str(split)] = dict(zip(bodyparts, array.tolist(), strict=True))
    if bodyparts is None:
        order: list[str] = []
        for d in series.values():
            order.extend(k for k in d if k not in order)
    else:
        order = list(bodyparts)
    n_series = len(series)
    width = 0.8 / n_series
    positions = np.arange(len(order), dtype=np.float64)
    fig = Figure(figsize=(max(5.0, 0.6 * len(order) * max(1, n_series) + 2), 4), layout="constrained")
    ax = fig.add_subplot()
    split_colors = {"train": "tab:blue", "test": "tab:orange"}
    for i, (split, d) in enumerate(series.items()):
        heights = [d.get(bp, np.nan) for bp in order]
        offset = (i - (n_series - 1) / 2) * width
        ax.bar(positions + offset, heights, width=width, label=split or None,
               color=split_colors.get(split, f"C{i}"))
    ax.set_xticks(positions, order, rotation=45 if len(order) > 6 else 0, ha="right" if len(order) > 6 else "center")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if n_series > 1 or next(iter(series)):
        ax.legend(frameon=False)
    return fig


def plot_learning_curve(
    curve: np.ndarray,
    labels: Sequence[str] | None = None,
    log_y: bool | None = None,
    validation: np.ndarray | None = None,
) -> Figure:
    """Plot loss against iteration, and the validation error beside it.

    Parameters
    ----------
    curve : np.ndarray
        (n, 2) ``[iteration, loss]`` or (n, 1 + m): ``[iteration, loss_1, ..., loss_m]``
        (e.g. train and validation loss; NaN where a loss was not computed).
    labels : sequence of str, optional
        m curve names; default ``["loss"]`` or ``["loss 1", ...]``.
    log_y : bool, optional
        Logarithmic loss axis; default when all finite losses are positive.
    validation : np.ndarray, optional
        (v, 2) ``[iteration, error px]`` on the held-back training frames
        (``ModelTraining.validation_curve``): drawn on a second y axis (px), its best point
        (the weights kept) marked.

    Returns
    -------
    Figure
        One axes with m lines (``get_xdata()`` = iterations, ``get_ydata()`` = losses); with
        ``validation``, a twin axes with the validation line and the best point.
    """
    curve = np.asarray(curve, dtype=np.float64)
    if curve.ndim != 2 or curve.shape[1] < 2:
        raise ValueError(f"curve must have shape (n, 2) = [iteration, loss] (or more loss columns), got {curve.shape}.")
    n_losses = curve.shape[1] - 1
    if labels is None:
        labels = ["loss"] if n_losses == 1 else [f"loss {i + 1}" for i in range(n_losses)]
    if len(labels) != n_losses:
        raise ValueError(f"labels has {len(labels)} names for {n_losses} loss columns.")
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    for i, label in enumerate(labels):
        losses = curve[:, i + 1]
        keep = ~np.isnan(losses)
        ax.plot(curve[keep, 0], losses[keep], label=label, marker="." if keep.sum() < 50 else None)
    finite = curve[:, 1:][np.isfinite(curve[:, 1:])]
    if log_y is None:
        log_y = finite.size > 0 and bool(np.all(finite > 0))
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    if n_losses > 1:
        ax.legend(frameon=False, loc="upper left")
    if validation is not None:
        val = np.asarray(validation, dtype=np.float64)
        if val.ndim != 2 or val.shape[1] != 2:
            raise ValueError(f"validation must have shape (v, 2) = [iteration, error px], got "
                             f"{val.shape}.")
        val = val[np.isfinite(val).all(axis=1)]
        vax = ax.twinx()
        vax.plot(val[:, 0], val[:, 1], color="tab:red", marker=".", label="validation error")
        if len(val):
            best = int(np.argmin(val[:, 1]))
            vax.plot(val[best, 0], val[best, 1], "o", color="tab:red", markerfacecolor="none",
                     markersize=10, label=f"kept: {val[best, 1]:.1f} px at {val[best, 0]:.0f}")
        vax.set_ylabel("validation error (px)", color="tab:red")
        vax.legend(frameon=False, loc="upper right")
    return fig


def plot_labeled_frame(
    image: np.ndarray,
    pose_frame: np.ndarray,
    bodyparts: Sequence[str],
    ground_truth: np.ndarray | None = None,
    pcutoff: float | None = None,
    skeleton: Sequence[tuple[str, str]] = (),
    colormap: str = "jet",
    marker_size: float = 40.0,
) -> Figure:
    """Show an image with predicted (dots) and, optionally, ground-truth (crosses) keypoints.

    Parameters
    ----------
    image : np.ndarray
        (H, W, 3) RGB or (H, W) grayscale.
    pose_frame : np.ndarray
        (K, 3) ``[x, y, likelihood]`` or (K, 2).
    bodyparts : sequence of str
    ground_truth : np.ndarray, optional
        (K, 2) labels; NaN = not labeled.
    pcutoff : float, optional
        Predictions below it are drawn as hollow circles.
    skeleton : sequence of (str, str)
        Edges drawn between predicted points.
    colormap : str, default "jet"

    Returns
    -------
    Figure
        One axes with the image (``ax.images[0]``), one scatter collection per body part for
        the predictions (in order, offsets = (x, y); an empty collection when missing), then,
        with ``ground_truth``, one collection of crosses for the labels.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"image must have shape (H, W, 3) or (H, W), got {image.shape}.")
    pose_frame = np.asarray(pose_frame, dtype=np.float64)
    if pose_frame.ndim != 2 or pose_frame.shape[1] not in (2, 3) or pose_frame.shape[0] != len(bodyparts):
        raise ValueError(
            f"pose_frame must have shape ({len(bodyparts)}, 3) [x, y, likelihood] or ({len(bodyparts)}, 2), "
            f"got {pose_frame.shape}."
        )
    colors = _rgb01(bodypart_colors(list(bodyparts), colormap))
    height, width = image.shape[:2]
    fig = Figure(figsize=(6, 6 * height / max(width, 1)), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
    index = {name: i for i, name in enumerate(bodyparts)}
    for a, b in skeleton:
        if a not in index or b not in index:
            raise ValueError(f"skeleton edge ({a!r}, {b!r}) names a body part not in {list(bodyparts)}.")
        pa, pb = pose_frame[index[a], :2], pose_frame[index[b], :2]
        ax.plot([pa[0], pb[0]], [pa[1], pb[1]], color="white", linewidth=1, alpha=0.8)
    for k, name in enumerate(bodyparts):
        x, y = pose_frame[k, :2]
        shown = not (np.isnan(x) or np.isnan(y))
        low = pose_frame.shape[1] == 3 and pcutoff is not None and pose_frame[k, 2] < pcutoff
        ax.scatter([x] if shown else [], [y] if shown else [], s=marker_size, label=name,
                   facecolors="none" if low else [colors[k]], edgecolors=[colors[k]], linewidths=1.5)
    if ground_truth is not None:
        ground_truth = np.asarray(ground_truth, dtype=np.float64)
        if ground_truth.shape != (len(bodyparts), 2):
            raise ValueError(f"ground_truth must have shape ({len(bodyparts)}, 2), got {ground_truth.shape}.")
        labeled = ~np.isnan(ground_truth).any(axis=1)
        ax.scatter(ground_truth[labeled, 0], ground_truth[labeled, 1], s=marker_size, marker="+",
                   c=[colors[k] for k in np.flatnonzero(labeled)], linewidths=1.5, label="ground truth")
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_axis_off()
    ax.legend(loc="upper right", fontsize="x-small", frameon=True, framealpha=0.6)
    return fig


def plot_trajectory_3d(points: Any, bodyparts: Sequence[str], unit: str = "mm",
                       title: str | None = None) -> Figure:
    """3D paths of the body parts (frames, parts, 3), one colour per part (as in labeled
    videos); NaN points leave gaps."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 3 or points.shape[2] != 3 or points.shape[1] != len(bodyparts):
        raise ValueError(f"points must have shape (frames, {len(bodyparts)}, 3), got {points.shape}.")
    figure = Figure(figsize=(6, 5), layout="constrained")
    axes = figure.add_subplot(projection="3d")
    colors = _rgb01(bodypart_colors(len(bodyparts)))
    for k, part in enumerate(bodyparts):
        axes.plot(points[:, k, 0], points[:, k, 1], points[:, k, 2], color=colors[k], lw=1, label=part)
    axes.set_xlabel(f"x ({unit})")
    axes.set_ylabel(f"y ({unit})")
    axes.set_zlabel(f"z ({unit})")
    if len(bodyparts) <= 20:
        axes.legend(loc="upper left", fontsize="small")
    if title:
        axes.set_title(title)
    return figure


def plot_reprojection(images: Sequence[np.ndarray], detections: Any, reprojected: Any,
                      camera_names: Sequence[str], bodyparts: Sequence[str],
                      title: str | None = None) -> Figure:
    """One panel per camera: its frame, the 2D detections (dots) and the triangulated points
    drawn back into it (crosses), joined by a line, so a camera that disagrees stands out.

    ``detections`` and ``reprojected``: (cameras, parts, 2) pixels, NaN where absent.
    """
    detections = np.asarray(detections, np.float64)
    reprojected = np.asarray(reprojected, np.float64)
    n = len(camera_names)
    if len(images) != n or detections.shape != (n, len(bodyparts), 2) or reprojected.shape != detections.shape:
        raise ValueError(f"Give one image, and (parts, 2) detections and reprojections, per camera "
                         f"({n} cameras, {len(bodyparts)} parts).")
    figure = Figure(figsize=(4 * n, 3.4), layout="constrained")
    colors = _rgb01(bodypart_colors(len(bodyparts)))
    for c, name in enumerate(camera_names):
        axes = figure.add_subplot(1, n, c + 1)
        axes.imshow(images[c], cmap="gray" if np.ndim(images[c]) == 2 else None)
        for k in range(len(bodyparts)):
            d, r = detections[c, k], reprojected[c, k]
            axes.plot(*d, "o", ms=4, mfc="none", color=colors[k])
            axes.plot(*r, "x", ms=5, color=colors[k])
            if np.isfinite(d).all() and np.isfinite(r).all():
                axes.plot([d[0], r[0]], [d[1], r[1]], "-", lw=0.8, color=colors[k])
        error = np.nanmean(np.linalg.norm(detections[c] - reprojected[c], axis=-1)) \
            if np.isfinite(detections[c]).any() and np.isfinite(reprojected[c]).any() else float("nan")
        axes.set_title(f"{name}: {error:.1f} px", fontsize="small")
        axes.set_axis_off()
    if title:
        figure.suptitle(title)
    return figure
