"""Figures: structure and plotted data equal to the input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.figure import Figure

from element_pose.labeled_video import bodypart_colors
from element_pose.plotting import (
    plot_evaluation_errors,
    plot_labeled_frame,
    plot_learning_curve,
    plot_likelihood,
    plot_trajectory,
)

BODYPARTS = ["snout", "leftear", "tailbase"]


@pytest.fixture
def pose():
    rng = np.random.default_rng(1)
    n = 20
    pose = np.empty((n, 3, 3))
    pose[..., 0] = rng.uniform(0, 640, (n, 3))
    pose[..., 1] = rng.uniform(0, 480, (n, 3))
    pose[..., 2] = rng.uniform(0, 1, (n, 3))
    pose[5, 1, :2] = np.nan
    return pose


def _renders(fig: Figure) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trajectory(pose):
    t = np.arange(20) / 30.0
    fig = plot_trajectory(pose, BODYPARTS, timestamps=t)
    assert isinstance(fig, Figure)
    ax_x, ax_y, ax_path = fig.axes
    assert len(fig.axes) == 3
    for ax in fig.axes:
        assert len(ax.lines) == 3
    for k in range(3):
        np.testing.assert_array_equal(ax_x.lines[k].get_xdata(), t)
        np.testing.assert_array_equal(ax_x.lines[k].get_ydata(), pose[:, k, 0])
        np.testing.assert_array_equal(ax_y.lines[k].get_ydata(), pose[:, k, 1])
        np.testing.assert_array_equal(ax_path.lines[k].get_xdata(), pose[:, k, 0])
        np.testing.assert_array_equal(ax_path.lines[k].get_ydata(), pose[:, k, 1])
    assert ax_path.yaxis_inverted()
    assert not ax_y.yaxis_inverted()
    assert ax_y.get_xlabel() == "time (s)"
    assert [line.get_label() for line in ax_path.lines] == BODYPARTS
    expected_color = tuple(c / 255 for c in bodypart_colors(BODYPARTS)[0])
    np.testing.assert_allclose(ax_x.lines[0].get_color(), expected_color)
    _renders(fig)


def test_trajectory_pcutoff_hides_points(pose):
    fig = plot_trajectory(pose, BODYPARTS, pcutoff=0.5)
    ydata = fig.axes[0].lines[2].get_ydata()
    low = pose[:, 2, 2] < 0.5
    assert low.any()
    assert np.isnan(ydata[low]).all()
    np.testing.assert_array_equal(ydata[~low], pose[~low, 2, 0])
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_xdata(), np.arange(20))
    with pytest.raises(ValueError, match="timestamps has shape"):
        plot_trajectory(pose, BODYPARTS, timestamps=np.arange(3))
    with pytest.raises(ValueError, match="bodyparts names 2"):
        plot_trajectory(pose, BODYPARTS[:2])


def test_likelihood(pose):
    fig = plot_likelihood(pose, BODYPARTS, pcutoff=0.6)
    (ax,) = fig.axes
    assert len(ax.lines) == 4
    for k in range(3):
        np.testing.assert_array_equal(ax.lines[k].get_ydata(), pose[:, k, 2])
    np.testing.assert_array_equal(ax.lines[3].get_ydata(), [0.6, 0.6])
    assert len(plot_likelihood(pose, BODYPARTS).axes[0].lines) == 3
    _renders(fig)


def test_evaluation_errors_forms():
    single = plot_evaluation_errors({"snout": 2.5, "leftear": 3.0, "tailbase": 4.25})
    (ax,) = single.axes
    assert len(ax.containers) == 1
    np.testing.assert_array_equal([bar.get_height() for bar in ax.containers[0]], [2.5, 3.0, 4.25])
    assert [t.get_text() for t in ax.get_xticklabels()] == BODYPARTS

    grouped = plot_evaluation_errors(
        {"train": {"snout": 1.0, "leftear": 1.5}, "test": {"snout": 2.0, "leftear": 2.5, "tailbase": 5.0}},
        bodyparts=BODYPARTS,
    )
    ax = grouped.axes[0]
    assert len(ax.containers) == 2
    train = [bar.get_height() for bar in ax.containers[0]]
    np.testing.assert_array_equal(train, [1.0, 1.5, np.nan])
    np.testing.assert_array_equal([bar.get_height() for bar in ax.containers[1]], [2.0, 2.5, 5.0])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "test"]

    arrays = plot_evaluation_errors({"train": np.array([1.0, 2.0, 3.0]), "test": [4.0, 5.0, 6.0]},
                                    bodyparts=BODYPARTS)
    np.testing.assert_array_equal([b.get_height() for b in arrays.axes[0].containers[1]], [4, 5, 6])
    _renders(arrays)
    with pytest.raises(ValueError, match="pass bodyparts="):
        plot_evaluation_errors({"train": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"errors\['test'\] has shape \(2,\)"):
        plot_evaluation_errors({"train": [1.0, 2.0, 3.0], "test": [1.0, 2.0]}, bodyparts=BODYPARTS)


def test_learning_curve():
    curve = np.column_stack([np.arange(0, 1000, 100), np.linspace(1.0, 0.01, 10)])
    fig = plot_learning_curve(curve)
    (ax,) = fig.axes
    assert len(ax.lines) == 1
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), curve[:, 0])
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), curve[:, 1])
    assert ax.get_yscale() == "log"
    two = np.column_stack([curve, np.where(np.arange(10) % 2 == 0, curve[:, 1] * 2, np.nan)])
    fig2 = plot_learning_curve(two, labels=["train", "validation"])
    line = fig2.axes[0].lines[1]
    np.testing.assert_array_equal(line.get_xdata(), curve[::2, 0])
    np.testing.assert_array_equal(line.get_ydata(), curve[::2, 1] * 2)
    with pytest.raises(ValueError, match="curve must have shape"):
        plot_learning_curve(np.arange(5))
    _renders(fig2)
    # the validation error on a second axis, the kept (best) point marked
    val = np.array([[200.0, 30.0], [400.0, 12.5], [600.0, 14.0], [800.0, np.nan]])
    fig3 = plot_learning_curve(curve, validation=val)
    assert len(fig3.axes) == 2
    vline, best = fig3.axes[1].lines
    np.testing.assert_array_equal(vline.get_xdata(), [200.0, 400.0, 600.0])
    assert (best.get_xdata()[0], best.get_ydata()[0]) == (400.0, 12.5)
    assert "12.5 px at 400" in best.get_label()
    with pytest.raises(ValueError, match="validation must have shape"):
        plot_learning_curve(curve, validation=np.arange(3))
    _renders(fig3)


def test_labeled_frame():
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    pose_frame = np.array([[10.0, 12.0, 0.9], [np.nan, np.nan, 0.1], [30.0, 40.0, 0.2]])
    truth = np.array([[11.0, 13.0], [20.0, 20.0], [np.nan, np.nan]])
    fig = plot_labeled_frame(image, pose_frame, BODYPARTS, ground_truth=truth, pcutoff=0.5,
                             skeleton=[("snout", "tailbase")])
    (ax,) = fig.axes
    assert len(ax.images) == 1
    assert ax.images[0].get_array().shape == (48, 64, 3)
    assert len(ax.collections) == 4
    np.testing.assert_array_equal(ax.collections[0].get_offsets(), [[10.0, 12.0]])
    assert len(ax.collections[1].get_offsets()) == 0       # missing point
    np.testing.assert_array_equal(ax.collections[2].get_offsets(), [[30.0, 40.0]])
    assert len(ax.collections[2].get_facecolors()) == 0    # hollow: below the cut-off
    np.testing.assert_array_equal(ax.collections[3].get_offsets(), [[11.0, 13.0], [20.0, 20.0]])
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [10.0, 30.0])
    assert ax.yaxis_inverted()
    _renders(fig)
    with pytest.raises(ValueError, match="ground_truth must have shape"):
        plot_labeled_frame(image, pose_frame, BODYPARTS, ground_truth=truth[:2])
