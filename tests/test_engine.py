"""Unit tests of the pose engine's pieces (no database)."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch
import torchvision

from element_pose.engine.augment import (
    affine_matrix,
    apply_affine,
    augment_sample,
    flip_permutation,
    lateral_pairs,
    scale_image,
)
from element_pose.engine.autoconfig import resolve_flip
from element_pose.engine.checkpoint import file_sha256
from element_pose.engine.config import AugmentationConfig, ConfigError, EngineConfig
from element_pose.engine.data import TrainingSet, validate_training_data
from element_pose.engine.metrics import (
    MIN_VALIDATION_CAP_PX,
    animal_size,
    capped_mean_error,
    evaluate,
    validation_cap,
)
from element_pose.engine.network import PoseNet, PretrainedWeightsError, build_backbone
from element_pose.engine.targets import decode, make_targets, pose_loss
from element_pose.engine.train import learning_rate

# ---------------------------------------------------------------------------------- config


def test_config_defaults_roundtrip_and_canonical_hash():
    c = EngineConfig()
    d = c.to_dict()
    assert json.loads(c.to_json()) == d
    assert EngineConfig.from_dict(d) == c
    # key order and 1 vs 1.0 do not change the hash
    a = EngineConfig.from_dict({"sigma": 3, "optimizer": {"weight_decay": 0.0, "lr": 1e-3}})
    b = EngineConfig.from_dict({"optimizer": {"lr": 0.001, "weight_decay": 0}, "sigma": 3.0})
    assert a.sha256() == b.sha256()
    assert a.sha256() != c.sha256()
    assert len(a.sha256()) == 64
    assert c.to_json() == json.dumps(d, sort_keys=True, separators=(",", ":"))
    assert d["augmentation"]["scale"] == "auto"
    set_scale = EngineConfig.from_dict({"augmentation": {"scale": (0.8, 1)}}).to_dict()
    assert set_scale["augmentation"]["scale"] == [0.8, 1.0]  # tuples as lists, floats


@pytest.mark.parametrize(
    "bad, needle",
    [
        ({"learning_rate": 0.1}, "'learning_rate'"),
        ({"augmentation": {"rotate": 10}}, "'augmentation.rotate'"),
        ({"batch_size": "8"}, "'batch_size' expects int"),
        ({"batch_size": 8.0}, "'batch_size' expects int"),
        ({"mixed_precision": 1}, "'mixed_precision' expects bool"),
        ({"sigma": True}, "'sigma' expects float"),
        ({"output_stride": 3}, "'output_stride' expects one of"),
        ({"optimizer": {"betas": [0.9]}}, "'optimizer.betas'"),
        ({"backbone": "vgg16"}, "'backbone'"),
        ({"output_stride": 16, "backbone_stride": 8}, "'output_stride'"),
        ({"iterations": 10, "epochs": 3}, "'epochs'"),
        ({"augmentation": {"flip": 0.5}}, "flip_pairs"),
        ({"pcutoff": 1.5}, "'pcutoff'"),
        ({"hard_keypoint_weight": -1.0}, "'hard_keypoint_weight'"),
        ({"schedule": {"name": "linear"}}, "'schedule.name'"),
    ],
)
def test_config_rejects_bad_keys_and_types(bad, needle):
    with pytest.raises(ConfigError) as info:
        EngineConfig.from_dict(bad)
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError)


def test_config_replace_validates():
    c = EngineConfig().replace(iterations=None, max_seconds=60)
    assert c.max_seconds == 60.0 and c.iterations is None
    with pytest.raises(ConfigError, match="'crop_size'"):
        EngineConfig().replace(crop_size=0)


# --------------------------------------------------------------------------------- targets


def test_targets_peak_at_keypoint_and_mask_invisible():
    kp = torch.tensor([[[37.0, 21.0], [float("nan"), float("nan")]],
                       [[5.5, 60.25], [70.0, 3.0]]])
    t = make_targets(kp, (20, 24), stride=4, sigma=3.0, locref_radius=6.0)
    heat = t["heatmaps"]
    assert heat.shape == (2, 2, 20, 24)
    assert float(heat[0, 1].max()) == 0.0 and not bool(t["offset_mask"][0, 1].any())
    # peak cell: centre j*4+1.5 nearest to x=37 -> j=9 (37.5); y=21 -> i=5 (21.5)
    flat = int(heat[0, 0].argmax())
    assert divmod(flat, 24) == (5, 9)
    assert float(heat[0, 0].max()) == pytest.approx(math.exp(-0.5 / 18.0), rel=1e-5)
    assert divmod(int(heat[1, 1].argmax()), 24) == (0, 17)
    assert t["visible"].tolist() == [[True, False], [True, True]]


def test_decoding_inverts_encoding_subpixel():
    gen = torch.Generator().manual_seed(0)
    for stride in (2, 4, 8):
        h, w = 16, 20
        kp = torch.rand(3, 5, 2, generator=gen) * torch.tensor([w * stride - 1.0, h * stride - 1.0])
        t = make_targets(kp, (h, w), stride=stride, sigma=stride * 1.0, locref_radius=stride * 2.0)
        logits = torch.logit(t["heatmaps"].clamp(1e-6, 1 - 1e-6))
        out = decode(logits, t["offsets"], stride)
        assert out.shape == (3, 5, 3)
        assert torch.allclose(out[..., :2], kp, atol=1e-3), stride
        assert bool((out[..., 2] > 0.5).all())


def test_hard_keypoint_mining_shifts_gradient_to_the_hardest_parts():
    kp = torch.tensor([[[20.0, 20.0], [40.0, 12.0], [60.0, 30.0], [10.0, 50.0]]])
    t = make_targets(kp, (16, 20), stride=4, sigma=4.0, locref_radius=8.0)
    offsets = torch.zeros(1, 4, 2, 16, 20)
    # part 0 is predicted far worse than the others
    logits = torch.logit(t["heatmaps"].clamp(0.02, 0.98))
    logits[0, 0] = -3.0

    def grads(weight: float) -> torch.Tensor:
        x = logits.clone().requires_grad_(True)
        pose_loss(x, offsets, t, 0.5, weight)[0].backward()
        return x.grad.abs().sum(dim=(0, 2, 3))

    plain, mined = grads(0.0), grads(1.0)
    share = lambda g: float(g[0] / g.sum())  # noqa: E731
    assert share(mined) > share(plain)
    # equally hard parts: the rescaling leaves the loss as it was
    twins = {**t, "heatmaps": t["heatmaps"][:, :1].expand(1, 4, 16, 20)}
    flat = torch.full((1, 4, 16, 20), -1.0)
    assert float(pose_loss(flat, offsets, twins, 0.5, 2.0)[1]) == pytest.approx(
        float(pose_loss(flat, offsets, twins, 0.5, 0.0)[1]), rel=1e-5)


# ---------------------------------------------------------------------------- augmentation


def _dot_image(h=120, w=160):
    """Black frame with three coloured dots; returns image, keypoints, colours."""
    img = np.zeros((h, w, 3), np.uint8)
    pts = np.array([[40.0, 30.0], [110.0, 50.0], [70.0, 95.0]])
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    for (x, y), col in zip(pts, colours, strict=True):
        cv2.circle(img, (int(x), int(y)), 5, col, -1)
    return img, pts, colours


def test_augmentation_keeps_keypoints_on_same_content():
    img, pts, colours = _dot_image()
    aug = AugmentationConfig(rotation=45, scale=(0.7, 1.4), translate=0.1, brightness=0,
                             contrast=0, noise=0, blur=0, grayscale=0, crop_around_keypoints=1)
    checked = 0
    for seed in range(20):
        crop, kp = augment_sample(img, pts, 128, aug, np.random.default_rng(seed))
        assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8
        for k, colour in enumerate(colours):
            if np.isnan(kp[k]).any():
                continue
            x, y = int(round(kp[k, 0])), int(round(kp[k, 1]))
            assert crop[y, x].tolist() == list(colour), (seed, k)
            checked += 1
    assert checked > 40


def test_flip_swaps_named_pairs_and_matches_pixels():
    img, pts, colours = _dot_image()
    aug = AugmentationConfig(rotation=0, scale=(1, 1), translate=0, flip=1.0, brightness=0,
                             contrast=0, noise=0, blur=0, grayscale=0, crop_around_keypoints=1)
    perm = flip_permutation(["a", "b", "c"], [("a", "b")])
    assert perm.tolist() == [1, 0, 2]
    crop, kp = augment_sample(img, pts, 160, aug, np.random.default_rng(1), perm)
    # after the swap, keypoint 0 ("a") sits on b's green dot, which was right of a's dot:
    # mirrored it is now on the left.
    assert crop[int(round(kp[0, 1])), int(round(kp[0, 0]))].tolist() == list(colours[1])
    assert crop[int(round(kp[1, 1])), int(round(kp[1, 0]))].tolist() == list(colours[0])
    assert kp[1, 0] > kp[0, 0]
    with pytest.raises(ValueError, match="'z'"):
        flip_permutation(["a", "b"], [("a", "z")])


@pytest.mark.parametrize("names, pairs", [
    (["snout", "leftear", "rightear", "tailbase"], [("leftear", "rightear")]),
    (["Ear_L", "Ear_R", "Haunch_left", "Haunch_right", "TTI", "Tail_0"],
     [("Ear_L", "Ear_R"), ("Haunch_left", "Haunch_right")]),
    (["head", "wingL", "wingR", "forelegL4", "forelegR4", "eyeL", "eyeR"],
     [("wingL", "wingR"), ("forelegL4", "forelegR4"), ("eyeL", "eyeR")]),
    (["ear_l", "ear_r", "Left Paw", "Right Paw", "LEFT_EYE", "RIGHT_EYE", "Lear"],
     [("ear_l", "ear_r"), ("Left Paw", "Right Paw"), ("LEFT_EYE", "RIGHT_EYE")]),
    (["nose", "tailbase", "Lower_lip"], []),
])
def test_lateral_pairs_follow_common_naming_conventions(names, pairs):
    found, unpaired = lateral_pairs(names)
    assert found == pairs and unpaired == []


def test_flip_pairs_auto_flips_only_when_every_lateral_part_has_a_twin():
    c, chosen = resolve_flip(EngineConfig(flip_pairs="auto"), ["snout", "leftear", "rightear"])
    assert c.flip_pairs == (("leftear", "rightear"),) and c.augmentation.flip == 0.5
    assert chosen["value"] == [["leftear", "rightear"]] and "mirror" in chosen["reason"]
    c, _ = resolve_flip(EngineConfig.from_dict({"flip_pairs": "auto",
                                                "augmentation": {"flip": 0.3}}),
                        ["Ear_L", "Ear_R"])
    assert c.augmentation.flip == 0.3  # a probability the user set is kept
    # mirror-mouse names its paws 1LH..4RH: "paw1LH" has no "paw1RH", so no safe flip
    names = ["nose_bot", "paw1LH_bot", "paw4RH_bot"]
    assert lateral_pairs(names) == ([], ["paw1LH_bot", "paw4RH_bot"])
    c, chosen = resolve_flip(EngineConfig(flip_pairs="auto"), names)
    assert c.flip_pairs == () and c.augmentation.flip == 0.0
    assert "paw1LH_bot" in chosen["reason"]
    with pytest.raises(ConfigError, match="paw1LH_bot.*flip_pairs"):
        resolve_flip(EngineConfig(flip_pairs="auto"), names, required=True)
    c, _ = resolve_flip(EngineConfig(flip_pairs="auto"), ["nose", "tail"])
    assert c.flip_pairs == () and c.augmentation.flip == 0.0
    with pytest.raises(ConfigError, match="flip_pairs"):
        EngineConfig.from_dict({"flip_pairs": "yes"})


def test_affine_matrix_matches_opencv_rotation():
    m = affine_matrix((50.0, 40.0), 101, angle_deg=30, zoom=1.5)
    ref = cv2.getRotationMatrix2D((50.0, 40.0), 30, 1.5)
    ref[:, 2] += np.array([50.0, 50.0]) - np.array([50.0, 40.0])
    assert np.allclose(m, ref)
    assert np.allclose(apply_affine(np.array([[50.0, 40.0]]), m), [[50.0, 50.0]])


def test_scale_image_half_pixel_convention():
    img, pts, colours = _dot_image(120, 160)
    small, kp, (rx, ry) = scale_image(img, pts, 0.5)
    assert small.shape == (60, 80, 3) and rx == ry == 0.5
    assert np.allclose(kp, (pts + 0.5) * 0.5 - 0.5)
    for k, colour in enumerate(colours):
        x, y = int(round(kp[k, 0])), int(round(kp[k, 1]))
        assert np.argmax(small[y, x]) == np.argmax(colour)


def test_augmentation_left_auto_is_refused():
    img, pts, _ = _dot_image()
    with pytest.raises(ValueError, match="rotation, scale, translate still 'auto'"):
        augment_sample(img, pts, 64, AugmentationConfig(), np.random.default_rng(0))


def test_photometric_changes_pixels_not_shape():
    img, pts, _ = _dot_image()
    img[img.sum(axis=2) == 0] = 120  # mid-gray background: changes are not clipped away
    aug = AugmentationConfig(rotation=0, scale=(1, 1), translate=0, brightness=0.3,
                             contrast=0.3, noise=0.05, blur=1.0, grayscale=0,
                             crop_around_keypoints=1)
    crop, kp = augment_sample(img, pts, 96, aug, np.random.default_rng(3))
    plain, kp2 = augment_sample(img, pts, 96, AugmentationConfig(
        rotation=0, scale=(1, 1), translate=0, brightness=0, contrast=0, noise=0, blur=0,
        grayscale=0, crop_around_keypoints=1), np.random.default_rng(3))
    assert crop.shape == plain.shape
    assert np.abs(crop.astype(int) - plain.astype(int)).mean() > 2
    assert np.allclose(kp, kp2, equal_nan=True)


def test_training_batches_are_deterministic_and_resumable():
    img, pts, _ = _dot_image()
    images = [img] * 5
    kps = np.stack([pts] * 5)
    cfg = EngineConfig.from_dict({"crop_size": 64, "batch_size": 3, "input_scale": 1.0,
                                  "augmentation": {"rotation": 30.0, "scale": [0.75, 1.3],
                                                   "translate": 0.2}})
    ds = TrainingSet(images, kps, ["a", "b", "c"], cfg)
    a = ds.batch(7)
    b = ds.batch(7)
    assert np.array_equal(a[0], b[0]) and np.allclose(a[1], b[1], equal_nan=True)
    assert not np.array_equal(ds.batch(8)[0], a[0])
    streamed = list(ds.stream(6, 9))
    assert [s[0] for s in streamed] == [6, 7, 8]
    assert np.array_equal(streamed[1][1], a[0])
    # every frame appears once per epoch
    seen = np.concatenate([ds.indices(i) for i in range(5)])[:15]
    assert sorted(seen[:5].tolist()) == [0, 1, 2, 3, 4]


def test_validate_training_data_errors():
    img = np.zeros((10, 12, 3), np.uint8)
    kp = np.full((2, 3, 2), np.nan)
    kp[0, 0] = (1, 2)
    with pytest.raises(ValueError, match="2 frames but there are 1 images"):
        validate_training_data([img], kp, ["a", "b", "c"])
    with pytest.raises(ValueError, match="3 body parts but bodyparts names 2"):
        validate_training_data([img, img], kp, ["a", "b"])
    bad = kp.copy()
    bad[1, 2, 0] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        validate_training_data([img, img], bad, ["a", "b", "c"])
    with pytest.raises(ValueError, match="uint8"):
        validate_training_data([img.astype(np.float32), img], kp, ["a", "b", "c"])
    with pytest.raises(ValueError, match="expected \\(frames, bodyparts, 2\\)"):
        validate_training_data([img, img], kp[..., :1], ["a", "b", "c"])
    half = kp.copy()
    half[1, 1] = (3.0, np.nan)
    images, out = validate_training_data([img, img[..., 0]], half, ["a", "b", "c"])
    assert np.isnan(out[1, 1]).all() and images[1].shape == (10, 12, 3)


# --------------------------------------------------------------------------------- network


@pytest.mark.parametrize("backbone, stride", [
    ("resnet18", 16), ("resnet34", 8), ("resnet50", 32), ("resnet101", 16),
    ("mobilenet_v3_large", 16), ("efficientnet_b0", 16)])
def test_backbones_and_output_strides(backbone, stride):
    out_stride = 4 if stride >= 8 else stride
    torch.manual_seed(0)
    net = PoseNet(3, backbone=backbone, backbone_stride=stride, output_stride=out_stride,
                  head_channels=16).eval()
    with torch.no_grad():
        heat, off = net(torch.randn(1, 3, 64, 96))
    assert heat.shape == (1, 3, 64 // out_stride, 96 // out_stride)
    assert off.shape == (1, 3, 2, 64 // out_stride, 96 // out_stride)


def test_output_stride_16_and_8():
    for out_stride in (8, 16):
        net = PoseNet(2, backbone="resnet18", backbone_stride=16, output_stride=out_stride,
                      head_channels=8).eval()
        with torch.no_grad():
            heat, _ = net(torch.randn(1, 3, 64, 64))
        assert heat.shape[-1] == 64 // out_stride


def test_pretrained_from_local_checkpoint(tmp_path):
    torch.manual_seed(123)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18_weights.pth"
    torch.save(reference.state_dict(), path)
    backbone, channels = build_backbone("resnet18", 16, pretrained=str(path))
    assert channels == 256
    assert torch.equal(backbone[0].weight, reference.conv1.weight)
    assert torch.equal(backbone[6][1].conv2.weight, reference.layer3[1].conv2.weight)
    # wrapped {"state_dict": ...} files are accepted too
    torch.save({"state_dict": reference.state_dict()}, tmp_path / "wrapped.pt")
    again, _ = build_backbone("resnet18", 16, pretrained=str(tmp_path / "wrapped.pt"))
    assert torch.equal(again[4][0].conv1.weight, reference.layer1[0].conv1.weight)
    # a different architecture's weights are refused with a clear message
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(PretrainedWeightsError, match="lacks|wrong shape"):
        build_backbone("resnet50", 16, pretrained=str(tmp_path / "r34.pth"))
    with pytest.raises(PretrainedWeightsError, match="not found"):
        build_backbone("resnet18", 16, pretrained=str(tmp_path / "missing.pth"))


def test_file_sha256(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"abc")
    assert file_sha256(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_learning_rate_schedule():
    c = EngineConfig.from_dict({"optimizer": {"lr": 1.0},
                                "schedule": {"warmup_iterations": 10, "min_lr_fraction": 0.0}})
    assert learning_rate(c, 0, 0.0) == pytest.approx(0.1)
    assert learning_rate(c, 50, 0.5) == pytest.approx(0.5)
    assert learning_rate(c, 99, 1.0) == pytest.approx(0.0)


# --------------------------------------------------------------------------------- metrics


def test_metrics_on_known_arrays():
    gt = np.array([[[0.0, 0.0], [10.0, 10.0], [np.nan, np.nan]],
                   [[5.0, 5.0], [np.nan, np.nan], [np.nan, np.nan]]])
    pred = np.array([[[3.0, 4.0, 0.9], [10.0, 16.0, 0.3], [1.0, 1.0, 0.9]],
                     [[5.0, 5.0, 0.8], [0.0, 0.0, 0.9], [0.0, 0.0, 0.1]]])
    m = evaluate(pred, gt, pcutoff=0.6, pck_thresholds=(5.0, 10.0))
    # errors: 5, 6, 0 on the visible labels
    assert m["mean_error_px"] == pytest.approx(11 / 3)
    assert m["median_error_px"] == pytest.approx(5.0)
    assert m["rmse_px"] == pytest.approx(math.sqrt((25 + 36 + 0) / 3))
    assert m["mean_error_pcutoff_px"] == pytest.approx(2.5)
    assert m["rmse_pcutoff_px"] == pytest.approx(math.sqrt(12.5))
    assert m["pck"] == {5.0: pytest.approx(2 / 3), 10.0: pytest.approx(1.0)}
    assert np.allclose(m["per_bodypart_error_px"], [2.5, 6.0, np.nan], equal_nan=True)
    assert np.allclose(m["per_frame_error_px"], [5.5, 0.0])
    assert np.isnan(m["errors"][0, 2]) and m["errors"][0, 1] == pytest.approx(6.0)
    assert m["n_keypoints"] == 3
    with pytest.raises(ValueError, match="ground_truth"):
        evaluate(pred, gt[:, :2])


def test_validation_criterion_caps_gross_misses():
    """One keypoint on the wrong part moves the plain mean more than all others together;
    the capped criterion ranks by how well most keypoints are placed."""
    rng = np.random.default_rng(0)
    # ten frames of a 3-part animal 80 px long (diagonal 100 px): cap 25 px
    base = np.array([[0.0, 0.0], [80.0, 60.0], [40.0, 30.0]])
    gt = base[None] + rng.uniform(0, 300, size=(10, 1, 2))
    assert animal_size(gt) == pytest.approx(100.0)
    assert validation_cap(gt) == pytest.approx(25.0)
    gt[3, 2] = np.nan  # unlabeled: excluded
    def predict(offset: float) -> np.ndarray:
        return np.concatenate([gt + offset / np.sqrt(2), np.ones((10, 3, 1))], axis=2)
    sharp, blurred = predict(1.0), predict(4.0)
    sharp[0, 0, :2] += 300.0  # a gross miss on one keypoint of the sharper snapshot
    assert evaluate(sharp, gt)["mean_error_px"] > evaluate(blurred, gt)["mean_error_px"]
    assert capped_mean_error(sharp, gt, 25.0) < capped_mean_error(blurred, gt, 25.0)
    assert capped_mean_error(blurred, gt, 25.0) == pytest.approx(4.0)
    # one labeled part has no size: the floor
    assert validation_cap(gt[:, :1]) == MIN_VALIDATION_CAP_PX
    assert np.isnan(capped_mean_error(sharp, np.full_like(gt, np.nan), 25.0))
