"""Configuration from the data, sampling that sees every body part, and the checks that reject
settings which cannot work, before any training."""

from __future__ import annotations

import numpy as np
import pytest

from element_pose.engine.autoconfig import (
    FIXED_GEOMETRY,
    FREE_GEOMETRY,
    MAX_ITERATIONS,
    MIN_HEATMAP_CELLS,
    check_feasible,
    dataset_stats,
    resolve_config,
)
from element_pose.engine.config import ConfigError, EngineConfig
from element_pose.engine.data import TrainingSet, crop_coverage, part_target_probabilities
from element_pose.engine.train import prepare_config, validation_split


def _animal(n: int, rng: np.random.Generator, width: int, height: int, spread: float
            ) -> np.ndarray:
    """(n, 4, 2) keypoints of an animal of size ``spread`` somewhere in the frame."""
    centre = rng.uniform([spread, spread], [width - spread, height - spread], size=(n, 1, 2))
    offsets = np.array([[0, 0], [spread, 0], [0, spread / 2], [-spread / 2, -spread / 2]])
    return centre + offsets[None]


def test_dataset_stats_measure_frames_labels_and_visibility():
    rng = np.random.default_rng(0)
    kp = _animal(20, rng, 640, 480, 40.0)
    kp[:15, 3] = np.nan  # part 3 labeled in a quarter of the frames
    sizes = [(640, 480)] * 12 + [(832, 747)] * 8
    s = dataset_stats(sizes, kp)
    assert s.n_frames == 20 and s.frame_sizes == ((640, 480), (832, 747))
    assert s.max_frame_side == 832
    assert s.label_extent_px == pytest.approx(60.0)  # -20 .. +40 around the centre
    assert s.part_spacing_px == pytest.approx(20.0 * np.sqrt(2) * 0 + 20.0, rel=0.2)
    assert s.visibility == (1.0, 1.0, 1.0, 0.25)


def test_resolve_config_from_data_and_overrides_kept():
    rng = np.random.default_rng(1)
    # a small animal in big frames: the crop is much smaller than the frame
    small = dataset_stats([(1280, 1024)] * 100, _animal(100, rng, 1280, 1024, 60.0))
    cfg, report = resolve_config(EngineConfig(), small)
    assert cfg.auto_keys() == []
    assert 0.2 <= cfg.input_scale <= 1.0
    assert cfg.crop_size % 32 == 0
    # the crop holds every body part labeled together, with margin for zoom
    assert cfg.crop_size >= small.label_extent_px * cfg.input_scale * 1.3
    assert cfg.crop_size < 1280 * cfg.input_scale
    assert set(report["chosen"]) == {"input_scale", "output_stride", "crop_size", "iterations",
                                     "validation_every", "patience", "sigma",
                                     "augmentation.rotation", "augmentation.scale",
                                     "augmentation.translate"}
    assert cfg.patience > cfg.iterations // cfg.validation_every  # the whole schedule
    # crops that follow a freely moving animal get strong geometric changes
    assert (cfg.augmentation.rotation, cfg.augmentation.scale, cfg.augmentation.translate) == \
        (FREE_GEOMETRY["rotation"], FREE_GEOMETRY["scale"], FREE_GEOMETRY["translate"])
    assert cfg.sigma == max(4.0, 0.75 * cfg.output_stride)
    assert all(v["reason"] for v in report["chosen"].values())
    assert 1000 <= cfg.iterations <= 6000
    # labels spanning a small frame (a mirror view): the whole frame is the crop
    wide = dataset_stats([(396, 406)] * 50, _animal(50, rng, 396, 406, 130.0) * [1.0, 1.0])
    wide_kp = _animal(50, rng, 396, 406, 20.0)
    wide_kp[:, 1] = [380.0, 395.0]  # a body part at the frame border
    wide = dataset_stats([(396, 406)] * 50, wide_kp)
    cfg_wide, report_wide = resolve_config(EngineConfig(), wide)
    assert cfg_wide.crop_size >= 406 * cfg_wide.input_scale - 1
    assert "whole frame" in report_wide["chosen"]["crop_size"]["reason"]
    # ... seen through a fixed view: light geometric changes, and a heatmap of >= 32 cells
    # with cells up to 8 px (stride 8) where the parts are that far apart
    assert (cfg_wide.augmentation.rotation, cfg_wide.augmentation.scale,
            cfg_wide.augmentation.translate) == (FIXED_GEOMETRY["rotation"],
                                                 FIXED_GEOMETRY["scale"],
                                                 FIXED_GEOMETRY["translate"])
    spacing = wide.part_spacing_px * cfg_wide.input_scale
    expect = 8 if cfg_wide.crop_size / 8 >= MIN_HEATMAP_CELLS and spacing >= 8 else 4
    assert cfg_wide.output_stride == expect
    # every value set by the user is kept and not reported as chosen
    mine, report_mine = resolve_config(EngineConfig.from_dict(
        {"input_scale": 0.5, "crop_size": 224, "output_stride": 8, "iterations": 77,
         "validation_every": 7, "patience": 3, "sigma": 2.5,
         "augmentation": {"rotation": 5.0, "scale": [1.0, 1.2], "translate": 0.0}}), small)
    assert (mine.input_scale, mine.crop_size, mine.output_stride, mine.iterations,
            mine.sigma) == (0.5, 224, 8, 77, 2.5)
    assert (mine.augmentation.rotation, mine.augmentation.scale,
            mine.augmentation.translate) == (5.0, (1.0, 1.2), 0.0)
    assert report_mine["chosen"] == {}
    # the resolved config is an ordinary, hashable config: a param set of its own
    assert EngineConfig.from_dict(cfg.to_dict()).sha256() == cfg.sha256()


