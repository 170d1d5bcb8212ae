"""End-to-end tests of the pose engine: train, checkpoint, resume, predict frames and video."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from element_pose.engine.checkpoint import file_sha256, list_checkpoints
from element_pose.engine.config import EngineConfig
from element_pose.engine.metrics import capped_mean_error, evaluate, validation_cap
from element_pose.engine.network import PoseNet, cpu_supports_bf16
from element_pose.engine.predict import load_model
from element_pose.engine.train import (
    BF16_MIN_SPEEDUP,
    KEEP_TOLERANCE,
    EarlyStopping,
    choose_cpu_bf16,
    train,
)
from element_pose.engine.video import VideoError

BODYPARTS = ["head", "tail", "left", "right"]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
OPENFIELD = SHARED / "openfield-Pranav-2018-10-30"


def make_frames(n: int, seed: int, h: int = 96, w: int = 128, turn: bool = True
                ) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames of a textured arena with one 'animal': a body with four coloured markers
    (facing any way, or with ``turn=False`` always right, a fixed geometry)."""
    rng = np.random.default_rng(seed)
    frames, kps = [], []
    base = cv2.GaussianBlur(rng.integers(40, 90, (h, w, 3)).astype(np.uint8), (0, 0), 2)
    for _ in range(n):
        img = base.copy()
        cx, cy = rng.uniform(28, w - 28), rng.uniform(28, h - 28)
        a = rng.uniform(0, 2 * np.pi) if turn else 0.0
        u = np.array([np.cos(a), np.sin(a)])
        v = np.array([-u[1], u[0]])
        c = np.array([cx, cy])
        pts = np.stack([c + 16 * u, c - 16 * u, c + 7 * v, c - 7 * v])
        cv2.ellipse(img, (int(cx), int(cy)), (17, 8), np.degrees(a), 0, 360, (150, 150, 150), -1)
        for p, col in zip(pts, [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)],
                          strict=True):
            cv2.circle(img, (int(round(p[0])), int(round(p[1]))), 3, col, -1)
        kps.append(pts)
        frames.append(img)
    return frames, np.asarray(kps)


def hide_marker(frame: np.ndarray, point: np.ndarray) -> None:
    """Paint a marker over with the body colour: the body part is then absent."""
    cv2.circle(frame, (int(round(point[0])), int(round(point[1]))), 4, (150, 150, 150), -1)


def tiny_config(**changes) -> EngineConfig:
    d = {"backbone": "resnet18", "backbone_stride": 8, "output_stride": 4, "head_channels": 32,
         "input_scale": 1.0, "crop_size": 64, "batch_size": 8, "iterations": 500,
         "sigma": 2.5, "locref_radius": 5.0, "num_threads": 1, "cpu_bf16": False,
         "augmentation": {"rotation": 180.0, "scale": [0.9, 1.1], "translate": 0.2, "noise": 0.01,
                          "blur": 0.0},
         "optimizer": {"lr": 3e-3}, "schedule": {"warmup_iterations": 20},
         "checkpoint_every": 250}
    d.update(changes)
    return EngineConfig.from_dict(d)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    frames, kps = make_frames(48, seed=0)
    kps = kps.copy()
    kps[3, 2] = np.nan  # a not-visible keypoint and an all-NaN frame are fine
    kps[5] = np.nan
    for i in range(2, 48, 4):  # the "right" marker absent in a quarter of the frames
        hide_marker(frames[i], kps[i, 3])
        kps[i, 3] = np.nan
    workdir = tmp_path_factory.mktemp("train")
    cpu = time.process_time()
    result = train(frames, kps, BODYPARTS, tiny_config(), workdir, progress=False)
    cpu_seconds = time.process_time() - cpu  # CPU time of this process: robust to shared CPUs
    return result, frames, kps, workdir, cpu_seconds


