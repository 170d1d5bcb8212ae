"""Pose filtering: known answers for each step and for the whole pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from element_pose.filtering import (
    FilterParams,
    filter_by_confidence,
    filter_pose,
    interpolate_over_time,
    reject_jumps,
    rolling_filter,
    savgol_filter,
)

NAN = np.nan


# ---------------------------------------------------------------- building blocks


def test_filter_by_confidence_broadcasts_over_coordinates():
    xy = np.arange(12, dtype=float).reshape(3, 2, 2)  # (F=3, K=2, 2)
    confidence = np.array([[0.9, 0.1], [0.6, 0.59], [np.nan, 1.0]])
    out = filter_by_confidence(xy, confidence, threshold=0.6)
    expected = xy.copy()
    expected[0, 1] = NAN
    expected[1, 1] = NAN
    expected[2, 0] = NAN  # NaN confidence is not >= threshold
    np.testing.assert_array_equal(out, expected)
    assert not np.isnan(xy).any()  # input untouched
    same_shape = filter_by_confidence(np.array([1.0, 2.0, 3.0]), np.array([0.2, 0.7, 0.9]), 0.5)
    np.testing.assert_array_equal(same_shape, [NAN, 2.0, 3.0])
    with pytest.raises(ValueError, match="confidence has shape"):
        filter_by_confidence(xy, np.ones((3, 3)))


def test_reject_jumps_removes_a_spike():
    x = np.array([0.0, 1.0, 2.0, 50.0, 4.0, 5.0])
    xy = np.stack([x, np.zeros_like(x)], axis=-1)[:, None, :]  # (6, 1, 2)
    out = reject_jumps(xy, max_jump_px=5)
    assert np.isnan(out[3]).all()
    np.testing.assert_array_equal(out[[0, 1, 2, 4, 5], 0, 0], [0, 1, 2, 4, 5])
    np.testing.assert_array_equal(out[:, 0, 1][~np.isnan(out[:, 0, 1])], 0.0)


def test_reject_jumps_limit_scales_with_gap_and_recovers():
    # the track relocates by 30 px and stays there: after 30/10 = 3 frames it is accepted again
    x = np.array([0.0, 30.0, 30.0, 30.0, 30.0, 31.0])
    xy = np.stack([x, np.zeros_like(x)], axis=-1)
    out = reject_jumps(xy, 10.0)
    np.testing.assert_array_equal(np.isnan(out[:, 0]), [False, True, True, False, False, False])
    # existing NaN frames count as elapsed time, and stay NaN
    x2 = np.array([0.0, NAN, 15.0, 16.0])
    out2 = reject_jumps(np.stack([x2, np.zeros(4)], axis=-1), 10.0)
    np.testing.assert_array_equal(out2[:, 0], [0.0, NAN, 15.0, 16.0])
    with pytest.raises(ValueError, match="max_jump_px"):
        reject_jumps(xy, 0)


def test_interpolate_fills_short_gaps_linearly_and_keeps_long_ones():
    series = np.array([NAN, 0.0, NAN, NAN, 3.0, NAN, NAN, NAN, NAN, 8.0, 9.0, NAN])
    out = interpolate_over_time(series, max_gap=3)
    expected = np.array([NAN, 0.0, 1.0, 2.0, 3.0, NAN, NAN, NAN, NAN, 8.0, 9.0, NAN])
    np.testing.assert_array_equal(out, expected)
    # no limit: every interior gap is filled, edges are not
    out_all = interpolate_over_time(series)
    np.testing.assert_allclose(out_all[1:11], np.arange(10.0))
    assert np.isnan(out_all[0]) and np.isnan(out_all[11])
    # per column along axis 0
    two = np.stack([series, series * 2], axis=1)
    np.testing.assert_array_equal(interpolate_over_time(two, max_gap=3)[:, 1], expected * 2)
    np.testing.assert_array_equal(interpolate_over_time(series, max_gap=0), series)
    nearest = interpolate_over_time(np.array([0.0, NAN, NAN, NAN, 4.0]), method="nearest")
    np.testing.assert_array_equal(nearest, [0.0, 0.0, 0.0, 4.0, 4.0])
    with pytest.raises(ValueError, match="max_gap=-1"):
        interpolate_over_time(series, max_gap=-1)
    with pytest.raises(ValueError, match="method='cubic'"):
        interpolate_over_time(series, method="cubic")


def test_rolling_median_on_known_signal():
    signal = np.array([1.0, 1.0, 9.0, 1.0, 1.0, 2.0, 2.0])
    out = rolling_filter(signal, window=3, statistic="median", min_periods=1)
    np.testing.assert_array_equal(out, [1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0])
    # movement semantics: min_periods defaults to the window, so truncated edges are NaN
    default = rolling_filter(signal, window=3)
    np.testing.assert_array_equal(default, [NAN, 1.0, 1.0, 1.0, 1.0, 2.0, NAN])
    mean = rolling_filter(np.array([0.0, 3.0, NAN, 9.0, 12.0]), 3, "mean", min_periods=2)
    np.testing.assert_array_equal(mean, [1.5, 1.5, 6.0, 10.5, 10.5])
    maximum = rolling_filter(np.arange(5.0)[:, None], 3, "max", min_periods=1)
    np.testing.assert_array_equal(maximum[:, 0], [1, 2, 3, 4, 4])
    with pytest.raises(ValueError, match="window=4"):
        rolling_filter(signal, 4)
    with pytest.raises(ValueError, match="statistic='mode'"):
        rolling_filter(signal, 3, "mode")


def test_savgol_reproduces_polynomials_and_matches_scipy():
    t = np.arange(20.0)
    quadratic = 0.5 * t**2 - 3 * t + 2
    np.testing.assert_allclose(savgol_filter(quadratic, 7, polyorder=2), quadratic, atol=1e-9)
    rng = np.random.default_rng(0)
    noisy = np.sin(t / 3) + rng.normal(0, 0.1, t.size)
    np.testing.assert_allclose(savgol_filter(noisy, 5, 2),
                               scipy.signal.savgol_filter(noisy, 5, 2, mode="interp"))
    # NaN does not spread: runs are filtered separately, a quadratic stays exact in each run
    with_gap = quadratic.copy()
    with_gap[9:11] = NAN
    out = savgol_filter(with_gap, 7, 2)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(with_gap))
    np.testing.assert_allclose(out[~np.isnan(out)], quadratic[~np.isnan(with_gap)], atol=1e-9)
    with pytest.raises(ValueError, match="polyorder=5 must be smaller than window=5"):
        savgol_filter(quadratic, 5, 5)
    with pytest.raises(ValueError, match=r"longer than the data \(20 frames\)"):
        savgol_filter(quadratic, 21, 2)


# ---------------------------------------------------------------- parameters


def test_params_defaults_json_and_hash():
    params = FilterParams.from_dict({"window": 7, "smoothing": "savgol", "polyorder": 3})
    assert params.window == 7 and params.smoothing == "savgol" and params.confidence_threshold == 0.6
    as_json = params.to_json()
    assert as_json.startswith('{"confidence_threshold":0.6,"interpolation":"linear"')
    assert FilterParams.from_dict(params.to_dict()) == params
    # key order and int-vs-float of a float field do not change the hash
    a = FilterParams.from_dict({"confidence_threshold": 1, "window": 3})
    b = FilterParams.from_dict({"window": 3, "confidence_threshold": 1.0})
    assert a.sha256() == b.sha256()
    assert len(a.sha256()) == 64
    assert a.sha256() != FilterParams.from_dict({"window": 5, "confidence_threshold": 1.0}).sha256()
    assert FilterParams.from_dict(None) == FilterParams()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"windw": 5}, "Unknown filter parameter"),
        ({"window": 4}, "window=4"),
        ({"window": 0}, "window=0"),
        ({"window": "5"}, "window='5'"),
        ({"window": 5.0}, "window=5.0"),
        ({"max_gap": -2}, "max_gap=-2"),
        ({"confidence_threshold": 1.5}, "confidence_threshold=1.5"),
        ({"confidence_threshold": -0.1}, "confidence_threshold=-0.1"),
        ({"confidence_threshold": True}, "confidence_threshold=True"),
        ({"smoothing": "savgol", "window": 5, "polyorder": 5}, "polyorder=5 must be smaller"),
        ({"smoothing": "gaussian"}, "smoothing='gaussian'"),
        ({"max_jump_px": 0}, "max_jump_px=0"),
        ({"min_periods": 9, "window": 5}, "min_periods=9"),
    ],
)
def test_params_rejected(params, message):
    with pytest.raises(ValueError, match=message):
        FilterParams.from_dict(params)


# ---------------------------------------------------------------- pipeline


def _pose(x, y, likelihood):
    return np.stack([np.asarray(x, float), np.asarray(y, float), np.asarray(likelihood, float)],
                    axis=-1)[:, None, :]  # (F, 1, 3)


def test_filter_pose_pipeline_known_answer():
    n = 12
    x = np.arange(n, dtype=float)
    y = 2.0 * x
    likelihood = np.full(n, 0.9)
    likelihood[3] = 0.2           # low confidence -> removed, then interpolated
    x[6], y[6] = 100.0, 100.0     # a spike -> rejected, then interpolated
    x[8:12] = NAN                 # 4-frame gap at the end -> edge, stays NaN
    y[8:12] = NAN
    pose = _pose(x, y, likelihood)
    params = {"confidence_threshold": 0.5, "max_jump_px": 5, "max_gap": 2, "smoothing": None}
    out = filter_pose(pose, params)
    assert out.shape == pose.shape
    np.testing.assert_allclose(out[:8, 0, 0], np.arange(8.0))
    np.testing.assert_allclose(out[:8, 0, 1], 2 * np.arange(8.0))
    assert np.isnan(out[8:, 0, :]).all()
    # likelihood: kept where measured, interpolated where filled, NaN where missing
    np.testing.assert_allclose(out[[0, 1, 2, 4, 5, 7], 0, 2], 0.9)
    np.testing.assert_allclose(out[[3, 6], 0, 2], 0.9)
    # the input is not modified
    assert pose[6, 0, 0] == 100.0


def test_filter_pose_keeps_gaps_longer_than_max_gap_and_smooths():
    n = 15
    x = np.full(n, 10.0)
    x[4] = 13.0                    # small outlier, removed by the median
    x[8:12] = NAN                  # 4 frames > max_gap = 3: stays NaN even after smoothing
    pose = _pose(x, np.full(n, 5.0), np.ones(n))
    out = filter_pose(pose, {"max_gap": 3, "smoothing": "median", "window": 3})
    expected_x = np.full(n, 10.0)
    expected_x[8:12] = NAN
    np.testing.assert_array_equal(out[:, 0, 0], expected_x)
    np.testing.assert_array_equal(np.isnan(out[:, 0, 2]), np.isnan(expected_x))


def test_filter_pose_savgol_on_a_parabola_with_a_filled_gap():
    t = np.arange(30.0)
    x = 0.1 * t**2
    y = 3.0 * t + 1
    x_in, y_in = x.copy(), y.copy()
    x_in[10] = y_in[10] = NAN
    pose = _pose(x_in, y_in, np.full(30, 0.95))
    out = filter_pose(pose, {"smoothing": "savgol", "window": 9, "polyorder": 2, "max_gap": 1})
    # the gap is filled linearly (error 0.1 on the parabola), then smoothed: close to truth
    assert abs(out[10, 0, 0] - x[10]) < 0.1
    np.testing.assert_allclose(out[10, 0, 1], y[10])
    np.testing.assert_allclose(out[:, 0, 1], y, atol=1e-9)
    np.testing.assert_allclose(out[20:, 0, 0], x[20:], atol=1e-9)


def test_filter_pose_errors():
    pose = _pose(np.arange(4.0), np.arange(4.0), np.ones(4))
    with pytest.raises(ValueError, match=r"window=5 frames is longer than the data \(4 frames\)"):
        filter_pose(pose, {"window": 5})
    with pytest.raises(ValueError, match="pose must have shape"):
        filter_pose(pose[..., :2], {})
    with pytest.raises(ValueError, match="Unknown filter parameter"):
        filter_pose(pose, {"cutoff": 0.5})
    # smoothing off: a window longer than the data is irrelevant
    out = filter_pose(pose, {"window": 5, "smoothing": None})
    np.testing.assert_array_equal(out, pose)


def test_filter_pose_multi_animal_matches_per_animal():
    rng = np.random.default_rng(3)
    pose = np.empty((40, 2, 3, 3))  # (F, individuals, K, 3)
    pose[..., :2] = np.cumsum(rng.normal(0, 1, (40, 2, 3, 2)), axis=0) + 100
    pose[..., 2] = rng.uniform(0.3, 1.0, (40, 2, 3))
    params = {"confidence_threshold": 0.5, "max_jump_px": 3.0, "max_gap": 3, "smoothing": "savgol",
              "window": 7, "polyorder": 2}
    both = filter_pose(pose, params)
    for i in range(2):
        np.testing.assert_array_equal(both[:, i], filter_pose(pose[:, i], params))
    assert np.isnan(both[..., 0]).any() and not np.isnan(both[..., 0]).all()
