"""Training loop: augmented crops in, a self-contained model file out."""

from __future__ import annotations

import contextlib
import logging
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision
from tqdm.auto import tqdm

from element_pose.engine.checkpoint import (
    list_checkpoints,
    save_checkpoint,
    save_model_file,
)
from element_pose.engine.config import EngineConfig
from element_pose.engine.data import TrainingSet, validate_training_data
from element_pose.engine.network import build_network
from element_pose.engine.targets import make_targets, pose_loss

logger = logging.getLogger(__name__)

MODEL_FILENAME = "model.pt"


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    checkpoint_path : Path
        Final, self-contained model file (weights + config + body parts + format version),
        readable by :func:`element_pose.engine.predict.load_model`.
    learning_curve : np.ndarray
        (n, 2) float64: iteration, training loss (one row per iteration).
    iterations : int
        Iterations done in total (including those before a resume).
    train_seconds : float
        Wall time spent training (summed over resumed runs).
    device : str
        Torch device trained on.
    versions : dict
        torch, torchvision, numpy, opencv and python versions.
    """

    checkpoint_path: Path
    learning_curve: np.ndarray
    iterations: int
    train_seconds: float
    device: str
    versions: dict[str, str] = field(default_factory=dict)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that determine a model's numbers."""
    return {
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "numpy": str(np.__version__),
        "opencv": str(cv2.__version__),
        "python": str(platform.python_version()),
    }


def planned_iterations(config: EngineConfig, n_frames: int) -> int | None:
    """Iterations a config asks for (None: only the wall-clock budget bounds the run)."""
    if config.iterations is not None:
        return config.iterations
    if config.epochs is not None:
        return int(math.ceil(config.epochs * n_frames / config.batch_size))
    return None


def learning_rate(config: EngineConfig, iteration: int, progress: float) -> float:
    """Learning rate at an iteration, given training progress in [0, 1]."""
    s, base = config.schedule, config.optimizer.lr
    lo = s.min_lr_fraction
    progress = min(max(progress, 0.0), 1.0)
    if s.name == "onecycle":
        ramp = 0.3
        if progress < ramp:
            return base * (lo + (1 - lo) * progress / ramp)
        p = (progress - ramp) / (1 - ramp)
        return base * (lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * p)))
    warm = min(1.0, (iteration + 1) / s.warmup_iterations) if s.warmup_iterations else 1.0
    if s.name == "constant":
        return base * warm
    return base * warm * (lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * progress)))


@contextlib.contextmanager
def _torch_threads(n: int | None):
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train(images: Sequence[np.ndarray], keypoints: np.ndarray, bodyparts: Sequence[str],
          config: EngineConfig, workdir: str | Path, progress: bool = True) -> TrainResult:
    """Train a pose network on labeled frames.

    Parameters
    ----------
    images : sequence of np.ndarray
        RGB uint8 frames (H, W, 3); sizes may differ.
    keypoints : np.ndarray
        (N, K, 2) x, y in pixels of each frame; NaN = not visible.
    bodyparts : sequence of str
        K body-part names, in keypoint order.
    config : EngineConfig
        Training configuration.
    workdir : str or Path
        Where checkpoints and the final model file go. If it holds checkpoints of the same
        configuration, training resumes from the newest one.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        Malformed input, or a work directory holding checkpoints of another configuration.
    """
    if not isinstance(config, EngineConfig):
        raise TypeError(f"config must be an EngineConfig (use EngineConfig.from_dict), "
                        f"got {type(config).__name__}.")
    imgs, kp = validate_training_data(images, keypoints, bodyparts)
    bodyparts = list(bodyparts)
    if config.flip_pairs:
        unknown = [n for pair in config.flip_pairs for n in pair if n not in bodyparts]
        if unknown:
            raise ValueError(f"flip_pairs names {unknown}, not among the body parts {bodyparts}.")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    device = torch.device(config.resolved_device())
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Config asks for device {config.device!r} but CUDA is not available; "
                         "use device='cpu' or 'auto'.")
    with _torch_threads(config.num_threads):
        return _train(imgs, kp, bodyparts, config, workdir, device, progress)