def test_end_to_end_tiny_network_learns(trained):
    result, frames, kps, workdir, seconds = trained
    assert result.iterations == 500
    assert result.learning_curve.shape == (500, 2)
    assert result.learning_curve[-20:, 1].mean() < 0.5 * result.learning_curve[:20, 1].mean()
    assert result.device == "cpu"
    assert set(result.versions) == {"torch", "torchvision", "numpy", "opencv", "python"}
    assert result.checkpoint_path.is_file()
    model = load_model(result.checkpoint_path, device="cpu")
    assert model.bodyparts == BODYPARTS and model.device == "cpu"
    # the config it was trained with: the one given, its validation interval resolved
    # (automatic patience: the whole schedule, never stopping early)
    assert model.config == tiny_config(validation_every=model.config.validation_every,
                                       patience=500 // model.config.validation_every + 1)
    assert model.config.to_dict() == result.config and model.config.validation_every == 50
    pred = model.predict_frames(frames)
    assert pred.shape == (48, 4, 3) and pred.dtype == np.float32
    m = evaluate(pred, kps)
    # an untrained network is off by ~20 px on these 128x96 frames
    assert m["median_error_px"] < 1.0, m
    assert m["mean_error_px"] < 3.0, m
    assert m["pck"][5.0] > 0.8, m["pck"]
    test_frames, test_kps = make_frames(16, seed=1)
    mt = evaluate(model.predict_frames(test_frames, batch_size=5), test_kps)
    assert mt["median_error_px"] < 1.5, mt
    assert mt["pck"][5.0] > 0.7, mt["pck"]
    assert float(np.median(pred[..., 2])) > 0.6
    # training time is a benchmark figure (BENCHMARKS.md), not asserted: it is 25-60 CPU
    # seconds here depending on the machine
    assert seconds > 0


def test_predict_frames_original_coordinates_and_sizes(trained):
    """Frames of another size and at another input scale map back to original pixels."""
    result, frames, kps, _, _ = trained
    model = load_model(result.checkpoint_path, device="cpu")
    big = [cv2.resize(f, (256, 192), interpolation=cv2.INTER_LINEAR) for f in frames[:6]]
    mixed = big[:3] + frames[:3]
    pred = model.predict_frames(mixed, batch_size=2)
    # the 2x frames are seen at 2x: predictions must be ~2x the small-frame labels
    scaled = (kps[:3] + 0.5) * 2 - 0.5
    err_big = np.nanmean(np.linalg.norm(pred[:3, :, :2] - scaled, axis=2))
    err_small = np.nanmean(np.linalg.norm(pred[3:, :, :2] - kps[:3], axis=2))
    assert err_small < 3.0 and err_big < 12.0
    # a model working at half scale on double-size frames is back at the training scale
    half = load_model(result.checkpoint_path, device="cpu")
    half.config = half.config.replace(input_scale=0.5)
    pred_half = half.predict_frames(big[:3])
    err_half = np.nanmean(np.linalg.norm(pred_half[..., :2] - scaled, axis=2))
    assert err_half < 6.0, err_half


def test_predict_video_streams_all_frames(trained, tmp_path):
    result, _, _, _, _ = trained
    frames, kps = make_frames(30, seed=2)
    paths = []
    for part in range(2):
        path = tmp_path / f"part{part}.avi"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (128, 96))
        assert writer.isOpened()
        for f in frames[part * 15:(part + 1) * 15]:
            writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        writer.release()
        paths.append(path)
    model = load_model(result.checkpoint_path, device="cpu")
    poses, stats = model.predict_video(paths, batch_size=4, progress=False)
    assert poses.shape == (30, 4, 3) and poses.dtype == np.float32
    assert stats["frames"] == 30 and stats["fps"] > 0 and stats["seconds"] > 0
    assert evaluate(poses, kps)["mean_error_px"] < 4.0
    # the video path agrees with the frame path (same decoding, BGR handled on the device)
    decoded = []
    for p in paths:
        cap = cv2.VideoCapture(str(p))
        while True:
            ok, f = cap.read()
            if not ok:
                break
            decoded.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    direct = model.predict_frames(decoded, batch_size=4)
    assert np.allclose(direct, poses, atol=1e-3)
    first, stats = model.predict_video(paths[0], batch_size=8, progress=False, stop=7)
    assert first.shape == (7, 4, 3) and np.allclose(first, poses[:7], atol=1e-3)
    with pytest.raises(VideoError):
        model.predict_video(tmp_path / "missing.mp4", progress=False)