def test_initial_model_keeps_its_scale():
    rng = np.random.default_rng(2)
    stats = dataset_stats([(640, 480)] * 30, _animal(30, rng, 640, 480, 50.0))
    parent = EngineConfig(input_scale=0.37, output_stride=2)
    cfg, report = resolve_config(EngineConfig(), stats, reference=parent)
    assert cfg.input_scale == 0.37 and cfg.output_stride == 2
    assert "initial model" in report["chosen"]["input_scale"]["reason"]


def test_infeasible_settings_rejected_with_a_working_value():
    rng = np.random.default_rng(3)
    stats = dataset_stats([(640, 480)] * 12, _animal(12, rng, 640, 480, 40.0))
    ok, _ = resolve_config(EngineConfig(), stats)
    check_feasible(ok, stats, n_train=12)
    with pytest.raises(ConfigError, match=r"'batch_size' \(16\).*12 training frames.*<= 12"):
        check_feasible(ok.replace(batch_size=16), stats, n_train=12)
    with pytest.raises(ConfigError, match=r"'input_scale' \(0.05\).*heatmap cell.*"
                                          r"input_scale >= 0\.\d+"):
        check_feasible(ok.replace(input_scale=0.05), stats, n_train=12)
    with pytest.raises(ConfigError, match=r"'crop_size' \(640\).*GiB.*crop_size <= \d+"):
        check_feasible(ok.replace(crop_size=640, input_scale=1.0), stats, n_train=12,
                       memory_bytes=2 * 2**30)
    with pytest.raises(ConfigError, match="'iterations' is 0"):
        check_feasible(ok.replace(iterations=0), stats, n_train=12)


def test_prepare_config_holds_back_training_frames_only():
    rng = np.random.default_rng(4)
    kp = _animal(40, rng, 200, 160, 20.0)
    images = [np.zeros((160, 200, 3), np.uint8)] * 40
    cfg, report, val = prepare_config(images, kp, EngineConfig(validation_fraction=0.1))
    assert len(val) == 4 and report["validation_frames"] == val.tolist()
    assert np.array_equal(val, validation_split(40, 0.1, 0))
    assert len(validation_split(8, 0.1, 0)) == 0  # too few frames: no validation
    assert cfg.auto_keys() == []
    # iterations were "auto": the speed was measured on this device and the count fits it
    chosen = report["chosen"]["iterations"]
    assert chosen["seconds_per_iteration"] > 0 and "measured" in chosen["reason"]
    resumed, report2, _ = prepare_config(images, kp, EngineConfig(validation_fraction=0.1),
                                         resume_config={"iterations": 1234,
                                                        "validation_every": 77,
                                                        "patience": 17})
    assert (resumed.iterations, resumed.validation_every, resumed.patience) == (1234, 77, 17)
    # a stride the budget traded is kept on resume (else the checkpoint would not fit)
    traded, _, _ = prepare_config(images, kp, EngineConfig(validation_fraction=0.1),
                                  resume_config={**cfg.to_dict(), "output_stride": 2,
                                                 "iterations": 1234})
    assert traded.output_stride == 2 and traded.iterations == 1234
    assert "resumes" in report2["chosen"]["iterations"]["reason"]
    with pytest.raises(ConfigError, match="batch_size"):
        prepare_config(images[:9], kp[:9], EngineConfig(batch_size=10))


