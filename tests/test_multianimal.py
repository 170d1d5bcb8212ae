"""Several animals per frame: the engine's pieces (peaks, tracker, identity, metrics), a
trained two-animal model on generated data, and the tables end to end."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from element_pose.engine.augment import affine_matrix, apply_affine
from element_pose.engine.config import ConfigError, EngineConfig
from element_pose.engine.metrics import (
    average_precision,
    evaluate_multianimal,
    identity_switches,
    oks,
)
from element_pose.engine.multianimal import (
    MultiAnimalConfig,
    _found_centre,
    animal_cutout,
    axis_angles,
    choose_axis,
    crowded_crops,
    instance_boxes,
    load_any_model,
    load_multianimal_model,
    match_axis_angles,
    paste_beside,
    plan,
    rotated_crops,
    second_look_centres,
    train_multianimal,
)
from element_pose.engine.targets import find_peaks, make_targets, merge_instances
from element_pose.engine.tracking import (
    TrackerSettings,
    assign_identities,
    by_identity,
    by_track,
    track,
)
from element_pose.engine.video import iter_frames
from element_pose.io.dlc import DLCFormatError, read_dlc_project
from element_pose.sample import BODYPARTS, make_pair_sample

SMALL = {"backbone_stride": 8, "head_channels": 64, "batch_size": 8, "device": "cpu",
         "schedule": {"warmup_iterations": 30}, "optimizer": {"lr": 0.003}}


# --- engine pieces ---------------------------------------------------------------------------


def test_merged_targets_give_one_peak_per_animal():
    kp = torch.tensor([[[20.3, 30.7], [70.6, 41.2]]])  # one channel, two instances
    t = make_targets(kp, (24, 32), stride=4, sigma=3.0, locref_radius=6.0)
    merged = merge_instances(t, instances=2)
    assert merged["heatmaps"].shape == (1, 1, 24, 32)
    # perfect logits and offsets decode back to both instances, strongest first
    heat = torch.logit(merged["heatmaps"].clamp(1e-4, 1 - 1e-4))
    peaks = find_peaks(heat, merged["offsets"], 4, max_peaks=3, threshold=0.5)
    assert peaks.shape == (1, 1, 3, 3)
    found = peaks[0, 0, :2, :2].numpy()
    found = found[np.argsort(found[:, 0])]
    np.testing.assert_allclose(found, kp[0].numpy(), atol=0.05)
    assert torch.isnan(peaks[0, 0, 2]).all()  # no third animal


def _walk(n: int, start, step) -> np.ndarray:
    """(n, K, 3) a rigid 4-part animal moving in a straight line."""
    offsets = np.array([[10.0, 0], [0, 4], [0, -4], [-10, 0]])
    centre = np.asarray(start, float) + np.arange(n)[:, None] * np.asarray(step, float)
    pose = np.ones((n, 4, 3))
    pose[..., :2] = centre[:, None] + offsets
    return pose


def test_tracker_follows_crossing_animals_through_a_gap():
    n = 60
    a, b = _walk(n, (10, 50), (3, 0)), _walk(n, (190, 56), (-3, 0))  # they cross at frame 30
    poses = np.stack([a, b], axis=1)
    poses[40:46, 0] = np.nan  # animal a lost for 6 frames
    swapped = np.arange(n) % 3 == 0
    poses[swapped] = poses[swapped][:, ::-1]  # detection order means nothing
    truth = np.stack([a, b], axis=1)[..., :2]
    ids = track(poses, TrackerSettings(max_gap=10))
    assert set(np.unique(ids)) == {-1, 0, 1}  # two tracks only: the lost animal came back
    ev = evaluate_multianimal(poses, np.ones((n, 2)), truth)
    assert identity_switches(ids, ev["matches"]) == 0
    per_track = by_track(poses, ids)
    assert per_track.shape == (n, 2, 4, 3)
    # a short gap beyond max_gap starts a new track instead
    ids_short = track(poses, TrackerSettings(max_gap=2))
    assert ids_short.max() == 2


def test_identity_pooled_over_a_track_outvotes_an_ambiguous_frame():
    n = 30
    identity = np.zeros((n, 2, 2))
    identity[:, 0] = [0.8, 0.2]  # slot 0 is individual 0 ...
    identity[:, 1] = [0.3, 0.7]
    identity[12] = [[0.1, 0.9], [0.95, 0.05]]  # ... except one confusing frame
    per_frame = assign_identities(identity)
    assert per_frame[12].tolist() == [1, 0]
    ids = np.tile([0, 1], (n, 1))
    pooled = assign_identities(identity, ids, window=5)
    assert (pooled == [0, 1]).all()
    named = by_identity(np.arange(n * 2 * 4 * 3, dtype=float).reshape(n, 2, 4, 3), pooled, 2)
    assert named[0, 1, 0, 0] == (np.arange(n * 2 * 4 * 3).reshape(n, 2, 4, 3))[0, 1, 0, 0]


def test_multianimal_metrics_count_missed_and_spurious():
    n = 10
    truth = np.stack([_walk(n, (20, 20), (1, 0)), _walk(n, (120, 80), (0, 1))], axis=1)[..., :2]
    pred = np.full((n, 3, 4, 3), np.nan)
    pred[:, 0, :, :2] = truth[:, 1] + 1.0  # order swapped, 1 px off in x
    pred[:, 1, :, :2] = truth[:, 0]
    pred[..., 2] = 0.9
    pred[3, 2, :, :2] = [[300, 300], [301, 300], [302, 300], [303, 300]]  # spurious animal
    pred[3, 2, :, 2] = 0.5
    pred[7, 1] = np.nan  # animal 0 missed in frame 7
    scores = np.where(np.isfinite(pred[..., 0, 0]), 0.9, np.nan)
    ev = evaluate_multianimal(pred, scores, truth, pcutoff=0.6)
    assert (ev["missed"], ev["spurious"], ev["labeled_animals"]) == (1, 1, 20)
    assert ev["frames_with_missed_or_spurious"] == pytest.approx(0.2)
    assert ev["matches"][0].tolist() == [1, 0]
    assert ev["mean_error_px"] == pytest.approx(0.5 * 9 / 19 + 0.5 * 10 / 19 * 2 * 0 + 0.5,
                                                abs=0.3)
    assert oks(truth[0, 0], truth[0, 0]) == pytest.approx(1.0)
    assert oks(truth[0, 0] + 100, truth[0, 0]) < 1e-6
    assert average_precision(np.concatenate([truth, np.ones((n, 2, 4, 1))], -1),
                             np.ones((n, 2)), truth) == \
        pytest.approx(1.0)
    assert 0.0 < ev["map_oks"] < 1.0


def test_multianimal_config_is_validated():
    with pytest.raises(ConfigError, match="multianimal.max_animals"):
        MultiAnimalConfig.from_dict({"max_animals": 0})
    with pytest.raises(ConfigError, match="multianimal.detection_threshold"):
        MultiAnimalConfig.from_dict({"detection_threshold": 1.5})
    with pytest.raises(ConfigError, match="multianimal"):
        MultiAnimalConfig.from_dict({"identity": "yes"})
    assert MultiAnimalConfig.from_dict({"identity": True}).identity is True


def test_egocentric_settings_are_validated_and_chosen_from_the_labels():
    with pytest.raises(ConfigError, match="align_parts"):
        MultiAnimalConfig.from_dict({"align": True, "align_parts": ["head"]})
    with pytest.raises(ConfigError, match="align_parts"):
        MultiAnimalConfig.from_dict({"align": True, "align_parts": ["head", "head"]})
    rng = np.random.default_rng(1)
    n = 40
    centre = rng.uniform(100, 400, size=(n, 2, 2))
    heading = rng.uniform(-np.pi, np.pi, size=(n, 2))
    unit = np.stack([np.cos(heading), np.sin(heading)], axis=-1)
    kp = np.stack([centre + 30 * unit + rng.normal(0, 0.5, (n, 2, 2)),  # nose: rigid, far
                   centre,                                                # body centre
                   centre + rng.normal(0, 8, size=(n, 2, 2)),             # a limb: anywhere
                   centre - 8 * unit + rng.normal(0, 3, (n, 2, 2))],      # tail base: close
                  axis=2)
    names = ["nose", "body", "limb", "tailbase"]
    assert choose_axis(kp, names, 80.0)[0] == ("nose", "body")
    chosen = plan([(500, 500)] * n, kp, EngineConfig(), MultiAnimalConfig(align=True),
                  bodyparts=names)
    assert chosen.multianimal.align_parts == ("nose", "body")
    assert chosen.instance.augmentation.rotation == 15.0
    with pytest.raises(ConfigError, match="does not label"):
        plan([(500, 500)] * n, kp, EngineConfig(),
             MultiAnimalConfig(align=True, align_parts=("snout", "body")), bodyparts=names)
    auto = plan([(500, 500)] * n, kp, EngineConfig(), MultiAnimalConfig(align="auto"),
                bodyparts=names)
    assert auto.multianimal.align is True and auto.report["chosen"]["align"]["value"] is True
    kp[:, :, 0] = np.nan  # no rigid pair left that is long enough
    with pytest.raises(ConfigError, match="align_parts"):
        choose_axis(kp, names, 80.0)
    kp[::2, :, 2:] = np.nan  # limb and tail base on half the animals: no axis at all
    with pytest.raises(ConfigError, match="align_parts"):
        plan([(500, 500)] * n, kp, EngineConfig(), MultiAnimalConfig(align=True),
             bodyparts=names)
    auto = plan([(500, 500)] * n, kp, EngineConfig(), MultiAnimalConfig(align="auto"),
                bodyparts=names)
    assert auto.multianimal.align is False and auto.instance.augmentation.rotation == 180.0


def test_instance_network_learns_mirror_images_when_the_sides_are_named():
    rng = np.random.default_rng(3)
    kp = rng.uniform(100, 300, size=(20, 2, 5, 2))
    fly = ["head", "thorax", "wingL", "wingR", "abdomen"]
    chosen = plan([(400, 400)] * 20, kp, EngineConfig(), MultiAnimalConfig(), bodyparts=fly)
    assert chosen.instance.flip_pairs == (("wingL", "wingR"),)
    assert chosen.instance.augmentation.flip == 0.5
    assert chosen.multianimal.flip is True and "mirror" in chosen.report["chosen"]["flip"]["reason"]
    assert chosen.centroid.flip_pairs == () and chosen.centroid.augmentation.flip == 0.0
    off = plan([(400, 400)] * 20, kp, EngineConfig(), MultiAnimalConfig(flip=False), bodyparts=fly)
    assert off.instance.flip_pairs == () and off.instance.augmentation.flip == 0.0
    assert off.multianimal.flip is False
    own = EngineConfig.from_dict({"flip_pairs": [["wingL", "wingR"]],
                                  "augmentation": {"flip": 0.2}})
    kept = plan([(400, 400)] * 20, kp, own, MultiAnimalConfig(), bodyparts=fly)
    assert kept.instance.augmentation.flip == 0.2 and kept.multianimal.flip is True
    odd = ["head", "thorax", "wingL", "wing_right", "abdomen"]  # a side without its twin
    none = plan([(400, 400)] * 20, kp, EngineConfig(), MultiAnimalConfig(), bodyparts=odd)
    assert none.instance.augmentation.flip == 0.0 and none.multianimal.flip is False
    assert "wingL" in none.report["chosen"]["flip"]["reason"]
    with pytest.raises(ConfigError, match="wingL"):
        plan([(400, 400)] * 20, kp, EngineConfig(), MultiAnimalConfig(flip=True), bodyparts=odd)
    # an identity output is not trained on mirror images unless asked for
    named = plan([(400, 400)] * 20, kp, EngineConfig(), MultiAnimalConfig(identity=True),
                 bodyparts=fly)
    assert named.instance.augmentation.flip == 0.0 and named.multianimal.flip is False
    assert "identity" in named.report["chosen"]["flip"]["reason"]
    asked = plan([(400, 400)] * 20, kp, EngineConfig(),
                 MultiAnimalConfig(identity=True, flip=True), bodyparts=fly)
    assert asked.instance.augmentation.flip == 0.5


def test_egocentric_crops_turn_the_axis_up_and_match_the_training_crops():
    """The inference crop (roi_align + grid_sample) holds the pixels of the training crop
    (cv2.warpAffine with affine_matrix), and both turn the back -> front axis upwards."""
    rng = np.random.default_rng(2)
    image = cv2.GaussianBlur(rng.integers(0, 255, (240, 260, 3), dtype=np.uint8), (3, 3), 0.8)
    centre, crop = np.array([131.3, 117.8]), 64
    front = centre + 25 * np.array([np.cos(0.7), np.sin(0.7)])
    kp = np.stack([front, centre])
    angle = float(axis_angles(kp, 0, 1))
    matrix = affine_matrix(tuple(centre), crop, angle_deg=angle)
    up = apply_affine(kp, matrix)
    assert up[0, 1] < up[1, 1] - 24 and abs(up[0, 0] - up[1, 0]) < 1e-6
    train_crop = cv2.warpAffine(image, matrix, (crop, crop), flags=cv2.INTER_LINEAR)
    src = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    ours = rotated_crops(src, torch.zeros(1, dtype=torch.long), torch.tensor([centre[0]]),
                         torch.tensor([centre[1]]), torch.tensor([angle]), crop)
    ours = ours[0].permute(1, 2, 0).numpy()
    # one interpolation, as in training (a second would blur: several grey levels off)
    inner = np.abs(ours - train_crop)[2:-2, 2:-2]
    assert inner.mean() < 0.5 and inner.max() < 3.0
    assert np.abs(ours - np.rot90(train_crop)).mean() > 5.0  # the check can tell a turn


def test_egocentric_centre_is_the_box_centre_of_the_turned_animal():
    from element_pose.engine.multianimal import egocentric_centres

    kp = np.array([[[[10.0, 0.0], [0.0, 0.0], [0.0, 40.0]]]])  # an L-shaped animal
    for angle in (0.0, 30.0, -100.0):
        centre = egocentric_centres(kp, np.array([[angle]]))[0, 0]
        matrix = affine_matrix(tuple(centre), 101, angle_deg=angle)
        turned = apply_affine(kp[0, 0], matrix)
        np.testing.assert_allclose((turned.min(axis=0) + turned.max(axis=0)) / 2, [50, 50],
                                   atol=1e-9)
    assert not np.allclose(egocentric_centres(kp, np.array([[30.0]]))[0, 0], [5.0, 20.0])


def test_axis_ends_of_touching_animals_are_not_shared():
    """Two animals side by side: the front end at (116, 85) is the nearest to both, but the
    optimal assignment gives each animal its own."""
    found = np.array([[[[100, 100, 0.9], [130, 100, 0.9]],   # centres
                       [[116, 85, 0.9], [100, 130, 0.8]],    # front ends
                       [[144, 115, 0.7], [100, 80, 0.7]]]])  # back ends
    angles = match_axis_angles(found)
    # animal 0 faces down ((100, 80) -> (100, 130)), animal 1 up-left ((144, 115) -> (116, 85))
    expected = [np.degrees(np.arctan2(50, 0)) + 90, np.degrees(np.arctan2(-30, -28)) + 90]
    np.testing.assert_allclose(angles[0], expected)
    # an end further away than the limit is another animal's: the centre stands in
    np.testing.assert_allclose(match_axis_angles(found, max_distance=25.0)[0], expected)
    far = match_axis_angles(found, max_distance=22.0)[0]  # animal 0's front is 30 px away
    np.testing.assert_allclose(far, [np.degrees(np.arctan2(20, 0)) + 90, expected[1]])
    one_end = found.copy()
    one_end[0, 1, 1] = np.nan  # fewer front ends than animals: one keeps its centre
    assert np.isfinite(match_axis_angles(one_end)).all()
    found[0, 2] = np.nan  # no back end found: the centre stands in
    np.testing.assert_allclose(match_axis_angles(found)[0],
                               [np.degrees(np.arctan2(30, 0)) + 90,
                                np.degrees(np.arctan2(-15, -14)) + 90])


def test_multianimal_iterations_fit_the_time_budget_at_the_measured_speed():
    """Both networks' automatic counts follow the measured speed: a fast device trains 30
    passes over the animals, a slow one what fits its share of the budget."""
    from element_pose.engine.autoconfig import TRAINING_MINUTES, TRAINING_OVERHEAD

    rng = np.random.default_rng(0)
    centres = rng.uniform(100, 900, size=(50, 2, 1, 2))
    kp = centres + rng.uniform(-40, 40, size=(50, 2, 5, 2))  # 50 frames, 2 animals, 5 parts
    sizes, ma = [(1024, 1024)] * 50, MultiAnimalConfig()
    fast = plan(sizes, kp, EngineConfig(), ma, {"centroid": 1e-3, "instance": 1e-3})
    assert fast.multianimal.instance_iterations == 30 * 100  # 100 labeled animals
    assert fast.multianimal.centroid_iterations == 30 * 50
    slow = plan(sizes, kp, EngineConfig(), ma, {"centroid": 0.5, "instance": 0.25})
    budget = TRAINING_MINUTES * 60 / TRAINING_OVERHEAD
    assert slow.multianimal.instance_iterations == int(0.6 * budget / 0.25 // 100 * 100) < 3000
    assert slow.multianimal.centroid_iterations == int(0.4 * budget / 0.5 // 100 * 100) < 1500
    assert "measured 0.250 s" in slow.report["chosen"]["instance_iterations"]["reason"]
    short = plan(sizes, kp, EngineConfig(max_seconds=600.0), ma,
                 {"centroid": 0.5, "instance": 0.25})
    assert short.multianimal.instance_iterations == \
        int(0.6 * 600 / TRAINING_OVERHEAD / 0.25 // 100 * 100)
    # counts the user set are kept
    mine = plan(sizes, kp, EngineConfig(), MultiAnimalConfig.from_dict(
        {"instance_iterations": 123, "centroid_iterations": 45}), {"centroid": 2.0, "instance": 1.0})
    assert (mine.multianimal.instance_iterations, mine.multianimal.centroid_iterations) == (123, 45)


def test_instance_backbone_can_be_cut_shorter_than_the_centroid_networks():
    rng = np.random.default_rng(1)
    kp = rng.uniform(100, 900, size=(20, 2, 1, 2)) + rng.uniform(-40, 40, size=(20, 2, 5, 2))
    sizes = [(1024, 1024)] * 20
    default = plan(sizes, kp, EngineConfig(), MultiAnimalConfig())
    assert default.instance.backbone_stride == default.centroid.backbone_stride == 16
    assert default.multianimal.instance_backbone_stride == 16  # resolved, so reproducible
    short = plan(sizes, kp, EngineConfig(), MultiAnimalConfig.from_dict(
        {"instance_backbone_stride": 8}))
    assert (short.instance.backbone_stride, short.centroid.backbone_stride) == (8, 16)
    with pytest.raises(ConfigError, match="instance_backbone_stride.*8, 16, 32"):
        MultiAnimalConfig.from_dict({"instance_backbone_stride": 4})
    with pytest.raises(ConfigError, match=r"output stride \(16\); use 16"):
        plan(sizes, kp, EngineConfig(output_stride=16),
             MultiAnimalConfig.from_dict({"instance_backbone_stride": 8}))


def test_instance_crops_are_shifted_off_centre_as_far_as_a_quarter_of_the_animal():
    rng = np.random.default_rng(2)
    kp = rng.uniform(200, 800, size=(20, 2, 1, 2)) + rng.uniform(-50, 50, size=(20, 2, 5, 2))
    sizes = [(1024, 1024)] * 20
    default = plan(sizes, kp, EngineConfig(), MultiAnimalConfig())
    _, extent = instance_boxes(kp)
    crop = default.multianimal.instance_crop_size
    expected = round(float(np.median(extent)) / 4.0 / crop, 3)
    assert default.instance.augmentation.translate == pytest.approx(expected)
    assert default.multianimal.instance_shift == pytest.approx(expected)  # resolved
    assert "instance_shift" in default.report["chosen"]
    # the centroid network keeps the single-animal rule (resolved when it trains)
    assert default.centroid.augmentation.translate == "auto"
    mine = plan(sizes, kp, EngineConfig(), MultiAnimalConfig.from_dict({"instance_shift": 0.05}))
    assert mine.instance.augmentation.translate == 0.05
    # a translate the user set in the training config reaches both networks, as before
    both = plan(sizes, kp, EngineConfig.from_dict({"augmentation": {"translate": 0.1}}),
                MultiAnimalConfig())
    assert both.instance.augmentation.translate == both.centroid.augmentation.translate == 0.1
    with pytest.raises(ConfigError, match="instance_shift.*0.15 shifts"):
        MultiAnimalConfig.from_dict({"instance_shift": 0.7})


def test_train_multianimal_rejects_bad_labels(tmp_path):
    images = [np.zeros((64, 64, 3), np.uint8)] * 2
    kp = np.full((2, 2, 4, 2), 10.0)
    with pytest.raises(ValueError, match="appears twice"):
        train_multianimal(images, kp, BODYPARTS, ["a", "a"], EngineConfig(), MultiAnimalConfig(),
                          tmp_path)
    with pytest.raises(ValueError, match="individuals"):
        train_multianimal(images, kp[:, :1], BODYPARTS, ["a", "b"], EngineConfig(),
                          MultiAnimalConfig(), tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written


def test_dlc_labels_naming_an_individual_twice_are_refused(tmp_path):
    sample = make_pair_sample(tmp_path / "pair", n_frames=6, n_labeled=3, width=160,
                              height=120)
    labels = read_dlc_project(sample.project_dir)
    assert labels.individuals == ["dark", "brown"]
    csv = next(sample.project_dir.glob("labeled-data/*/CollectedData_*.csv"))
    lines = csv.read_text().splitlines()
    lines[1] = lines[1].replace("brown", "dark")  # the 'individuals' header row
    csv.write_text("\n".join(lines) + "\n")
    next(sample.project_dir.glob("labeled-data/*/CollectedData_*.h5")).unlink()
    with pytest.raises(DLCFormatError, match="individual 'dark' body part .* twice"):
        read_dlc_project(sample.project_dir)


# --- a trained two-animal model (trained once, cached across test runs and backends) ----------


def _engine_hash() -> str:
    root = Path(__file__).resolve().parents[1] / "element_pose"
    digest = hashlib.sha256()
    for path in sorted([*(root / "engine").glob("*.py"), root / "sample.py"]):
        digest.update(path.read_bytes())
    digest.update(torch.__version__.encode())
    return digest.hexdigest()[:16]


PAIR_TRAIN = {"centroid_iterations": 300, "instance_iterations": 700, "identity": True}


def _cached_pair_model(request, sample, name: str, settings: dict, workdir: Path) -> Path:
    """A model of ``settings`` trained on the pair sample, cached in pytest's cache folder
    keyed by the engine's source (the three database runs of CI train it once)."""
    cache = Path(request.config.cache.mkdir(f"{name}-{_engine_hash()}"))
    path = cache / "model.pt"
    if not path.is_file():
        frames = list(iter_frames(sample.video_path))
        images = [frames[i] for i in sample.labeled_frames]
        result = train_multianimal(
            images, sample.keypoints[sample.labeled_frames], BODYPARTS, sample.individuals,
            EngineConfig.from_dict(SMALL), MultiAnimalConfig.from_dict(settings), workdir,
            progress=False)
        result.checkpoint_path.replace(path)
    return path


