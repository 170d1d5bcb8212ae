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

from element_pose.engine.autoconfig import (
    auto_sigma,
    available_memory,
    cheaper_for_budget,
    check_feasible,
    dataset_stats,
    iterations_cut_by_time,
    resolve_config,
    resolve_flip,
)
from element_pose.engine.checkpoint import (
    atomic_save,
    list_checkpoints,
    load_model_file,
    save_checkpoint,
    save_model_file,
)
from element_pose.engine.config import ConfigError, EngineConfig
from element_pose.engine.data import TrainingSet, validate_training_data
from element_pose.engine.network import build_network, cpu_supports_bf16, load_matching_weights
from element_pose.engine.relations import learn_relations
from element_pose.engine.separation import separation_radii
from element_pose.engine.targets import make_targets, merge_instances, pose_loss

logger = logging.getLogger(__name__)

MODEL_FILENAME = "model.pt"
BEST_FILENAME = "best.pt"


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
    validation_curve : np.ndarray
        (n, 2) float64: iteration, mean error in pixels on the held-back training frames,
        each keypoint's error capped at a quarter of the animal's size
        (:func:`~element_pose.engine.metrics.capped_mean_error`; the cap is
        ``auto_report["validation_cap_px"]``); empty without validation.
    best_iteration : int
        Iteration of the snapshot kept (the last one without validation).
    config : dict
        The configuration actually used, every ``"auto"`` value resolved.
    auto_report : dict
        What the data said (``stats``) and why each automatic value was chosen (``chosen``),
        plus the held-back ``validation_frames`` (indices into the training frames).
    """

    checkpoint_path: Path
    learning_curve: np.ndarray
    iterations: int
    train_seconds: float
    device: str
    versions: dict[str, str] = field(default_factory=dict)
    validation_curve: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    best_iteration: int = 0
    config: dict = field(default_factory=dict)
    auto_report: dict = field(default_factory=dict)


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
    if config.iterations == "auto":
        raise ValueError("iterations is 'auto': resolve the config first (autoconfig).")
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


def _to_device_with_optimizer(model: torch.nn.Module, config: EngineConfig,
                              device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The network on ``device`` (channels-last if configured) and its AdamW optimizer."""
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    opt = config.optimizer
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": opt.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=opt.lr, betas=opt.betas)
    return model, optimizer