def test_video_analysis_resumes_from_saved_chunks(trained, tmp_path):
    """Output is checkpointed every few frames; after a crash the analysis continues where it
    was and the result equals an uninterrupted run."""
    result = trained[0]
    frames, _ = make_frames(45, seed=11)
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (128, 96))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    model = load_model(result.checkpoint_path, device="cpu")
    plain, _ = model.predict_video(path, batch_size=4, progress=False)
    resume = tmp_path / "resume"
    full, _ = model.predict_video(path, batch_size=4, progress=False, resume_dir=resume,
                                  chunk_frames=10)  # rounded up to 12: whole batches
    assert np.array_equal(full, plain)
    chunks = sorted(resume.glob("chunk_*.npy"))
    assert [c.name for c in chunks] == [f"chunk_{i:010d}.npy" for i in (0, 12, 24)]
    # a crash after two chunks, while the third was being saved: it is gone and half of its
    # temporary file is left (the name the old code wrote, too); a rerun computes frames 24..44
    chunks[2].unlink()
    (resume / "chunk_0000000024.npy.tmp").write_bytes(b"\x93NUMPY half")
    (resume / "chunk_0000000024.tmp.npy").write_bytes(b"\x93NUMPY half")
    kept = chunks[0].stat().st_mtime_ns
    resumed, stats = model.predict_video(path, batch_size=4, progress=False, resume_dir=resume,
                                         chunk_frames=10)
    assert np.array_equal(resumed, plain) and stats["frames"] == 45
    assert chunks[0].stat().st_mtime_ns == kept  # the saved chunks were read, not redone


def test_training_is_deterministic_and_resumes_after_crash(tmp_path):
    frames, kps = make_frames(16, seed=3)
    cfg = tiny_config(iterations=6, checkpoint_every=3, batch_size=4, head_channels=16)
    a = train(frames, kps, BODYPARTS, cfg, tmp_path / "a", progress=False)
    b = train(frames, kps, BODYPARTS, cfg, tmp_path / "b", progress=False)
    assert np.array_equal(a.learning_curve, b.learning_curve)
    wa = torch.load(a.checkpoint_path, weights_only=True)["state_dict"]
    wb = torch.load(b.checkpoint_path, weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert file_sha256(a.checkpoint_path) != ""
    # a different seed gives a different run
    c = train(frames, kps, BODYPARTS, cfg.replace(seed=1), tmp_path / "c", progress=False)
    assert not np.array_equal(a.learning_curve, c.learning_curve)
    # simulate a crash after iteration 3: drop the newer checkpoint and the final model file
    crashed = tmp_path / "b"
    for it, path in list_checkpoints(crashed):
        if it > 3:
            path.unlink()
    (crashed / "model.pt").unlink()
    assert [it for it, _ in list_checkpoints(crashed)] == [3]
    resumed = train(frames, kps, BODYPARTS, cfg, crashed, progress=False)
    assert resumed.iterations == 6
    assert np.array_equal(resumed.learning_curve, a.learning_curve)
    wr = torch.load(resumed.checkpoint_path, weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wr[k]) for k in wa)
    # a finished run returns at once; another config in the same workdir is refused
    again = train(frames, kps, BODYPARTS, cfg, crashed, progress=False)
    assert again.iterations == 6
    with pytest.raises(ValueError, match="different configuration"):
        train(frames, kps, BODYPARTS, cfg.replace(seed=5), crashed, progress=False)


def test_cpu_bf16_autocast_trains_and_predicts(tmp_path):
    frames, kps = make_frames(8, seed=6)
    cfg = tiny_config(iterations=3, head_channels=8, cpu_bf16=True)
    r = train(frames, kps, BODYPARTS, cfg, tmp_path, progress=False)
    assert np.isfinite(r.learning_curve[:, 1]).all()
    model = load_model(r.checkpoint_path, device="cpu")
    pred = model.predict_frames(frames[:2])
    assert pred.dtype == np.float32 and np.isfinite(pred).all()
    assert ((pred[..., 2] >= 0) & (pred[..., 2] <= 1)).all()