@pytest.fixture(scope="session")
def pair(request, tmp_path_factory):
    """The generated two-animal sample and a model trained on 40 of its 160 frames.

    The model file is cached in pytest's cache folder keyed by the engine's source, so the
    three database runs of CI train it once.
    """
    sample = make_pair_sample(tmp_path_factory.mktemp("pair"), n_frames=160, n_labeled=40)
    path = _cached_pair_model(request, sample, "pair-model", PAIR_TRAIN,
                              tmp_path_factory.mktemp("pair_work"))
    return sample, path


def test_trained_pair_model_finds_both_animals_and_names_them(pair):
    sample, path = pair
    model = load_multianimal_model(path, device="cpu")
    assert model.bodyparts == BODYPARTS and model.individuals == ["dark", "brown"]
    assert isinstance(load_any_model(path, device="cpu"), type(model))
    frames = list(iter_frames(sample.video_path))
    found = model.predict_frames(frames, batch_size=16)
    assert found.poses.shape == (160, 2, 4, 3) and found.identity.shape == (160, 2, 2)
    ev = evaluate_multianimal(found.poses, found.scores, sample.keypoints)
    assert ev["missed"] + ev["spurious"] <= 0.03 * ev["labeled_animals"]
    assert ev["median_error_px"] < 2.0
    assert ev["map_oks"] > 0.5
    ids = track(found.poses)
    names = assign_identities(found.identity, ids)
    right = [names[i, ev["matches"][i, g]] == g for i in range(160) for g in range(2)
             if ev["matches"][i, g] >= 0]
    assert np.mean(right) >= 0.95
    # video analysis gives the same detections as frames
    video, stats = model.predict_video(sample.video_path, batch_size=16, progress=False)
    np.testing.assert_allclose(video.poses, found.poses, atol=0.5)
    assert stats["frames"] == 160