def test_sampling_sees_a_rare_border_part_as_often_as_the_others():
    """A part labeled in a quarter of the frames, at the frame border: with part-centred crops
    and balanced frames it is inside training crops about as often as the other parts, while
    animal-centred crops alone would rarely show it."""
    rng = np.random.default_rng(5)
    n, w, h = 40, 400, 300
    kp = np.empty((n, 4, 2))
    centre = rng.uniform([150, 100], [250, 200], size=(n, 2))
    kp[:, 0] = centre
    kp[:, 1] = centre + [20, 0]
    kp[:, 2] = centre + [0, 20]
    kp[:, 3] = [[395.0, rng.uniform(10, 290)] for _ in range(n)]  # at the right border
    kp[10:, 3] = np.nan  # ... and labeled in 10 of 40 frames
    images = [np.zeros((h, w, 3), np.uint8)] * n
    base = {"input_scale": 1.0, "crop_size": 96, "batch_size": 8, "iterations": 10,
            "augmentation": {"rotation": 0.0, "scale": [1.0, 1.0], "translate": 0.1}}

    def seen(aug: dict) -> np.ndarray:
        cfg = EngineConfig.from_dict({**base, "augmentation": {**base["augmentation"], **aug}})
        ds = TrainingSet(images, kp, ["a", "b", "c", "border"], cfg)
        counts = np.zeros(4)
        for i in range(100):
            _, crops_kp = ds.batch(i)
            counts += np.isfinite(crops_kp).all(axis=2).sum(axis=0)
        return counts / counts[:3].mean()

    balanced = seen({})
    assert balanced[3] >= 0.5, balanced
    plain = seen({"part_crop_fraction": 0.0})
    assert plain[3] < 0.05, plain
    coverage = crop_coverage(kp, 96, [(w, h)] * n)
    # in the 10 frames with the border part the animal box is wider than the crop
    assert coverage[:3] == pytest.approx([0.75] * 3) and coverage[3] == 0
    q = part_target_probabilities(coverage, np.ones(4, bool), 0.36)
    assert q == pytest.approx([0, 0, 0, 1])  # only the border part needs targeted crops
    # when every part is covered equally, targeted crops pick them uniformly
    assert part_target_probabilities(np.ones(3), np.ones(3, bool), 0.4) == \
        pytest.approx([1 / 3] * 3)