def test_cpu_bf16_auto_is_timed_and_stored(tmp_path):
    frames, kps = make_frames(8, seed=6)
    r = train(frames, kps, BODYPARTS, tiny_config(iterations=2, head_channels=8,
                                                   cpu_bf16="auto"), tmp_path, progress=False)
    choice = r.auto_report["chosen"]["cpu_bf16"]
    assert r.config["cpu_bf16"] is choice["value"]  # a bool, stored with the model
    if cpu_supports_bf16():
        fp32, bf16 = choice["seconds_float32"], choice["seconds_bfloat16"]
        assert fp32 > 0 and bf16 > 0
        assert choice["value"] == (fp32 >= BF16_MIN_SPEEDUP * bf16)
    else:
        assert choice["value"] is False and "no bfloat16" in choice["reason"]
    assert load_model(r.checkpoint_path, device="cpu").config.cpu_bf16 is choice["value"]
    # off a CPU nothing is timed: CUDA has its own mixed_precision
    cfg, gpu = choose_cpu_bf16(tiny_config(cpu_bf16="auto", device="cuda"), 3)
    assert cfg.cpu_bf16 is False and "seconds_float32" not in gpu


def test_output_layers_stay_float32_under_bf16_autocast():
    net = PoseNet(3, backbone_stride=8, output_stride=4, head_channels=8).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        heat, off = net(torch.zeros(1, 3, 32, 32))
    assert heat.dtype == torch.float32 and off.dtype == torch.float32


def test_time_budget_stops_training(tmp_path):
    frames, kps = make_frames(8, seed=4)
    cfg = tiny_config(iterations=None, max_seconds=2.0, head_channels=8)
    r = train(frames, kps, BODYPARTS, cfg, tmp_path, progress=False)
    assert 1 <= r.iterations < 1000
    assert 2.0 <= r.train_seconds < 30.0


def test_train_rejects_bad_input(tmp_path):
    frames, kps = make_frames(4, seed=5)
    cfg = tiny_config(iterations=1)
    with pytest.raises(ValueError, match="body parts"):
        train(frames, kps[:, :3], BODYPARTS, cfg, tmp_path, progress=False)
    with pytest.raises(ValueError, match="frames"):
        train(frames[:3], kps, BODYPARTS, cfg, tmp_path, progress=False)
    bad = kps.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        train(frames, bad, BODYPARTS, cfg, tmp_path, progress=False)
    with pytest.raises(ValueError, match="flip_pairs"):
        train(frames, kps, BODYPARTS, cfg.replace(flip_pairs=[["left", "rgt"]]), tmp_path,
              progress=False)
    with pytest.raises(ValueError, match="not an element-pose model file"):
        p = tmp_path / "x.pt"
        torch.save({"a": 1}, p)
        load_model(p)


def test_early_stopping_rule():
    stop = EarlyStopping(patience=2)
    assert stop.update(100, 10.0) and stop.iteration == 100
    assert stop.update(200, 9.95) and stop.stale == 1  # the best, but within 1 %: stale
    assert not stop.should_stop
    assert stop.update(300, 8.0) and stop.stale == 0
    assert not stop.update(400, 8.5) and not stop.update(500, 9.0)
    assert stop.should_stop and (stop.error, stop.iteration) == (8.0, 300)
    # a later snapshot within 5 % of the lowest error is kept instead (lower learning rate)
    assert stop.update(600, 8.3) and (stop.error, stop.iteration) == (8.0, 600)
    assert not stop.update(700, 8.5) and stop.iteration == 600
    # not before the learning rate has come down: a plateau at a high rate is its noise
    late = EarlyStopping(patience=2, not_before=700)
    for it, error in ((100, 10.0), (200, 10.0), (300, 10.0), (400, 10.0)):
        late.update(it, error)
    assert late.stale == 3 and not late.should_stop
    late.update(700, 10.0)
    assert late.should_stop