def test_flip_test_averages_each_crop_with_its_mirror_image(pair):
    """``flip_test``: the instance network also sees every crop mirrored, its left/right
    channels swapped back. Done right, it finds the same parts as precisely; without the swap
    the ears would be averaged with their twins, with a wrong offset sign shifted."""
    sample, path = pair
    model = load_multianimal_model(path, device="cpu")
    # leftear <-> rightear; the identity channels stay
    assert model.flip_perm.tolist() == [0, 2, 1, 3, 4, 5]
    assert model.flip_test is True  # resolved at training: the ears are twins
    # one crop per detection in both runs: a second look would fill a slot differently
    model.search_missed = False
    frames = list(iter_frames(sample.video_path))[:60]
    both = model.predict_frames(frames, batch_size=16)
    model.flip_test = False
    plain = model.predict_frames(frames, batch_size=16)
    model.flip_test = True
    truth = sample.keypoints[:60]
    ev_plain = evaluate_multianimal(plain.poses, plain.scores, truth)
    ev_both = evaluate_multianimal(both.poses, both.scores, truth)
    assert ev_both["median_error_px"] < 2.0
    assert ev_both["mean_error_px"] <= ev_plain["mean_error_px"] + 0.3
    moved = np.linalg.norm(both.poses[..., :2] - plain.poses[..., :2], axis=-1)
    assert np.nanmedian(moved) < 1.0
    # the identity channels keep the unmirrored crop's answer (compared where both runs kept
    # the detection: the averaged pose can decide a near-duplicate differently)
    kept = np.isfinite(both.scores) & np.isfinite(plain.scores)
    assert kept.mean() > 0.95
    np.testing.assert_allclose(both.identity[kept], plain.identity[kept], atol=1e-5)
    model.flip_perm = np.arange(6)  # the swap left out: the ears go wrong
    unswapped = model.predict_frames(frames, batch_size=16)
    ev_wrong = evaluate_multianimal(unswapped.poses, unswapped.scores, truth)
    assert ev_wrong["mean_error_px"] > ev_both["mean_error_px"] + 0.5