def test_iterations_stay_within_the_time_budget():
    """Costly iterations (big crops, a fine heatmap) get fewer of them; cheap ones keep
    ``PASSES_PER_FRAME`` passes over the frames."""
    from element_pose.engine.autoconfig import ITERATION_BUDGET, REFERENCE_CROP, STRIDE_COST

    rng = np.random.default_rng(3)
    stats = dataset_stats([(640, 480)] * 100, _animal(100, rng, 640, 480, 60.0))
    cheap, _ = resolve_config(EngineConfig.from_dict({"crop_size": 128, "output_stride": 4}), stats)
    assert cheap.iterations == 5000  # 50 x 100 frames: within budget
    costly, report = resolve_config(EngineConfig.from_dict({"crop_size": 192, "output_stride": 2}), stats)
    cost = (192 / REFERENCE_CROP) ** 2 * STRIDE_COST[2]
    assert costly.iterations == int(ITERATION_BUDGET / cost // 100 * 100) < 5000
    assert "stride-2 iteration" in report["chosen"]["iterations"]["reason"]
    mine, _ = resolve_config(EngineConfig.from_dict({"crop_size": 192, "output_stride": 2,
                                                     "iterations": 5000}), stats)
    assert mine.iterations == 5000  # a value the user set is kept


def test_iterations_fit_the_training_minutes_at_the_measured_speed():
    """With a measured speed the count fits the time budget (or ``max_seconds``); a fast
    device keeps the data's count."""
    import math

    from element_pose.engine.autoconfig import TRAINING_MINUTES, TRAINING_OVERHEAD

    rng = np.random.default_rng(3)
    stats = dataset_stats([(640, 480)] * 100, _animal(100, rng, 640, 480, 60.0))
    cfg = EngineConfig.from_dict({"crop_size": 128, "output_stride": 4})
    slow, report = resolve_config(cfg, stats, seconds_per_iteration=1.0)
    fit = TRAINING_MINUTES * 60 / TRAINING_OVERHEAD
    assert slow.iterations == int(fit // 100 * 100) < 5000  # rounded down: within budget
    assert report["chosen"]["iterations"]["seconds_per_iteration"] == 1.0
    fast, _ = resolve_config(cfg, stats, seconds_per_iteration=0.01)
    assert fast.iterations == 5000  # 50 passes over 100 frames: the budget does not bind
    # automatic patience never stops a run early: the count already fits the budget
    assert slow.patience > slow.iterations // slow.validation_every
    assert fast.patience > fast.iterations // fast.validation_every
    assert "whole schedule" in report["chosen"]["patience"]["reason"]
    capped, _ = resolve_config(cfg.replace(max_seconds=300.0), stats, seconds_per_iteration=1.0)
    assert capped.iterations == int(300 / TRAINING_OVERHEAD // 100 * 100)
    # a very slow device gets fewer than 1000 rather than blowing the budget
    crawl, _ = resolve_config(cfg, stats, seconds_per_iteration=8.0)
    assert crawl.iterations <= math.ceil(fit / 8.0 / 100) * 100 < 1000


def test_measuring_the_speed_leaves_the_random_state_alone():
    import torch

    from element_pose.engine.train import measure_iteration_seconds

    cfg = EngineConfig.from_dict({"crop_size": 64, "output_stride": 4, "batch_size": 2,
                                  "input_scale": 1.0, "iterations": 10, "sigma": 4.0})
    torch.manual_seed(5)
    before = torch.get_rng_state()
    seconds = measure_iteration_seconds(cfg, n_keypoints=3, repeats=1)
    assert 0 < seconds < 60
    assert torch.equal(torch.get_rng_state(), before)
    # the multi-animal networks are timed before training resolves their sigma
    assert 0 < measure_iteration_seconds(cfg.replace(sigma="auto"), 3, repeats=1) < 60


def test_whole_frames_of_a_fixed_view_keep_the_full_iteration_count():
    """Small frames: the crop is the whole frame, light geometry, and no cut for its size."""
    rng = np.random.default_rng(8)
    kp = _animal(100, rng, 400, 400, 150.0)
    stats = dataset_stats([(400, 400)] * 100, kp)
    cfg, report = resolve_config(EngineConfig.from_dict({"input_scale": 0.5}), stats)
    assert cfg.crop_size == 208 and cfg.augmentation.rotation == FIXED_GEOMETRY["rotation"]
    assert "whole frames of a fixed view" in report["chosen"]["iterations"]["reason"]
    # they aim at MAX_ITERATIONS, however few frames, within the time budget
    fast, _ = resolve_config(EngineConfig.from_dict({"input_scale": 0.5}), stats,
                             seconds_per_iteration=0.01)
    assert fast.iterations == MAX_ITERATIONS
    slow, report = resolve_config(EngineConfig.from_dict({"input_scale": 0.5}), stats,
                                  seconds_per_iteration=0.5)
    assert slow.iterations < MAX_ITERATIONS and report["chosen"]["iterations"]["time_limited"]
    assert cfg.output_stride == 8  # 26 cells still >= MIN_HEATMAP_CELLS


def test_too_few_iterations_in_the_budget_buy_cheaper_ones():
    """A slow device: stride 2 gives way to stride 4, then a smaller input for crops that
    follow the animal; whole frames, set values and an initial model's settings are kept."""
    from element_pose.engine.autoconfig import (
        MIN_ITERATIONS,
        STRIDE2_MIN_ITERATIONS,
        cheaper_for_budget,
    )

    rng = np.random.default_rng(9)
    kp = _animal(100, rng, 1280, 1024, 40.0)
    stats = dataset_stats([(1280, 1024)] * 100, kp)
    auto = EngineConfig()
    fine = resolve_config(auto, stats)[0].replace(output_stride=2,
                                                   iterations=STRIDE2_MIN_ITERATIONS - 100)
    trying, key, reason = cheaper_for_budget(auto, fine, stats)
    assert key == "output_stride" and trying.output_stride == 4 and "stride 2" in reason
    assert cheaper_for_budget(auto, fine.replace(iterations=STRIDE2_MIN_ITERATIONS), stats) \
        is None
    # a count the data chose (few frames), not the time budget: resolution is kept
    assert cheaper_for_budget(auto, fine, stats, time_limited=False) is None
    slow = resolve_config(trying, stats)[0].replace(iterations=MIN_ITERATIONS - 300)
    smaller, key, reason = cheaper_for_budget(trying, slow, stats)
    assert key == "input_scale" and smaller.input_scale < slow.input_scale
    assert resolve_config(smaller, stats)[0].crop_size <= slow.crop_size
    assert stats.part_spacing_px * smaller.input_scale >= 6.0
    # set by the user: nothing is traded
    mine = EngineConfig.from_dict({"input_scale": float(slow.input_scale), "output_stride": 4})
    assert cheaper_for_budget(mine, slow, stats) is None
    # whole frames keep their resolution (the fixed view's detail)
    small = dataset_stats([(400, 400)] * 100, _animal(100, rng, 400, 400, 150.0))
    whole = resolve_config(auto, small)[0].replace(iterations=MIN_ITERATIONS - 300)
    assert cheaper_for_budget(auto, whole, small) is None
