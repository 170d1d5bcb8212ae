"""Benchmark the pose engine on a DeepLabCut-layout project.

Trains on the project's split.json train frames from random initialisation for a wall-clock
budget, evaluates on its test frames, times video analysis on the project's video, and prints
one JSON object as its last line.

Usage::

    python benchmarks/engine.py --dataset ../shared/data/openfield-Pranav-2018-10-30 --minutes 20
    python benchmarks/engine.py --dataset DIR --backbone resnet50 --input-scale 1 --crop-size 256
"""

from __future__ import annotations

import os

# Before torch loads: OpenMP busy-waiting slows torch 3-7x on a CPU shared with other jobs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from element_pose.engine.config import EngineConfig  # noqa: E402
from element_pose.engine.metrics import evaluate  # noqa: E402
from element_pose.engine.network import count_parameters  # noqa: E402
from element_pose.engine.predict import iter_video_batches, load_model  # noqa: E402
from element_pose.engine.train import train  # noqa: E402

VIDEO_EXT = (".mp4", ".avi", ".mov", ".mkv")


def read_dlc_labels(project: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Frame names, body parts and (N, K, 2) keypoints from a DLC CollectedData CSV."""
    files = sorted(project.glob("labeled-data/*/CollectedData_*.csv"))
    if not files:
        files = sorted(project.glob("CollectedData*.csv"))
    if not files:
        raise SystemExit(f"No CollectedData*.csv under {project}")
    names: list[str] = []
    rows: list[list[float]] = []
    bodyparts: list[str] = []
    for file in files:
        with open(file, newline="") as f:
            table = list(csv.reader(f))
        keys = ("scorer", "individuals", "bodyparts", "coords")
        n_header = next(i for i, row in enumerate(table) if row[0] not in keys)
        header = {row[0]: row for row in table[:n_header]}
        coords = header["coords"]
        first = next(i for i, v in enumerate(coords) if v in ("x", "y"))
        bp_row = header["bodyparts"][first:]
        parts = list(dict.fromkeys(bp_row))
        if bodyparts and parts != bodyparts:
            raise SystemExit(f"{file}: body parts differ from the other label files")
        bodyparts = parts
        for row in table[n_header:]:
            if not row or not any(row[first:]):
                continue
            name = "/".join(v for v in row[:first] if v)
            values = [float(v) if v.strip() else np.nan for v in row[first:]]
            names.append(name)
            rows.append(values)
    kp = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(bodyparts), 2)
    return names, bodyparts, kp


def read_image(project: Path, name: str) -> np.ndarray:
    image = cv2.imread(str(project / name), cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"Cannot read {project / name}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def forward_only_fps(model, video: Path, batch_size: int, frames: int) -> float:
    """Frames/s of the network alone on already-decoded, already-prepared batches."""
    batches = []
    for batch in iter_video_batches([video], batch_size, stop=frames):
        x = torch.from_numpy(batch).to(model.device).permute(0, 3, 1, 2).flip(1).float()
        h, w = x.shape[-2:]
        s = model.config.input_scale
        size = (int(round(h * s)), int(round(w * s)))
        if size != (h, w):
            x = torch.nn.functional.interpolate(x, size=size, mode="area" if s < 1 else "bilinear")
        x = model.network.normalize(x)
        if model.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        batches.append(x)
    amp = (model.config.cpu_bf16 is True if model.device == "cpu"
           else model.config.mixed_precision)
    with torch.inference_mode(), torch.autocast(torch.device(model.device).type,
                                                dtype=torch.bfloat16, enabled=amp):
        model.network(batches[0])  # warm-up
        t = time.perf_counter()
        n = 0
        for x in batches:
            model.network(x)
            n += x.shape[0]
        return n / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, type=Path, help="DLC project folder")
    ap.add_argument("--minutes", type=float, default=20.0, help="training wall-clock budget")
    ap.add_argument("--backbone", default=None, help="backbone (default: config default)")
    ap.add_argument("--iterations", type=int, default=None,
                    help="stop after this many iterations (default: only the time budget)")
    ap.add_argument("--input-scale", type=float, default=None)
    ap.add_argument("--crop-size", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--config", default=None, help="JSON dict of further config overrides")
    ap.add_argument("--video-frames", type=int, default=1000,
                    help="frames of the project video to analyse (0: skip video)")
    ap.add_argument("--video-batch", type=int, default=8)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    project = args.dataset.resolve()
    names, bodyparts, kp = read_dlc_labels(project)
    split = json.loads((project / "split.json").read_text())
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in split["train"] + split["test"] if n not in index]
    if missing:
        raise SystemExit(f"split.json lists frames without labels: {missing[:3]}")
    train_idx = [index[n] for n in split["train"]]
    test_idx = [index[n] for n in split["test"]]
    images = {i: read_image(project, names[i]) for i in train_idx + test_idx}

    overrides = {"iterations": args.iterations, "max_seconds": args.minutes * 60.0}
    if args.backbone:
        overrides["backbone"] = args.backbone
    if args.input_scale is not None:
        overrides["input_scale"] = args.input_scale
    if args.crop_size is not None:
        overrides["crop_size"] = args.crop_size
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    if args.config:
        overrides.update(json.loads(args.config))
    config = EngineConfig().replace(**overrides)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"bench_{project.name[:20]}_"))
    print(f"config {config.to_json()}", flush=True)
    print(f"workdir {workdir}", flush=True)

    result = train([images[i] for i in train_idx], kp[train_idx], bodyparts, config, workdir,
                   progress=not args.no_progress)
    model = load_model(result.checkpoint_path)
    pred_train = model.predict_frames([images[i] for i in train_idx])
    pred_test = model.predict_frames([images[i] for i in test_idx])
    m_train = evaluate(pred_train, kp[train_idx], pcutoff=config.pcutoff)
    m_test = evaluate(pred_test, kp[test_idx], pcutoff=config.pcutoff)

    video_fps = forward_fps = None
    video_frames = 0
    video_name = None
    if args.video_frames:
        videos = sorted(p for p in (project / "videos").iterdir()
                        if p.suffix.lower() in VIDEO_EXT)
        if videos:
            video = videos[0]
            video_name = video.name
            model.predict_video(video, batch_size=args.video_batch, progress=False, stop=16)
            poses, stats = model.predict_video(video, batch_size=args.video_batch,
                                               progress=not args.no_progress,
                                               stop=args.video_frames)
            video_fps, video_frames = stats["fps"], stats["frames"]
            forward_fps = forward_only_fps(model, video, args.video_batch,
                                           min(args.video_frames, 96))
    summary = {
        "dataset": project.name,
        "backbone": config.backbone,
        "device": result.device,
        "cpu_threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "params_m": round(count_parameters(model.network) / 1e6, 3),
        "input_scale": config.input_scale,
        "crop_size": config.crop_size,
        "cpu_bf16": config.cpu_bf16,
        "batch_size": config.batch_size,
        "train_frames": len(train_idx),
        "test_frames": len(test_idx),
        "train_seconds": round(result.train_seconds, 1),
        "iterations": result.iterations,
        "iterations_per_s": round(result.iterations / result.train_seconds, 3),
        "final_loss": round(float(result.learning_curve[-20:, 1].mean()), 5)
        if len(result.learning_curve) else None,
        "train_error_px": round(m_train["mean_error_px"], 3),
        "test_error_px": round(m_test["mean_error_px"], 3),
        "test_median_error_px": round(m_test["median_error_px"], 3),
        "test_rmse_px": round(m_test["rmse_px"], 3),
        "test_error_pcutoff_px": round(m_test["mean_error_pcutoff_px"], 3),
        "pck5": round(m_test["pck"][5.0], 4),
        "pck10": round(m_test["pck"][10.0], 4),
        "test_per_bodypart_px": {b: round(float(e), 2) for b, e in
                                 zip(bodyparts, m_test["per_bodypart_error_px"], strict=True)},
        "video": video_name,
        "video_frames": video_frames,
        "video_fps": round(video_fps, 2) if video_fps else None,
        "forward_only_fps": round(forward_fps, 2) if forward_fps else None,
        "video_vs_forward": round(video_fps / forward_fps, 3) if forward_fps else None,
        "config_sha256": config.sha256(),
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