def test_found_centre_is_the_box_of_the_confident_parts():
    parts = torch.tensor([[[10.0, 20.0, 0.9], [30.0, 60.0, 0.8], [20.0, 40.0, 0.5],
                           [500.0, 500.0, 0.1]],  # a faint part does not move the box
                          [[10.0, 20.0, 0.9], [30.0, 60.0, 0.8], [0.0, 0.0, 0.1],
                           [float("nan"), float("nan"), float("nan")]]])  # too few: kept
    cx, cy = _found_centre(parts, torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]))
    assert cx.tolist() == [20.0, 2.0] and cy.tolist() == [40.0, 4.0]


def _animal_at(x: float, y: float, conf: float = 0.9) -> list[list[float]]:
    """Four parts of an animal around (x, y)."""
    return [[x - 10, y, conf], [x + 10, y, conf], [x, y - 5, conf], [x, y + 5, conf]]


def test_second_looks_go_where_an_animal_was_left_out():
    """Two crops of frame 0 returned the same animal: the one centred off it is cut again,
    half-way further from it. Frame 1 found two animals: nothing to look for. Frame 2's one
    crop returned an animal 30 px left of its centre: cut again 15 px further right. A crop
    whose animal is at its centre, or with fewer than three confident parts, is not moved."""
    parts = torch.tensor([_animal_at(100, 100), _animal_at(101, 100),       # frame 0
                          _animal_at(100, 100), _animal_at(200, 100),       # frame 1
                          _animal_at(300, 300),                             # frame 2
                          _animal_at(500, 500), _animal_at(400, 400, 0.1)])  # frame 3
    frame_of = torch.tensor([0, 0, 1, 1, 2, 3, 3])
    cx = torch.tensor([100.0, 140.0, 100.0, 200.0, 330.0, 500.0, 450.0])
    cy = torch.tensor([100.0, 100.0, 100.0, 100.0, 300.0, 500.0, 400.0])
    rows, x, y = second_look_centres(parts, frame_of, cx, cy, max_animals=2, limit=10.0)
    assert rows.tolist() == [1, 4]
    np.testing.assert_allclose(x.numpy(), [159.5, 345.0])
    np.testing.assert_allclose(y.numpy(), [100.0, 300.0])
    # one animal is all there is to find: no second looks
    rows, _, _ = second_look_centres(parts, frame_of, cx, cy, max_animals=1, limit=10.0)
    assert len(rows) == 0