def _train(imgs: list[np.ndarray], kp: np.ndarray, bodyparts: list[str], config: EngineConfig,
           workdir: Path, device: torch.device, progress: bool) -> TrainResult:
    cfg_dict = config.to_dict()
    cfg_hash = config.sha256()
    dataset = TrainingSet(imgs, kp, bodyparts, config)
    total = planned_iterations(config, len(dataset))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_network(config, len(bodyparts))
    use_cl = config.channels_last
    model = model.to(device)
    if use_cl:
        model = model.to(memory_format=torch.channels_last)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    opt = config.optimizer
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": opt.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=opt.lr, betas=opt.betas)
    if device.type == "cuda":
        amp = config.mixed_precision
        amp_dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    else:
        amp, amp_dtype = config.cpu_bf16 and device.type == "cpu", torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)

    start, elapsed_before, curve = 0, 0.0, []
    found = list_checkpoints(workdir)
    if found:
        it0, path = found[-1]
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("config_sha256") != cfg_hash or state.get("bodyparts") != bodyparts:
            raise ValueError(
                f"{workdir} holds checkpoints of a different configuration or body parts "
                f"({path.name}); use a fresh work directory, or delete {path.parent} to start "
                "over.")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        start = int(state["iteration"])
        elapsed_before = float(state["train_seconds"])
        curve = [tuple(row) for row in state["learning_curve"]]
        logger.info("Resuming training from %s (iteration %d)", path, start)

    def make_state(iteration: int, seconds: float) -> dict:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "iteration": iteration, "train_seconds": seconds,
                 "learning_curve": [list(r) for r in curve], "config": cfg_dict,
                 "config_sha256": cfg_hash, "bodyparts": bodyparts}
        if scaler.is_enabled():
            state["scaler"] = scaler.state_dict()
        return state

    stop = total if total is not None else 1 << 40
    budget = config.max_seconds
    bar = tqdm(total=total, initial=min(start, stop), desc="train", unit="it",
               disable=not progress, dynamic_ncols=True)
    model.train()
    t0 = time.perf_counter()
    iteration = start
    last_saved = start
    done_by_time = budget is not None and elapsed_before >= budget
    if start < stop and not done_by_time:
        for iteration, crops, kps in dataset.stream(start, stop):
            elapsed = elapsed_before + time.perf_counter() - t0
            if budget is not None and elapsed >= budget:
                break
            frac = 0.0
            if total:
                frac = iteration / total
            if budget is not None:
                frac = max(frac, elapsed / budget)
            lr = learning_rate(config, iteration, frac)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = torch.from_numpy(crops).to(device, non_blocking=True).permute(0, 3, 1, 2)
            x = model.normalize(x)
            x = x.contiguous(memory_format=torch.channels_last if use_cl else
                             torch.contiguous_format)
            kpt = torch.from_numpy(kps).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                heat, off = model(x)
            targets = make_targets(kpt, tuple(heat.shape[-2:]), config.output_stride,
                                   config.sigma, config.locref_radius)
            loss, heat_loss, off_loss = pose_loss(heat, off, targets, config.locref_weight)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"Training loss became {value} at iteration {iteration}; lower "
                    "optimizer.lr or enable grad_clip.")
            curve.append((iteration, value))
            bar.update(1)
            if iteration % 10 == 0:
                bar.set_postfix(loss=f"{value:.4f}", heat=f"{float(heat_loss):.4f}",
                                off=f"{float(off_loss):.4f}", lr=f"{lr:.2e}")
            done = iteration + 1
            if done % config.checkpoint_every == 0:
                save_checkpoint(workdir, done,
                                make_state(done, elapsed_before + time.perf_counter() - t0),
                                config.keep_checkpoints)
                last_saved = done
            iteration = done
    bar.close()
    seconds = elapsed_before + time.perf_counter() - t0
    if iteration != last_saved:
        save_checkpoint(workdir, iteration, make_state(iteration, seconds),
                        config.keep_checkpoints)
    model_path = save_model_file(
        workdir / MODEL_FILENAME, model.state_dict(), cfg_dict, bodyparts,
        extra={"iterations": iteration, "train_seconds": seconds, "device": str(device),
               "versions": library_versions()})
    logger.info("Trained %d iterations in %.1f s on %s -> %s", iteration, seconds, device,
                model_path)
    return TrainResult(
        checkpoint_path=model_path,
        learning_curve=np.asarray(curve, dtype=np.float64).reshape(-1, 2),
        iterations=int(iteration),
        train_seconds=float(seconds),
        device=str(device),
        versions=library_versions(),
    )