def test_validation_curve_and_best_snapshot(tmp_path):
    """Held-back training frames are scored during training; the model file holds the best
    snapshot, whose validation error it reproduces."""
    frames, kps = make_frames(24, seed=7)
    cfg = tiny_config(iterations=120, validation_every=30, head_channels=16,
                      validation_fraction=0.2)
    r = train(frames, kps, BODYPARTS, cfg, tmp_path, progress=False)
    assert r.validation_curve.shape == (4, 2)
    assert r.validation_curve[:, 0].tolist() == [30, 60, 90, 120]
    # the snapshot kept: the latest within KEEP_TOLERANCE of the lowest validation error
    errors = r.validation_curve[:, 1]
    best = int(np.flatnonzero(errors <= errors.min() * (1 + KEEP_TOLERANCE))[-1])
    assert r.best_iteration == r.validation_curve[best, 0]
    val = r.auto_report["validation_frames"]
    assert len(val) == 5
    model = load_model(r.checkpoint_path, device="cpu")
    cap = r.auto_report["validation_cap_px"]
    assert cap == pytest.approx(validation_cap(kps), abs=0.01)
    error = capped_mean_error(model.predict_frames([frames[i] for i in val]), kps[val], cap)
    assert error == pytest.approx(r.validation_curve[best, 1], rel=1e-3)
    # only patience was left automatic: the whole schedule (120 // 30 + 1 validations)
    assert r.config == cfg.replace(patience=5).to_dict()


def test_fine_tune_from_a_model_with_other_body_parts(tmp_path, trained):
    """A model trained on four parts starts a training on three of them plus a new one: the
    shared parts keep their output weights, the new one starts fresh."""
    result = trained[0]
    parent = torch.load(result.checkpoint_path, weights_only=True)["state_dict"]
    frames, kps = make_frames(12, seed=8)
    parts = ["tail", "head", "nose"]
    sub = kps[:, [1, 0, 2]]
    cfg = tiny_config(iterations=1, optimizer={"lr": 1e-12}, validation_fraction=0.0,
                      schedule={"warmup_iterations": 0})
    r = train(frames, sub, parts, cfg, tmp_path / "ft", progress=False,
              init_checkpoint=result.checkpoint_path)
    assert r.auto_report["initial_model"]["matched_bodyparts"] == ["tail", "head"]
    child = torch.load(r.checkpoint_path, weights_only=True)["state_dict"]
    assert torch.allclose(child["heatmap.weight"][0], parent["heatmap.weight"][1], atol=1e-6)
    assert torch.allclose(child["heatmap.weight"][1], parent["heatmap.weight"][0], atol=1e-6)
    assert torch.allclose(child["locref.weight"][2:4], parent["locref.weight"][0:2], atol=1e-6)
    assert not torch.allclose(child["heatmap.weight"][2], parent["heatmap.weight"][2], atol=1e-4)
    # the fine-tuned model already finds the shared parts on new frames
    pred = load_model(r.checkpoint_path, device="cpu").predict_frames(frames)
    assert evaluate(pred[:, :2], sub[:, :2])["median_error_px"] < 3.0
    # another architecture is refused before training, naming the key
    with pytest.raises(ValueError, match="head_channels is 8 here but 32"):
        train(frames, sub, parts, cfg.replace(head_channels=8), tmp_path / "ft2",
              progress=False, init_checkpoint=result.checkpoint_path)


def test_absent_parts_get_low_confidence(trained):
    """Frames where a marker is not drawn (not labeled): the model says so with a low
    likelihood, and the error above the cut-off is below the plain error."""
    result = trained[0]
    model = load_model(result.checkpoint_path, device="cpu")
    frames, kps = make_frames(16, seed=9)
    for f, p in zip(frames, kps[:, 3], strict=True):
        hide_marker(f, p)
    pred = model.predict_frames(frames)
    truth = kps.copy()
    truth[:, 3] = np.nan
    m = evaluate(pred, truth, pcutoff=model.config.pcutoff)
    assert m["absent_below_pcutoff"] >= 0.75, pred[:, 3, 2]
    assert np.median(pred[:, :3, 2]) > model.config.pcutoff


# ------------------------------------------------------------------------- real data


def _read_openfield():
    import csv

    csv_path = OPENFIELD / "labeled-data" / "m4s1" / "CollectedData_Pranav.csv"
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    names = [r[0] for r in rows[3:]]
    kp = np.array([[float(v) if v else np.nan for v in r[1:]] for r in rows[3:]])
    bodyparts = list(dict.fromkeys(rows[1][1:]))
    return names, bodyparts, kp.reshape(len(names), len(bodyparts), 2)