def _bar_frame() -> tuple[np.ndarray, np.ndarray]:
    """A dark 200 x 200 frame with two bright 30 x 10 px animals, their four corners as
    parts: (1, 2, 4, 2) keypoints."""
    image = np.full((200, 200, 3), 20, np.uint8)
    kp = np.zeros((1, 2, 4, 2))
    for m, (x, y) in enumerate([(50, 50), (150, 140)]):
        cv2.rectangle(image, (x - 15, y - 5), (x + 15, y + 5), (230, 230, 230), -1)
        kp[0, m] = [[x - 15, y - 5], [x + 15, y - 5], [x + 15, y + 5], [x - 15, y + 5]]
    return image, kp


def test_an_animal_is_pasted_beside_the_centred_one_without_covering_it():
    image, kp = _bar_frame()
    patch, mask = animal_cutout(image, kp[0, 1], side=51)
    assert patch.shape == (51, 51, 3) and mask.shape == (51, 51)
    assert patch[25, 25].min() > 200 and mask[25, 25] > 0.99  # the animal, fully kept
    assert mask[0, 0] < 0.01  # background around it is not
    crop = np.full((121, 121, 3), 20, np.uint8)
    labeled = np.array([[45.0, 55.0], [75.0, 55.0], [75.0, 65.0], [45.0, 65.0]])
    cv2.rectangle(crop, (45, 55), (75, 65), (230, 230, 230), -1)
    rng = np.random.default_rng(0)
    pasted = paste_beside(crop, labeled, patch, mask, distance=45.0, rng=rng)
    assert pasted is not None
    np.testing.assert_array_equal(pasted[55:66, 45:76], crop[55:66, 45:76])  # not covered
    bright = np.argwhere(pasted[..., 0] > 200)
    far = np.linalg.norm(bright - 60.0, axis=1) > 30
    assert far.sum() > 100  # the second animal, away from the centre
    # pasted on top of the centred animal every time: refused
    assert paste_beside(crop, labeled, patch, mask, distance=0.0, rng=rng) is None