def _amp_dtype(config: EngineConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for training on ``device``, or None for float32."""
    if device.type == "cuda":
        if not config.mixed_precision:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if config.cpu_bf16 is True and device.type == "cpu" else None


def _step(model, optimizer, scaler, crops: np.ndarray, kps: np.ndarray, config: EngineConfig,
          device: torch.device, amp_dtype: torch.dtype | None, instances: int = 1):
    """One optimisation step on a batch of uint8 crops; returns the three loss terms."""
    x = torch.from_numpy(crops).to(device, non_blocking=True).permute(0, 3, 1, 2)
    x = model.normalize(x)
    x = x.contiguous(memory_format=torch.channels_last if config.channels_last else
                     torch.contiguous_format)
    kpt = torch.from_numpy(kps).to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                        enabled=amp_dtype is not None):
        heat, off = model(x)
    targets = merge_instances(
        make_targets(kpt, tuple(heat.shape[-2:]), config.output_stride, config.sigma,
                     config.locref_radius), instances)
    loss, heat_loss, off_loss = pose_loss(heat, off, targets, config.locref_weight,
                                          config.hard_keypoint_weight)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if config.grad_clip is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss, heat_loss, off_loss


def measure_iteration_seconds(config: EngineConfig, n_keypoints: int, repeats: int = 5) -> float:
    """Seconds one training iteration of ``config`` takes on its device (network only).

    Times ``repeats`` optimisation steps one by one (after two warm-ups, in which oneDNN and
    cuDNN pick their kernels) of a fresh network on random crops of the configured size and
    batch, and returns the median: one step slowed by another process on a shared machine
    would otherwise shorten the whole training (a 3-step mean read 0.67 s where mirror-mouse
    then trained at 0.49 s per iteration). The global random state is left untouched.
    """
    device = torch.device(config.resolved_device())
    crop, batch = int(config.crop_size), int(config.batch_size)
    if config.sigma == "auto":  # as training will resolve it (the timing hardly depends on it)
        config = config.replace(sigma=auto_sigma(int(config.output_stride)))
    # fork_rng restores the CPU generator the random initialisation draws from; pretrained
    # weights are not loaded (the timing does not depend on them)
    with torch.random.fork_rng(devices=[]), _torch_threads(config.num_threads):
        net = build_network(config.replace(pretrained="none"), n_keypoints)
        model, optimizer = _to_device_with_optimizer(net, config, device)
        model.train()
        amp_dtype = _amp_dtype(config, device)
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        rng = np.random.default_rng(0)
        crops = rng.integers(0, 255, (batch, crop, crop, 3), dtype=np.uint8)
        kps = rng.uniform(0, crop - 1, (batch, n_keypoints, 2)).astype(np.float32)
        times = []
        for i in range(repeats + 2):
            t0 = time.perf_counter()
            _step(model, optimizer, scaler, crops, kps, config, device, amp_dtype)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return float(np.median(times))


#: ``cpu_bf16="auto"`` trains in bfloat16 when a step is at least this many times faster
#: than in float32 (2-core AVX-512 machine with AVX512-BF16: 1.7-2.9x for ResNet-18 at
#: 128-208 px; where bf16 is emulated it is slower, and float32 stays).
BF16_MIN_SPEEDUP = 1.3


def choose_cpu_bf16(config: EngineConfig, n_keypoints: int) -> tuple[EngineConfig, dict]:
    """Resolve ``cpu_bf16="auto"`` by timing a float32 and a bfloat16 step on this CPU.

    Parameters
    ----------
    config : EngineConfig
        With crop size and output stride resolved (the timing uses them).
    n_keypoints : int
        Output channels of the network.

    Returns
    -------
    config : EngineConfig
        ``cpu_bf16`` True or False.
    choice : dict
        ``{"value", "reason"}`` and, when timed, the seconds per step of each precision.
    """
    if config.cpu_bf16 != "auto":
        return config, {"value": config.cpu_bf16, "reason": "set in the config"}
    if config.resolved_device() != "cpu":
        return config.replace(cpu_bf16=False), {
            "value": False, "reason": "not a CPU (mixed_precision applies on CUDA)"}
    if not cpu_supports_bf16():
        return config.replace(cpu_bf16=False), {
            "value": False, "reason": "this CPU has no bfloat16 support in oneDNN"}
    fp32 = measure_iteration_seconds(config.replace(cpu_bf16=False), n_keypoints)
    bf16 = measure_iteration_seconds(config.replace(cpu_bf16=True), n_keypoints)
    use = fp32 >= BF16_MIN_SPEEDUP * bf16
    return config.replace(cpu_bf16=bool(use)), {
        "value": bool(use), "seconds_float32": float(fp32), "seconds_bfloat16": float(bf16),
        "reason": (f"a bfloat16 step took {bf16:.3f} s, a float32 step {fp32:.3f} s: "
                   + ("bfloat16" if use else "float32")
                   + f" (bfloat16 when >= {BF16_MIN_SPEEDUP}x faster)")}


#: A ``patience`` the user sets acts only from this fraction of the planned iterations on,
#: when the cosine schedule has brought the learning rate down to a fifth of its peak: before
#: that a plateau of the validation error says little (openfield's was flat from iteration
#: 750 to 2900 while the test error fell from 28 to 1.66 px; BENCHMARKS.md).
EARLY_STOP_FROM = 0.7


#: A later snapshot is kept over an earlier one unless its validation error is more than this
#: fraction above the lowest: on ten or so held-back frames smaller differences are noise,
#: and of two equally good snapshots the later has the lower learning rate (openfield:
#: iterations 750 and 2900 within 4 % on validation, 28 px and 1.66 px on the test frames).
KEEP_TOLERANCE = 0.05


@dataclass
class EarlyStopping:
    """Which snapshot to keep, and whether training should stop.

    ``error`` is the lowest validation error so far; the snapshot kept (``iteration``) is the
    latest within ``keep_tolerance`` (relative) of it. Only an error more than
    ``min_improvement`` below the reference resets the count of stale validations; after
    ``patience`` stale validations, training stops, but not before iteration ``not_before``.
    """

    patience: int
    not_before: int = 0
    keep_tolerance: float = KEEP_TOLERANCE
    min_improvement: float = 0.01
    error: float = math.inf
    iteration: int = 0
    stale: int = 0
    reference: float = math.inf
    last: int = 0  # iteration of the latest validation

    def update(self, iteration: int, error: float) -> bool:
        """Record a validation; True when its snapshot is now the one kept."""
        if error < self.reference * (1 - self.min_improvement):
            self.reference, self.stale = error, 0
        else:
            self.stale += 1
        self.last = iteration
        self.error = min(self.error, error)
        if error <= self.error * (1 + self.keep_tolerance):
            self.iteration = iteration
            return True
        return False

    @property
    def should_stop(self) -> bool:
        """No improvement for ``patience`` validations, at ``not_before`` or later."""
        return self.stale >= self.patience and self.last >= self.not_before

    def state(self) -> dict:
        """Plain values for a checkpoint."""
        return {"error": self.error, "iteration": self.iteration, "stale": self.stale,
                "reference": self.reference, "last": self.last}


def validation_split(n: int, fraction: float, seed: int) -> np.ndarray:
    """Indices of the training frames held back for validation (sorted; may be empty).

    At least 2 frames and only with >= 10 training frames; chosen by the seed.
    """
    if fraction <= 0 or n < 10:
        return np.zeros(0, dtype=np.int64)
    k = max(2, int(round(fraction * n)))
    return np.sort(np.random.default_rng([seed, 104729]).permutation(n)[:k])


def prepare_config(images: Sequence[np.ndarray], keypoints: np.ndarray, config: EngineConfig,
                   init_config: EngineConfig | None = None, measure_speed: bool = True,
                   resume_config: dict | None = None
                   ) -> tuple[EngineConfig, dict, np.ndarray]:
    """Resolve the ``"auto"`` values from the training frames and check the result fits them.

    With ``iterations="auto"``, the speed of one iteration is measured on the training
    device (``measure_speed``) so the count fits the time budget; when resuming,
    ``resume_config`` (the checkpoint's config) supplies the count instead, so a resumed run
    plans the very schedule it started with.

    Returns the resolved config, the report of what was chosen and why, and the indices of
    the validation frames. Raises :class:`ConfigError` before any training for settings that
    cannot work (see :func:`element_pose.engine.autoconfig.check_feasible`).
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    val = validation_split(len(kp), config.validation_fraction, config.seed)
    fit = np.setdiff1d(np.arange(len(kp)), val)
    # Frame count and sizes: every training frame; label statistics: the frames trained on.
    stats = dataset_stats([(im.shape[1], im.shape[0]) for im in images], kp[fit])
    resolved, report = resolve_config(config, stats, init_config)
    memory = available_memory(resolved.resolved_device())
    check_feasible(resolved, stats, len(fit), memory)
    precision = None
    if config.cpu_bf16 == "auto":
        # the precision decides the speed the iteration count is planned at
        if resume_config and isinstance(resume_config.get("cpu_bf16"), bool):
            precision = {"value": resume_config["cpu_bf16"],
                         "reason": "kept from the checkpoint training resumes"}
        elif measure_speed:
            _, precision = choose_cpu_bf16(resolved, kp.shape[1])
        else:
            precision = {"value": False, "reason": "speed not measured: float32"}
        config = config.replace(cpu_bf16=precision["value"])
        resolved = resolved.replace(cpu_bf16=precision["value"])
    if config.iterations == "auto" and resume_config and resume_config.get("iterations"):
        # a budget trade (stride, input scale) is kept too: the crop follows from the scale
        traded = {k: resume_config[k] for k in ("output_stride", "input_scale")
                  if getattr(config, k) == "auto" and k in resume_config}
        if traded:
            resolved, report = resolve_config(config.replace(**traded), stats, init_config)
        kept = {"iterations": int(resume_config["iterations"])}
        for key in ("validation_every", "patience"):  # they follow the iteration count
            if getattr(config, key) == "auto" and key in resume_config:
                kept[key] = int(resume_config[key])
        resolved = resolved.replace(**kept)
        for key, value in kept.items():
            report["chosen"][key] = {"value": value,
                                     "reason": "kept from the checkpoint training resumes"}
    elif config.iterations == "auto" and measure_speed:
        traded: dict[str, dict] = {}
        trying = config
        while True:
            seconds = measure_iteration_seconds(resolved, kp.shape[1])
            resolved, report = resolve_config(trying, stats, init_config, seconds)
            cheaper = None if init_config is not None else \
                cheaper_for_budget(trying, resolved, stats, iterations_cut_by_time(report))
            if cheaper is None:
                break
            trying, key, reason = cheaper
            traded[key] = {"value": getattr(trying, key), "reason": reason}
            resolved, _ = resolve_config(trying, stats, init_config)
            check_feasible(resolved, stats, len(fit), memory)
        report["chosen"].update(traded)
    if precision is not None:
        report["chosen"]["cpu_bf16"] = precision
    report["validation_frames"] = [int(i) for i in val]
    return resolved, report, val


def train(images: Sequence[np.ndarray], keypoints: np.ndarray, bodyparts: Sequence[str],
          config: EngineConfig, workdir: str | Path, progress: bool = True,
          init_checkpoint: str | Path | None = None) -> TrainResult:
    """Train a pose network on labeled frames.

    Parameters
    ----------
    images : sequence of np.ndarray
        RGB uint8 frames (H, W, 3); sizes may differ.
    keypoints : np.ndarray
        (N, K, 2) x, y in pixels of each frame; NaN = not visible. Or (N, M, K, 2): up to
        ``M`` instances of each of the ``K`` channels per frame (several animals), each a
        peak of its channel's heatmap; validation is then off (``validation_fraction`` 0).
    bodyparts : sequence of str
        K body-part (channel) names, in keypoint order.
    config : EngineConfig
        Training configuration.
    workdir : str or Path
        Where checkpoints and the final model file go. If it holds checkpoints of the same
        configuration, training resumes from the newest one.
    progress : bool
        Show a tqdm progress bar.
    init_checkpoint : str or Path, optional
        A model file of this engine to start from (fine-tuning): every weight is copied,
        the output channels of body parts it shares with ``bodyparts`` (by name) included;
        new body parts start fresh. Its architecture must match ``config``.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        Malformed input, or a work directory holding checkpoints of another configuration.
    ConfigError
        Settings that cannot work on these frames, before training starts.
    """
    if not isinstance(config, EngineConfig):
        raise TypeError(f"config must be an EngineConfig (use EngineConfig.from_dict), "
                        f"got {type(config).__name__}.")
    bodyparts = list(bodyparts)
    kp4 = np.asarray(keypoints, dtype=np.float64)
    instances = kp4.shape[1] if kp4.ndim == 4 else 1
    flip_choice = None
    if config.flip_pairs == "auto":
        # several instances per channel cannot flip: no names to pair then
        config, flip_choice = resolve_flip(config, bodyparts if kp4.ndim != 4 else [])
    if kp4.ndim == 4:
        if config.validation_fraction > 0:
            raise ConfigError("Several instances per channel: validation scores one peak per "
                              "channel, so set validation_fraction to 0.")
        if config.flip_pairs:
            raise ConfigError("flip_pairs with several instances per channel is not supported.")
        flat = kp4.reshape(len(kp4), -1, 2)
        names = [f"{b}#{m}" for m in range(instances) for b in bodyparts]
        imgs, flat = validate_training_data(images, flat, names)
        kp = flat
    else:
        imgs, kp = validate_training_data(images, keypoints, bodyparts)
    if config.flip_pairs:
        unknown = [n for pair in config.flip_pairs for n in pair if n not in bodyparts]
        if unknown:
            raise ValueError(f"flip_pairs names {unknown}, not among the body parts {bodyparts}.")
    device = torch.device(config.resolved_device())
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Config asks for device {config.device!r} but CUDA is not available; "
                         "use device='cpu' or 'auto'.")
    init = None
    if init_checkpoint is not None:
        init = load_model_file(init_checkpoint)
        init["path"] = str(init_checkpoint)
    init_config = EngineConfig.from_dict(init["config"]) if init else None
    found = list_checkpoints(Path(workdir))
    resume = torch.load(found[-1][1], map_location="cpu", weights_only=True)["config"] \
        if found else None
    config, report, val = prepare_config(imgs, kp, config, init_config, resume_config=resume)
    if flip_choice is not None:
        report["chosen"]["flip_pairs"] = flip_choice
    if init_config is not None:
        keys = ("backbone", "backbone_stride", "output_stride", "head_channels")
        differ = {k: (getattr(config, k), getattr(init_config, k)) for k in keys
                  if getattr(config, k) != getattr(init_config, k)}
        if differ:
            raise ConfigError(
                "The initial model's architecture differs from the config: "
                + ", ".join(f"{k} is {a!r} here but {b!r} in the initial model"
                            for k, (a, b) in differ.items())
                + ". Use the initial model's values (or 'auto' for output_stride).")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with _torch_threads(config.num_threads):
        return _train(imgs, kp, bodyparts, config, workdir, device, progress, val, report, init,
                      instances)


def _train(imgs: list[np.ndarray], kp: np.ndarray, bodyparts: list[str], config: EngineConfig,
           workdir: Path, device: torch.device, progress: bool, val: np.ndarray, report: dict,
           init: dict | None, instances: int = 1) -> TrainResult:
    from element_pose.engine.metrics import capped_mean_error, validation_cap
    from element_pose.engine.predict import PoseModel

    cfg_dict = config.to_dict()
    cfg_hash = config.sha256()
    fit = np.setdiff1d(np.arange(len(imgs)), val)
    # Several instances per channel are trained as separate keypoints, merged in the targets.
    names = [f"{b}#{m}" for m in range(instances) for b in bodyparts] if instances > 1 else \
        bodyparts
    dataset = TrainingSet([imgs[i] for i in fit], kp[fit], names, config)
    val_images, val_truth = [imgs[i] for i in val], kp[val]
    # how close the training labels put each pair of parts (the validation frames' too: they
    # are training frames), in frame pixels; one peak per channel only
    separation = separation_radii(kp) if instances == 1 else None
    relations = None
    if instances == 1 and config.part_relations:
        size = dataset_stats([(im.shape[1], im.shape[0]) for im in imgs], kp).animal_size_px
        relations = learn_relations(kp, size)
    if relations is not None:
        report["part_relations"] = int((relations[:, 5] > 0).sum())
        report["part_relation_bounds"] = int((relations[:, 5] == 0).sum())
    cap = validation_cap(kp)
    if len(val):
        report["validation_cap_px"] = round(cap, 2)
    total = planned_iterations(config, len(dataset))
    every = int(config.validation_every)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_network(config, len(bodyparts))
    if init is not None:
        matched = load_matching_weights(model, init["state_dict"], list(init["bodyparts"]),
                                        bodyparts)
        report["initial_model"] = {"path": init["path"], "matched_bodyparts": matched}
        logger.info("Started from %s: %d of %d body parts matched", init["path"], len(matched),
                    len(bodyparts))
    model, optimizer = _to_device_with_optimizer(model, config, device)
    amp_dtype = _amp_dtype(config, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start, elapsed_before, curve = 0, 0.0, []
    vcurve: list[tuple[float, float]] = []
    best = EarlyStopping(config.patience,
                         not_before=math.ceil(EARLY_STOP_FROM * total) if total else 0)
    found = list_checkpoints(workdir)
    if not found:
        (workdir / BEST_FILENAME).unlink(missing_ok=True)  # from an older run: not ours
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
        vcurve = [tuple(row) for row in state.get("validation_curve", [])]
        for name, value in state.get("best", {}).items():
            setattr(best, name, value)
        logger.info("Resuming training from %s (iteration %d)", path, start)

    def make_state(iteration: int, seconds: float) -> dict:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "iteration": iteration, "train_seconds": seconds,
                 "learning_curve": [list(r) for r in curve], "config": cfg_dict,
                 "validation_curve": [list(r) for r in vcurve], "best": best.state(),
                 "config_sha256": cfg_hash, "bodyparts": bodyparts}
        if scaler.is_enabled():
            state["scaler"] = scaler.state_dict()
        return state

    def validate(iteration: int) -> bool:
        """Score the held-back frames; keep the best weights. True when training should stop."""
        model.eval()
        pred = PoseModel(model, config, bodyparts, device=str(device),
                         separation=separation, relations=relations).predict_frames(val_images)
        model.train()
        error = capped_mean_error(pred, val_truth, cap)
        if not math.isfinite(error):
            error = math.inf
        vcurve.append((iteration, error))
        if best.update(iteration, error):
            atomic_save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                        workdir / BEST_FILENAME)
        logger.info("iteration %d: validation error %.2f px (capped at %.1f; lowest %.2f px, "
                    "kept: %d)", iteration, error, cap, best.error, best.iteration)
        return best.should_stop

    stop = total if total is not None else 1 << 40
    budget = config.max_seconds
    bar = tqdm(total=total, initial=min(start, stop), desc="train", unit="it",
               disable=not progress, dynamic_ncols=True)
    model.train()
    t0 = time.perf_counter()
    iteration = start
    last_saved = start
    done_by_time = budget is not None and elapsed_before >= budget
    stopped_early = len(val) > 0 and best.should_stop
    if start < stop and not done_by_time and not stopped_early:
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
            loss, heat_loss, off_loss = _step(model, optimizer, scaler, crops, kps, config,
                                              device, amp_dtype, instances)
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
            if len(val) and (done % every == 0 or done == stop):
                stopped_early = validate(done)
            if done % config.checkpoint_every == 0 or stopped_early:
                save_checkpoint(workdir, done,
                                make_state(done, elapsed_before + time.perf_counter() - t0),
                                config.keep_checkpoints)
                last_saved = done
            iteration = done
            if stopped_early:
                logger.info("Validation error has not improved for %d validations: stopping at "
                            "iteration %d (best %.2f px at %d)", config.patience, done,
                            best.error, best.iteration)
                break
    bar.close()
    if len(val) and (not vcurve or vcurve[-1][0] != iteration) and iteration > 0:
        validate(iteration)  # a run cut by its time budget: score its last weights too
    seconds = elapsed_before + time.perf_counter() - t0
    if iteration != last_saved:
        save_checkpoint(workdir, iteration, make_state(iteration, seconds),
                        config.keep_checkpoints)
    weights = model.state_dict()
    best_iteration = iteration
    if len(val) and (workdir / BEST_FILENAME).is_file():
        weights = torch.load(workdir / BEST_FILENAME, map_location="cpu", weights_only=True)
        best_iteration = int(best.iteration)
    model_path = save_model_file(
        workdir / MODEL_FILENAME, weights, cfg_dict, bodyparts,
        extra={"iterations": iteration, "best_iteration": best_iteration,
               "train_seconds": seconds, "device": str(device),
               "versions": library_versions(), "auto_report": report,
               "instances": instances,
               "separation_px": None if separation is None else separation.tolist(),
               "relations_px": None if relations is None else relations.tolist()})
    logger.info("Trained %d iterations in %.1f s on %s -> %s", iteration, seconds, device,
                model_path)
    return TrainResult(
        checkpoint_path=model_path,
        learning_curve=np.asarray(curve, dtype=np.float64).reshape(-1, 2),
        iterations=int(iteration),
        train_seconds=float(seconds),
        device=str(device),
        versions=library_versions(),
        validation_curve=np.asarray(vcurve, dtype=np.float64).reshape(-1, 2),
        best_iteration=best_iteration,
        config=cfg_dict,
        auto_report=report,
    )