@pytest.mark.shared_data
@pytest.mark.skipif(not OPENFIELD.is_dir(), reason="../shared/data/openfield not present")
def test_openfield_short_training_and_video(tmp_path):
    names, bodyparts, kp = _read_openfield()
    split = json.loads((OPENFIELD / "split.json").read_text())
    index = {n: i for i, n in enumerate(names)}
    train_idx = [index[n] for n in split["train"]][:16]
    images = [cv2.cvtColor(cv2.imread(str(OPENFIELD / names[i])), cv2.COLOR_BGR2RGB)
              for i in train_idx]
    cfg = EngineConfig.from_dict({"iterations": 4, "batch_size": 4, "num_threads": 2})
    result = train(images, kp[train_idx], bodyparts, cfg, tmp_path, progress=False)
    model = load_model(result.checkpoint_path, device="cpu")
    poses, stats = model.predict_video(OPENFIELD / "videos" / "m3v1mp4.mp4", batch_size=8,
                                       progress=False, stop=24)
    assert poses.shape == (24, 4, 3) and stats["frames"] == 24
    assert np.all((poses[..., 0] > -16) & (poses[..., 0] < 656))
    assert np.all((poses[..., 2] >= 0) & (poses[..., 2] <= 1))


def test_model_file_carries_part_relations(tmp_path):
    frames, kps = make_frames(24, seed=9, turn=False)
    r = train(frames, kps, BODYPARTS, tiny_config(iterations=2, head_channels=8,
                                                   validation_fraction=0.0), tmp_path,
              progress=False)
    model = load_model(r.checkpoint_path, device="cpu")
    rel = model.relations.cpu().numpy()
    # an animal that never turns: every coordinate difference is fixed (6 pairs x 2 axes)
    assert rel.shape == (12, 6) and (rel[:, 5] == 1).all()
    assert r.auto_report["part_relations"] == 12
    assert r.auto_report["part_relation_bounds"] == 0
    d = kps[:, 1, 0] - kps[:, 0, 0]  # tail minus nose, x: -32 px in every frame
    row = rel[(rel[:, 0] == 0) & (rel[:, 1] == 1) & (rel[:, 2] == 0)][0]
    assert row[3] < d.min() <= d.max() < row[4]
    # switched off: none learned or stored
    r = train(frames, kps, BODYPARTS, tiny_config(iterations=2, head_channels=8,
                                                   validation_fraction=0.0,
                                                   part_relations=False), tmp_path / "off",
              progress=False)
    assert load_model(r.checkpoint_path, device="cpu").relations is None
    assert "part_relations" not in r.auto_report
    # a freely turning animal has none
    frames, kps = make_frames(24, seed=9)
    r = train(frames, kps, BODYPARTS, tiny_config(iterations=2, head_channels=8,
                                                   validation_fraction=0.0), tmp_path / "turn",
              progress=False)
    assert load_model(r.checkpoint_path, device="cpu").relations is None
    assert r.auto_report["part_relations"] == 0


def test_model_file_carries_part_separation(tmp_path):
    frames, kps = make_frames(12, seed=8)
    r = train(frames, kps, BODYPARTS, tiny_config(iterations=2, head_channels=8,
                                                   validation_fraction=0.0), tmp_path,
              progress=False)
    model = load_model(r.checkpoint_path, device="cpu")
    radii = model.separation.cpu().numpy()
    d = np.linalg.norm(kps[:, :, None] - kps[:, None], axis=-1)
    assert radii.shape == (4, 4) and (np.diag(radii) == 0).all()
    # half the closest labeled distance of each pair (left and right markers are 14 px apart)
    assert radii[2, 3] == pytest.approx(0.5 * np.percentile(d[:, 2, 3], 1.0), rel=1e-4)
    on = model.predict_frames(frames)
    model.config = model.config.replace(separate_parts=False)
    off = model.predict_frames(frames)
    raw = np.linalg.norm(off[:, :, None, :2] - off[:, None, :, :2], axis=-1)
    conflict = ((raw < radii) & (radii > 0)).any(axis=(1, 2))
    changed = ~np.isclose(on, off).all(axis=(1, 2))
    assert not (changed & ~conflict).any()  # only a frame with a pair too close may change