def test_crowded_crops_copy_the_centred_animals_labels():
    image, kp = _bar_frame()
    crops = [image[20:141, 0:121].copy(), image[79:200, 79:200].copy()]
    ckp = np.stack([kp[0, 0] - [0, 20], kp[0, 1] - [79, 79]])
    ckp = np.concatenate([ckp, np.full((2, 2, 2), np.nan)], axis=1)  # + identity channels
    extra, extra_kp = crowded_crops([image], kp, crops, ckp, 2.0, 1.0, seed=0)
    assert 1 <= len(extra) <= 4 and extra_kp.shape == (len(extra), 6, 2)
    for c, k in zip(extra, extra_kp, strict=True):
        source = int(np.argmin([np.nansum(np.abs(k - o)) for o in ckp]))
        np.testing.assert_array_equal(k, ckp[source])
        assert (c != crops[source]).any()  # an animal was pasted in
    with pytest.raises(ConfigError, match="crowd"):
        MultiAnimalConfig.from_dict({"crowd": -1})


def test_second_looks_change_nothing_where_every_animal_was_found(pair):
    """``search_missed`` (default on) only adds crops in frames with fewer distinct animals
    than the maximum: on frames where both animals were found the result is the same."""
    sample, path = pair
    model = load_multianimal_model(path, device="cpu")
    assert model.search_missed is True
    frames = list(iter_frames(sample.video_path))[:40]
    on = model.predict_frames(frames, batch_size=16)
    model.search_missed = False
    off = model.predict_frames(frames, batch_size=16)
    both = (np.isfinite(off.scores).sum(axis=1) == 2)
    assert both.mean() > 0.9
    np.testing.assert_allclose(on.poses[both], off.poses[both], atol=1e-4)
    assert (np.isfinite(on.scores).sum(axis=1) >= np.isfinite(off.scores).sum(axis=1)).all()


def test_recentred_crops_find_the_animals_as_well(pair):
    """``recentre``: each crop is cut a second time around the parts the first pass found;
    the animals are found as precisely and as completely."""
    sample, path = pair
    model = load_multianimal_model(path, device="cpu")
    assert model.recentre is False  # the default, stored with the model
    frames = list(iter_frames(sample.video_path))[:60]
    truth = sample.keypoints[:60]
    found = model.predict_frames(frames, batch_size=16)
    once = evaluate_multianimal(found.poses, found.scores, truth)
    model.recentre = True
    found = model.predict_frames(frames, batch_size=16)
    twice = evaluate_multianimal(found.poses, found.scores, truth)
    assert twice["median_error_px"] <= once["median_error_px"] + 0.2
    assert twice["missed"] + twice["spurious"] <= 0.03 * twice["labeled_animals"]
    assert np.isfinite(found.identity).any()


def test_egocentric_pair_model_finds_both_animals(pair, request, tmp_path):
    """``align``: the centroid network also finds each animal's body axis and the instance
    network sees every animal turned upright; it must still find both animals, as precisely,
    in frames and in the video."""
    sample, _ = pair
    path = _cached_pair_model(request, sample, "pair-aligned", {**PAIR_TRAIN, "align": True},
                              tmp_path)
    model = load_multianimal_model(path, device="cpu")
    assert model.settings.align is True and len(model.settings.align_parts) == 2
    assert set(model.settings.align_parts) <= set(BODYPARTS)  # resolved from the labels
    assert model.centroid.bodyparts[0] == "animal" and len(model.centroid.bodyparts) == 3
    frames = list(iter_frames(sample.video_path))
    found = model.predict_frames(frames, batch_size=16)
    ev = evaluate_multianimal(found.poses, found.scores, sample.keypoints)
    assert ev["missed"] + ev["spurious"] <= 0.03 * ev["labeled_animals"]
    assert ev["median_error_px"] < 2.0
    video, _ = model.predict_video(sample.video_path, batch_size=16, progress=False)
    np.testing.assert_allclose(video.poses, found.poses, atol=0.5)


def test_single_and_multi_model_files_are_told_apart(pair, tmp_path):
    _, path = pair
    from element_pose.engine.predict import load_model

    with pytest.raises(ValueError, match="multi-animal"):
        load_model(path)
    single = tmp_path / "single.pt"
    payload = torch.load(path, map_location="cpu", weights_only=True)
    torch.save(payload["centroid"], single)
    with pytest.raises(ValueError, match="single-animal model"):
        load_multianimal_model(single)


# --- the tables -------------------------------------------------------------------------------


TINY_MULTI = {**SMALL, "iterations": 60, "checkpoint_every": 50,
              "multianimal": {"centroid_iterations": 40, "instance_iterations": 40,
                              "identity": True}}


@pytest.fixture(scope="module")
def pair_db(pipeline, pair):
    """The pair sample imported, a tiny training populated, the cached model registered,
    evaluated and run on the video."""
    train, model = pipeline.train, pipeline.model
    sample, path = pair
    root = Path(pipeline.get_pose_root_data_dir()[0])
    video = root / "pair" / "pair_cam.mp4"
    video.parent.mkdir(parents=True, exist_ok=True)
    video.write_bytes(sample.video_path.read_bytes())
    dataset = train.LabeledDataset.import_dlc(sample.project_dir, "pair")
    split = train.DataSplit.random(dataset, test_fraction=0.25, seed=0)
    paramset = train.TrainingParamSet.insert_new_params(TINY_MULTI, description="tiny pair")
    task = {**split, **paramset, "run_id": 0}
    train.TrainingTask.insert1(task, skip_duplicates=True)
    train.ModelTraining.populate(task)
    tiny = model.Model.from_training(task, "pair_tiny")
    good = model.Model.from_checkpoint(path, "pair_model")
    model.ModelEvaluation.populate({**good, **split})
    pipeline.Subject.insert1({"subject": "pair"}, skip_duplicates=True)
    session = {"subject": "pair", "session_id": 1}
    pipeline.Session.insert1({**session, "session_datetime": "2026-11-30 10:00:00"},
                             skip_duplicates=True)
    pipeline.Device.insert1({"device": "cam_pair"}, skip_duplicates=True)
    recording = model.VideoRecording.add(session, 1, {"device": "cam_pair"}, [video])
    model.RecordingInfo.populate(recording)
    pose = model.PoseEstimationTask.add(recording, good, batch_size=16,
                                        tracker={"max_gap": 10})
    model.PoseEstimation.populate(pose)
    return {"sample": sample, "dataset": dataset, "split": split, "task": task, "tiny": tiny,
            "model": good, "recording": recording, "pose": pose, "session": session}


def test_multianimal_training_and_model_rows(pipeline, pair_db):
    train, model = pipeline.train, pipeline.model
    row = (train.ModelTraining & pair_db["task"]).fetch1()
    assert row["iterations"] == 80  # both networks
    assert row["config"]["multianimal"]["identity"] is True
    assert row["config"]["individuals"] == ["dark", "brown"]
    assert len(row["auto_report"]["centroid"]["learning_curve"]) > 0
    assert model.Model.individuals(pair_db["tiny"]) == ["dark", "brown"]
    assert model.Model.is_multianimal(pair_db["model"])


def test_multianimal_evaluation(pipeline, pair_db):
    model = pipeline.model
    key = {**pair_db["model"], **pair_db["split"]}
    row = (model.ModelEvaluation & key).fetch1()
    multi = (model.ModelEvaluation.MultiAnimal & key).fetch1()
    assert multi["labeled_animals"] == 20  # 10 test frames, two animals each
    assert multi["missed"] + multi["spurious"] <= 1
    assert multi["identity_accuracy"] >= 0.9
    assert multi["map_oks"] > 0.5
    assert row["test_median_error_px"] < 2.5
    assert len(model.ModelEvaluation.BodyPart & key) == 4
    prediction = (model.ModelEvaluation.Frame & key).to_dicts(limit=1)[0]["prediction"]
    assert prediction.shape == (2, 4, 3)
    # single-animal models are never paired with a multi-animal dataset
    assert not (model.ModelEvaluation.key_source & pair_db["split"]
                & (model.Model - model.Model.Individual).proj())


def test_pose_estimation_has_one_row_per_animal(pipeline, pair_db):
    model = pipeline.model
    key = pair_db["pose"]
    people = (model.PoseEstimation.Individual & key).to_dicts(order_by="individual_index")
    assert [p["individual"] for p in people] == ["dark", "brown"]
    assert {p["identity_source"] for p in people} == {"identity"}
    assert all(p["frames_present"] >= 150 for p in people)
    assert not model.PoseEstimation.BodyPartPosition & key
    with pytest.raises(ValueError, match="several animals.*individual="):
        model.PoseEstimation.pose_array(key)
    truth = pair_db["sample"].keypoints
    for g, name in enumerate(["dark", "brown"]):
        pose, parts = model.PoseEstimation.pose_array(key, individual=name)
        assert parts == BODYPARTS and pose.shape == (160, 4, 3)
        err = np.linalg.norm(pose[..., :2] - truth[:, g], axis=-1)
        assert np.nanmedian(err) < 2.0  # the right animal under the right name
    with pytest.raises(ValueError, match="No individual 'grey'"):
        model.PoseEstimation.pose_array(key, individual="grey")
    # the animals' rows join with the session tables by key
    joined = pipeline.Session * model.PoseEstimation.Individual & key
    assert len(joined) == 2


def test_multianimal_trajectory_export_and_load(pipeline, pair_db, data_root):
    model = pipeline.model
    key = pair_db["pose"]
    df = model.PoseEstimation.get_trajectory(key)
    assert list(df.columns.names) == ["scorer", "individuals", "bodyparts", "coords"]
    assert list(df.columns.get_level_values("individuals").unique()) == ["dark", "brown"]
    one = model.PoseEstimation.get_trajectory(key, individuals=["brown"], body_parts=["snout"])
    assert one.shape == (160, 3)
    with pytest.raises(ValueError, match="Unknown individuals"):
        model.PoseEstimation.get_trajectory(key, individuals=["grey"])
    h5, csv = model.PoseEstimation.export_dlc(key, data_root / "pair_out" / "pairDLC.h5")
    back = pd.read_hdf(h5)
    pd.testing.assert_frame_equal(back, df, check_names=False)
    assert csv.read_text().splitlines()[1].startswith("individuals")

    # load mode: the exported file under its own external model
    ext = model.Model.from_output_file(h5, "pair_dlc_ext")
    assert model.Model.individuals(ext) == ["dark", "brown"]
    task = model.PoseEstimationTask.add(pair_db["recording"], ext, mode="load", output_path=h5)
    model.PoseEstimation.populate(task)
    loaded, parts, names = model.PoseEstimation.multi_pose_array(task)
    original, _, _ = model.PoseEstimation.multi_pose_array(key)
    np.testing.assert_allclose(loaded, original, rtol=1e-6)
    assert names == ["dark", "brown"]
    assert {r["identity_source"] for r in (model.PoseEstimation.Individual & task).to_dicts()} \
        == {"file"}


def _sleap_tracked_predictions(path: Path, video_path: Path, pose: np.ndarray,
                               names: list[str]) -> Path:
    """A SLEAP predictions file: (F, I, K, 3) pose as predicted instances on named tracks."""
    import sleap_io as sio

    skeleton = sio.Skeleton(list(BODYPARTS))
    video = sio.Video.from_filename(str(video_path))
    tracks = [sio.Track(name) for name in names]
    frames = []
    for i, animals in enumerate(pose):
        instances = [sio.PredictedInstance.from_numpy(p[:, :2], skeleton=skeleton,
                                                      point_scores=p[:, 2], score=1.0,
                                                      track=tracks[g])
                     for g, p in enumerate(animals) if np.isfinite(p[:, :2]).any()]
        frames.append(sio.LabeledFrame(video=video, frame_idx=i, instances=instances))
    labels = sio.Labels(labeled_frames=frames, videos=[video], skeletons=[skeleton],
                        tracks=tracks)
    labels.provenance["sleap_version"] = "1.4.1"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".analysis.h5"):
        sio.save_analysis_h5(labels, str(path))
    else:
        sio.save_slp(labels, str(path))
    return path


@pytest.mark.parametrize("suffix", [".slp", ".analysis.h5"])
def test_multianimal_sleap_predictions_load_by_track(pipeline, pair_db, data_root, suffix):
    model = pipeline.model
    pose, _, names = model.PoseEstimation.multi_pose_array(pair_db["pose"])
    pose = pose.copy()
    pose[5, 1] = np.nan  # 'brown' not predicted in frame 5
    video = model.VideoRecording.file_paths(pair_db["recording"])[0]
    path = _sleap_tracked_predictions(data_root / "pair_out" / f"pair_pred{suffix}", video,
                                      pose, names)
    ext = model.Model.from_output_file(path, f"pair_sleap{suffix.replace('.', '_')}")
    assert model.Model.individuals(ext) == names
    assert (model.Model & ext).fetch1("source_tool") == "SLEAP"
    task = model.PoseEstimationTask.add(pair_db["recording"], ext, mode="load",
                                        output_path=path)
    model.PoseEstimation.populate(task)
    loaded, parts, got = model.PoseEstimation.multi_pose_array(task)
    assert got == names and parts == BODYPARTS
    np.testing.assert_allclose(loaded[..., :2], pose[..., :2], rtol=1e-5)
    assert np.isnan(loaded[5, 1]).all()
    rows = (model.PoseEstimation.Individual & task).to_dicts(order_by="individual_index")
    # counted from what was written (the tiny model may miss an animal in a frame or two)
    present = np.isfinite(pose[..., 0]).any(axis=-1)
    assert not present[5, 1] and present.sum() > 300
    assert [r["frames_present"] for r in rows] == present.sum(axis=0).tolist()


def test_multianimal_bad_tasks_insert_nothing(pipeline, pair_db, data_root):
    model = pipeline.model
    h5 = data_root / "pair_out" / "pairDLC.h5"
    if not h5.is_file():
        model.PoseEstimation.export_dlc(pair_db["pose"], h5)
    before = len(model.PoseEstimation())
    # a single-animal model with a multi-animal file
    single = model.Model.from_external("pair_single_ext", "DeepLabCut", BODYPARTS,
                                       scorer=model.Model.scorer if False else "x")
    task = model.PoseEstimationTask.add(pair_db["recording"], single, mode="load",
                                        output_path=h5)
    with pytest.raises(ValueError, match="holds 2 animals.*single-animal"):
        model.PoseEstimation.populate(task)
    # a model expecting other individuals
    other = model.Model.from_external("pair_other_ext", "DeepLabCut", BODYPARTS, scorer="x",
                                      individuals=["female", "male"])
    task2 = model.PoseEstimationTask.add(pair_db["recording"], other, mode="load",
                                         output_path=h5)
    with pytest.raises(ValueError, match="expects \\['female', 'male'\\]"):
        model.PoseEstimation.populate(task2)
    assert len(model.PoseEstimation()) == before
    assert not model.PoseEstimation.Individual & task2
    # multi-animal options for a single-animal model
    with pytest.raises(ValueError, match="single-animal model.*max_animals"):
        model.PoseEstimationTask.add(pair_db["recording"], single, mode="load",
                                     output_path=h5, max_animals=2)
    with pytest.raises(TypeError, match="max_animals must be a positive int"):
        model.PoseEstimationTask.add(pair_db["recording"], pair_db["model"], max_animals="2")
    (model.PoseEstimationTask & task).delete(prompt=False)
    (model.PoseEstimationTask & task2).delete(prompt=False)


def test_multianimal_filtered_video_and_nwb(pipeline, pair_db, tmp_path):
    model = pipeline.model
    key = pair_db["pose"]
    filt = model.PoseFilterParamSet.insert_new_params({"confidence_threshold": 0.5, "max_gap": 3,
                                                       "smoothing": "median", "window": 3})
    fkey = {**key, **filt}
    model.FilteredPose.populate(fkey)
    filtered, parts, names = model.FilteredPose.pose_data(fkey)
    raw, _, _ = model.PoseEstimation.pose_data(key)
    assert filtered.shape == raw.shape == (160, 2, 4, 3) and names == ["dark", "brown"]
    assert np.nanmedian(np.abs(filtered[..., :2] - raw[..., :2])) < 1.0
    assert len(model.FilteredPose.IndividualPosition & fkey) == 8
    with pytest.raises(ValueError, match="several animals"):
        model.FilteredPose.pose_array(fkey)

    model.LabeledVideoTask.insert1({**key, "video_id": 0, "filter_paramset_id": None})
    model.LabeledVideo.populate(key)
    out = tmp_path / "labeled.mp4"
    out.write_bytes((model.LabeledVideo & key).fetch1("video").read())
    # each animal is drawn in its own colour: the two animals' marks differ in hue (looked at
    # on the first frame where the model found the first part of both above the cut-off)
    both = np.flatnonzero((raw[:, :, 0, 2] >= 0.6).all(axis=1))
    assert len(both) > 100
    i = int(both[0])
    drawn = list(iter_frames(out, 0, i + 1))[-1].astype(int)
    original = list(iter_frames(pair_db["sample"].video_path, 0, i + 1))[-1].astype(int)
    changed = np.abs(drawn - original).max(axis=-1) > 60
    colours = []
    for g in range(2):
        x, y = raw[i, g, 0, :2].round().astype(int)
        patch = changed[max(y - 3, 0):y + 4, max(x - 3, 0):x + 4]
        assert patch.any()
        colours.append(drawn[max(y - 3, 0):y + 4, max(x - 3, 0):x + 4][patch].mean(axis=0))
    assert np.abs(colours[0] - colours[1]).max() > 100

    from element_pose.io.nwb import read_nwb_pose

    nwb = model.export_nwb(key, tmp_path / "pair.nwb", subject={"age": "P90D"})
    for g, name in enumerate(names):
        pose, got_parts, _ = read_nwb_pose(nwb, name=f"PoseEstimation_{name}")
        assert got_parts == BODYPARTS
        np.testing.assert_allclose(pose, raw[:, g], rtol=1e-6)
