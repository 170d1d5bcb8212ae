"""Configuration from the labeled data: what the defaults cannot know about a lab's animals.

A config may leave ``input_scale``, ``crop_size``, ``output_stride`` and ``iterations`` as
``"auto"`` (the defaults). :func:`resolve_config` measures the labeled frames
(:func:`dataset_stats`) and replaces each ``"auto"`` by a concrete value, with the reason in a
report; values the user set are kept. :func:`check_feasible` then rejects settings that cannot
work on the data (before any training starts), naming the value and one that would work.

The rules, in network-input pixels (after ``input_scale``):

* **input scale**: the smallest scale that keeps neighbouring body parts at least
  ``TARGET_SPACING`` px apart (so their heatmap peaks stay separable at output stride 4),
  never above 1 (no upsampling) and shrinking large frames so the crop that holds the animal
  stays within ``MAX_CROP`` px;
* **crop**: big enough to hold every body part labeled in one frame (the largest label
  extent, plus a margin for rotation and zoom), rounded up to a multiple of 32; when the
  scaled frames are hardly larger, the whole frame;
* **output stride**: the coarsest of 8 and 4 that keeps the heatmap at least
  ``MIN_HEATMAP_CELLS`` cells a side and its cells no wider than the median spacing of
  neighbouring parts, or 2 when closely spaced parts are less than 4 px apart. From random
  initialisation a heatmap of 32-48 cells learns much faster than a finer one (mirror-mouse,
  256 px whole frames: 7.6 vs 11.8 px test error after equal time on a GPU, BENCHMARKS.md);
  the location-refinement offsets restore sub-cell precision;
* **sigma**: ``max(4, 0.75 * output_stride)``;
* **geometric augmentation** (rotation, zoom, shift): strong for crops that follow a freely
  moving animal, light when the crop is the whole frame (the camera's fixed view then says
  where each part is: on mirror-mouse light changes halved the error at equal time);
* **iterations**: about ``PASSES_PER_FRAME`` (50) passes per training frame, within
  [1500, 6000], fewer for big
  crops that follow the animal (each one already holds it); 6000 for whole frames of a fixed
  view (they kept improving that long); and at most what fits ``TRAINING_MINUTES`` (or
  ``max_seconds``) at the speed measured on this device just before training
  (:func:`measure_iteration_seconds`), so a default run ends in about 25 minutes on any
  machine; without a measurement, a cost model (crop area x ``STRIDE_COST``) in
  ``ITERATION_BUDGET`` units stands in. When the budget allows too few iterations to converge
  from scratch, each is made cheaper first (:func:`cheaper_for_budget`: stride 4 instead of
  2, then a smaller input scale for crops that follow the animal);
* **flip** (``flip_pairs="auto"``; the default of the multi-animal instance network): the
  left/right twins named in the body parts are swapped in mirrored crops, half of them; no
  flip when a name looks lateral but has no twin;
* **patience**: the whole schedule (validation chooses the snapshot kept, it does not stop
  training; a plateau on ten held-back frames is no sign of convergence).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from element_pose.engine.augment import lateral_pairs
from element_pose.engine.config import ConfigError, EngineConfig

#: Wanted median distance (network-input px) between a body part and its nearest neighbour.
TARGET_SPACING = 8.0
#: Frames up to this side (px) are not shrunk below it: resolution for small frames. On a CPU
#: a smaller whole frame buys iterations: mirror-mouse at 0.5 (200 px) beat 0.63 (256 px) in
#: equal time on a GPU (6.2 vs 8.5 px, BENCHMARKS.md), and a CPU gains more from the
#: smaller crop (0.89 vs 1.35 s per iteration on the 2-core benchmark machine).
MIN_FRAME_SIDE = 200
#: Largest automatic crop side (network-input px): bounds CPU time per iteration.
MAX_CROP = 320
#: Smallest automatic crop side.
MIN_CROP = 128
#: Smallest automatic input scale.
MIN_SCALE = 0.2
#: Smallest automatic heatmap side (cells) when choosing a coarser output stride.
MIN_HEATMAP_CELLS = 24
#: Geometric augmentation for crops that follow a freely moving animal ...
FREE_GEOMETRY = {"rotation": 30.0, "scale": (0.75, 1.3), "translate": 0.2}
#: ... and for whole-frame crops of a fixed view.
FIXED_GEOMETRY = {"rotation": 10.0, "scale": (0.9, 1.1), "translate": 0.05}
#: Training cost of one iteration relative to a 160 px crop at output stride 4 (the default
#: ResNet-18, batch 8): it grows with the crop's area and with a finer heatmap head. Measured
#: on the 2-core benchmark machine (openfield, 160 px / stride 4: 0.34 s per iteration;
#: anipose-side, 192 px / stride 2: about 2x that; BENCHMARKS.md).
REFERENCE_CROP = 160
STRIDE_COST = {2: 1.35, 4: 1.0, 8: 0.85, 16: 0.8, 32: 0.8}
#: Most automatic iterations in reference units when the speed is not measured: about 20
#: minutes of training on the machine the costs were measured on.
ITERATION_BUDGET = 3600
#: Training minutes the automatic iteration count aims at, at the measured speed, so a
#: default run with import and evaluation stays within 25 minutes.
TRAINING_MINUTES = 21.0
#: Measured seconds per iteration are those of the network alone; data preparation in the
#: background thread and validation add about this fraction on a 2-core CPU (1.15-1.19
#: measured on openfield, mirror-mouse and the anipose cameras).
TRAINING_OVERHEAD = 1.18
#: Passes over the training frames of crops that follow the animal (within the time budget).
#: 30 left anipose-back still improving when the run ended (1.43 px, its haunch 4.4 px in
#: 11 minutes); 5000 iterations (about 52 passes) reached 1.20 px, the haunch 2.6 px.
PASSES_PER_FRAME = 50
#: Most automatic iterations. Whole frames of a fixed view aim at this many (within the time
#: budget): each iteration holds every part of a frame, and mirror-mouse kept improving up to
#: it (GPU sweep, BENCHMARKS.md: 14.6 px after 3900 iterations, 6.2 px after 5100 with light
#: geometry and half-size frames).
MAX_ITERATIONS = 6000
#: From random initialisation, fewer iterations than this leave the network unconverged: when
#: the time budget allows fewer, each iteration is made cheaper first (see
#: :func:`cheaper_for_budget`).
MIN_ITERATIONS = 1500
#: A stride-2 heatmap learns slowly from random initialisation; it is chosen only when the
#: budget allows this many iterations (anipose side / mid / top: 1.0-1.5 px with 2900;
#: side 28.7 px with the 800 a 2-core AVX2 CPU fits in 21 minutes), else stride 4.
STRIDE2_MIN_ITERATIONS = 2900
#: Shrinking the input to fit the budget stops where neighbouring parts would come closer
#: than this (network px).
MIN_BUDGET_SPACING = 6.0
#: Bytes of CPU training memory (activations, gradients) per input pixel and sample, by
#: backbone (cut at stride 16, float32): 1.5x what ``benchmarks/training_memory.py`` measured
#: for a batch of 8 crops of 256 px (BENCHMARKS.md).
BYTES_PER_PIXEL = {
    "resnet18": 1_400,
    "resnet34": 2_000,
    "resnet50": 4_300,
    "resnet101": 6_100,
    "mobilenet_v3_large": 2_100,
    "efficientnet_b0": 3_300,
}


@dataclass(frozen=True)
class DatasetStats:
    """What the labeled frames say about the animal and the frames.

    Attributes
    ----------
    n_frames : int
        Labeled frames.
    frame_sizes : tuple of (int, int)
        Distinct (width, height) of the frames, most common first.
    max_frame_side : int
        Largest frame side in pixels.
    label_extent_px : float
        Largest side of the box around the labels of one frame (over all frames), in pixels:
        a crop must hold this to see every body part labeled together.
    animal_size_px : float
        Median diagonal of that box: the size of the labeled animal.
    part_spacing_px : float
        Median distance from a labeled body part to its nearest labeled neighbour.
    min_part_spacing_px : float
        The 10th percentile of that distance (closely spaced parts).
    visibility : tuple of float
        Fraction of frames in which each body part is labeled.
    """

    n_frames: int
    frame_sizes: tuple[tuple[int, int], ...]
    max_frame_side: int
    label_extent_px: float
    animal_size_px: float
    part_spacing_px: float
    min_part_spacing_px: float
    visibility: tuple[float, ...]

    def to_dict(self) -> dict:
        """Plain JSON types."""
        d = asdict(self)
        d["frame_sizes"] = [list(s) for s in self.frame_sizes]
        d["visibility"] = list(self.visibility)
        return d


def dataset_stats(image_sizes: Sequence[tuple[int, int]], keypoints: np.ndarray) -> DatasetStats:
    """Measure labeled frames.

    Parameters
    ----------
    image_sizes : sequence of (width, height)
        Size of each labeled frame; their number is ``n_frames``.
    keypoints : np.ndarray
        (N, K, 2) x, y in pixels, NaN = not labeled (may be a subset of the frames, e.g.
        without those held back for validation).
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    visible = np.isfinite(kp).all(axis=2)
    sizes = [(int(w), int(h)) for w, h in image_sizes]
    counts: dict[tuple[int, int], int] = {}
    for s in sizes:
        counts[s] = counts.get(s, 0) + 1
    extents, diagonals, spacing = [], [], []
    for frame, vis in zip(kp, visible, strict=True):
        pts = frame[vis]
        if len(pts) == 0:
            continue
        span = pts.max(axis=0) - pts.min(axis=0)
        extents.append(float(span.max()))
        diagonals.append(float(np.hypot(*span)))
        if len(pts) > 1:
            d = np.linalg.norm(pts[:, None] - pts[None], axis=2)
            np.fill_diagonal(d, np.inf)
            near = d.min(axis=1)
            spacing.extend(near[near > 0.5].tolist())  # coincident labels say nothing
    spacing_arr = np.asarray(spacing) if spacing else np.asarray([np.nan])
    return DatasetStats(
        n_frames=len(sizes),
        frame_sizes=tuple(sorted(counts, key=lambda s: -counts[s])),
        max_frame_side=max((max(s) for s in sizes), default=0),
        label_extent_px=max(extents, default=0.0),
        animal_size_px=float(np.median(diagonals)) if diagonals else 0.0,
        part_spacing_px=float(np.nanmedian(spacing_arr)),
        min_part_spacing_px=float(np.nanpercentile(spacing_arr, 10)),
        visibility=tuple(float(v) for v in visible.mean(axis=0)) if len(kp) else (),
    )


def auto_sigma(output_stride: int) -> float:
    """``sigma="auto"``: a coarse heatmap still has a positive blob wider than one cell."""
    return max(4.0, 0.75 * output_stride)


def resolve_flip(config: EngineConfig, bodyparts: Sequence[str], required: bool = False
                 ) -> tuple[EngineConfig, dict]:
    """Resolve ``flip_pairs="auto"`` from the body-part names (:func:`lateral_pairs`).

    With twins for every left/right part the pairs are set and ``augmentation.flip`` becomes
    0.5 unless it was set; otherwise no flip. ``required`` (a flip the user asked for) turns
    the no-flip cases into a :class:`ConfigError` naming the names to fix.

    Returns the config (``flip_pairs`` concrete) and ``{"value": pairs, "reason": ...}``.
    """
    if config.flip_pairs != "auto":
        return config, {"value": [list(p) for p in config.flip_pairs], "reason": "set"}
    pairs, unpaired = lateral_pairs(bodyparts)
    if unpaired or not pairs:
        reason = (f"no flip: {', '.join(unpaired)} look left/right but have no twin among the "
                  "body parts" if unpaired else "no flip: no left/right body parts")
        if required:
            raise ConfigError(f"A flip was asked for, but {reason[9:]}. Name the pairs in "
                              "'flip_pairs', e.g. [['paw1LH', 'paw4RH']], or turn the flip off.")
        aug = {"flip": 0.0}
        pairs = []
    else:
        flip = config.augmentation.flip or 0.5
        aug = {"flip": flip}
        reason = (f"mirrored crops ({flip:.0%}) swap the left/right twins named in the body "
                  "parts, so each labeled pose also teaches its mirror image")
    resolved = config.replace(flip_pairs=[list(p) for p in pairs],
                              augmentation={**config.to_dict()["augmentation"], **aug})
    return resolved, {"value": [list(p) for p in pairs], "reason": reason}


def _round_up(value: float, multiple: int = 32) -> int:
    return int(math.ceil(value / multiple) * multiple)


def _crop_for(stats: DatasetStats, scale: float, augmentation_zoom: float) -> tuple[int, str]:
    """Crop side holding the label extent at ``scale`` (or the whole frame when it is close)."""
    frame = stats.max_frame_side * scale
    # Margin: the extent grows by the largest zoom, plus a quarter for rotation and shifts.
    need = stats.label_extent_px * scale * augmentation_zoom * 1.25 + 16
    crop = _round_up(max(need, MIN_CROP))
    if crop >= 0.8 * frame:
        return _round_up(frame - 1, 16), "whole frame (the labels span most of it)"
    return crop, "holds the largest label extent with margin for zoom and rotation"


def resolve_config(config: EngineConfig, stats: DatasetStats,
                   reference: EngineConfig | None = None,
                   seconds_per_iteration: float | None = None) -> tuple[EngineConfig, dict]:
    """Replace the ``"auto"`` values of ``config`` by values chosen from ``stats``.

    Parameters
    ----------
    config : EngineConfig
        Possibly with ``"auto"`` values; set values are kept.
    stats : DatasetStats
        From :func:`dataset_stats` on the training frames.
    reference : EngineConfig, optional
        Config of a model training starts from: its input scale and output stride are kept
        (the features were learned at that scale) unless set in ``config``.
    seconds_per_iteration : float, optional
        Measured training speed at the resolved crop and stride on the device that will
        train (:func:`measure_iteration_seconds`): the automatic iteration count then fits
        ``max_seconds`` or ``TRAINING_MINUTES``. Without it a cost model stands in.

    Returns
    -------
    config : EngineConfig
        Without ``"auto"`` values.
    report : dict
        ``stats`` and, per chosen key, ``{"value": ..., "reason": ...}``.
    """
    report: dict = {"stats": stats.to_dict(), "chosen": {}}
    chosen = report["chosen"]
    aug = config.augmentation
    # The crop must hold the animal at the largest zoom it may get: the strong range's
    # when the zoom range is still to be chosen.
    zoom = FREE_GEOMETRY["scale"][1] if aug.scale == "auto" else aug.scale[1]
    changes: dict = {}

    scale = config.input_scale
    if scale == "auto" and reference is not None and reference.input_scale != "auto":
        scale = float(reference.input_scale)
        chosen["input_scale"] = {"value": scale, "reason": "kept from the initial model"}
    elif scale == "auto":
        spacing = stats.part_spacing_px if math.isfinite(stats.part_spacing_px) else 0.0
        scale = TARGET_SPACING / spacing if spacing > 0 else 1.0
        reason = (f"body parts are {spacing:.1f} px from their nearest neighbour (median); "
                  f"scaled to about {TARGET_SPACING:.0f} px")
        floor = MIN_FRAME_SIDE / stats.max_frame_side if stats.max_frame_side else 1.0
        if floor > scale:
            scale = floor
            reason += f"; kept >= {MIN_FRAME_SIDE} px per frame side for resolution"
        scale = min(scale, 1.0)
        # Keep the crop that holds the animal within MAX_CROP (CPU time per iteration).
        need = min(stats.label_extent_px * zoom * 1.25 + 16, stats.max_frame_side)
        if need * scale > MAX_CROP and need > 0:
            scale = min(scale, MAX_CROP / need)
            reason += f"; reduced so the crop holding the labels stays <= {MAX_CROP} px"
        if scale < MIN_SCALE:
            scale = MIN_SCALE
            reason += f"; not below {MIN_SCALE}"
        scale = math.floor(scale * 1000) / 1000
        chosen["input_scale"] = {"value": scale, "reason": reason}
    changes["input_scale"] = float(scale)

    crop = config.crop_size
    if crop == "auto":
        crop, reason = _crop_for(stats, float(scale), zoom)
        chosen["crop_size"] = {"value": crop, "reason": reason}
    changes["crop_size"] = int(crop)
    whole_frame = int(crop) >= 0.8 * stats.max_frame_side * float(scale)

    stride = config.output_stride
    if stride == "auto" and reference is not None and reference.output_stride != "auto":
        stride = reference.output_stride
        chosen["output_stride"] = {"value": stride, "reason": "kept from the initial model"}
    elif stride == "auto":
        close = stats.min_part_spacing_px * float(scale)
        spacing = stats.part_spacing_px * float(scale)
        if math.isfinite(close) and close < 4:
            stride = 2
            reason = f"closely spaced parts are {close:.1f} network px apart (10th percentile)"
        else:
            stride = 4
            if int(crop) / 8 >= MIN_HEATMAP_CELLS and not spacing < 8:
                stride = 8
            reason = (f"a {int(crop) // stride}-cell heatmap for a {int(crop)} px crop, cells "
                      f"no wider than the {spacing:.1f} px between neighbouring parts")
        chosen["output_stride"] = {"value": stride, "reason": reason}
    changes["output_stride"] = stride

    if config.sigma == "auto":
        sigma = auto_sigma(stride)
        chosen["sigma"] = {"value": sigma,
                           "reason": f"max(4, 0.75 x output stride {stride})"}
        changes["sigma"] = sigma

    geometry = FIXED_GEOMETRY if whole_frame else FREE_GEOMETRY
    aug_changes = {k: v for k, v in geometry.items() if getattr(aug, k) == "auto"}
    if aug_changes:
        why = ("the crop is the whole frame: light changes keep the camera's fixed view"
               if whole_frame else "crops follow a freely moving animal: strong changes")
        for key, value in aug_changes.items():
            chosen[f"augmentation.{key}"] = {"value": value, "reason": why}
        changes["augmentation"] = {**asdict(aug), **aug_changes}

    iterations = config.iterations
    if iterations == "auto":
        n = max(stats.n_frames, 1)
        # Whole frames of a fixed view kept improving up to MAX_ITERATIONS (mirror-mouse);
        # crops that follow the animal need about PASSES_PER_FRAME passes, and a big one
        # holds all of the animal: fewer, costlier iterations.
        base = (MAX_ITERATIONS if whole_frame
                else min(max(PASSES_PER_FRAME * n, 1500), MAX_ITERATIONS))
        factor = 1.0 if whole_frame else min(1.0, (192.0 / crop) ** 2) ** 0.5
        passes = (f"whole frames of a fixed view: up to {MAX_ITERATIONS}" if whole_frame else
                  f"~{PASSES_PER_FRAME} passes over {n} training frames within [1500, {MAX_ITERATIONS}], "
                  f"scaled by {factor:.2f} for a {crop} px crop")
        if seconds_per_iteration:
            budget = config.max_seconds or TRAINING_MINUTES * 60
            fit = budget / (seconds_per_iteration * TRAINING_OVERHEAD)
            limit = (f"at most the {fit:.0f} that fit {budget / 60:.1f} training minutes at "
                     f"the measured {seconds_per_iteration:.3f} s per iteration")
        else:
            cost = (int(crop) / REFERENCE_CROP) ** 2 * STRIDE_COST.get(int(stride), 1.0)
            fit = ITERATION_BUDGET / cost
            limit = (f"at most {ITERATION_BUDGET} / {cost:.2f} (the modelled cost of a {crop} "
                     f"px, stride-{stride} iteration)")
        time_limited = fit < base * factor
        iterations = min(base * factor, fit)
        # a count the budget cut is rounded down, so the run ends within it
        hundreds = math.floor(iterations / 100.0) if time_limited else round(iterations / 100.0)
        iterations = max(int(hundreds * 100), 100 if fit < 1000 else 1000)
        chosen["iterations"] = {
            "value": iterations,
            "reason": f"{passes}, {limit}"}
        if seconds_per_iteration:
            chosen["iterations"]["seconds_per_iteration"] = float(seconds_per_iteration)
            chosen["iterations"]["time_limited"] = bool(time_limited)
    changes["iterations"] = iterations

    every = config.validation_every
    if every == "auto":
        planned = iterations if isinstance(iterations, int) else 5000
        every = max(50, int(round(planned / 20 / 50)) * 50)
        chosen["validation_every"] = {"value": every,
                                      "reason": "about 20 validations over the run"}
    changes["validation_every"] = every

    if config.patience == "auto":
        if isinstance(iterations, int):
            # Never stop early: the count already fits the data and the time budget, and a
            # plateau of the validation error is no sign of convergence. On openfield's ten
            # held-back frames it was flat from iteration 750 to 2900 while the test error fell
            # from 28 to 1.66 px; stopping there on six stale validations cost accuracy.
            patience = int(iterations) // int(every) + 1
            reason = ("the whole schedule: the iteration count already fits the data and the "
                      "time budget, and validation picks the snapshot kept")
        else:
            patience, reason = 6, "six validations without improvement stop training"
        chosen["patience"] = {"value": patience, "reason": reason}
        changes["patience"] = patience
    return config.replace(**changes), report


def iterations_cut_by_time(report: dict) -> bool:
    """Whether the automatic iteration count of a resolution report was cut by the time
    budget (the data asked for more)."""
    return bool(report.get("chosen", {}).get("iterations", {}).get("time_limited"))


def cheaper_for_budget(config: EngineConfig, resolved: EngineConfig, stats: DatasetStats,
                       time_limited: bool = True) -> tuple[EngineConfig, str, str] | None:
    """One change that makes iterations cheaper when the budget allows too few of them.

    Parameters
    ----------
    config : EngineConfig
        The config as given (``"auto"`` values still in it).
    resolved : EngineConfig
        Its resolution at the measured speed.
    stats : DatasetStats
        The training frames' statistics.
    time_limited : bool
        Whether the time budget cut the iteration count (:func:`iterations_cut_by_time`);
        a count the data chose (few frames) is never traded for resolution.

    Returns
    -------
    tuple or None
        ``config`` with one automatic value fixed to a cheaper one, that key and the
        reason; None when nothing automatic is left to trade (or nothing needs to be).
    """
    if not time_limited:
        return None
    its = int(resolved.iterations)
    if (config.output_stride == "auto" and resolved.output_stride == 2
            and its < STRIDE2_MIN_ITERATIONS):
        return (config.replace(output_stride=4), "output_stride",
                f"stride 2 would get only {its} iterations in the time budget (it learns "
                f"slowly from scratch; < {STRIDE2_MIN_ITERATIONS}): stride 4, cheaper")
    scale = float(resolved.input_scale)
    whole_frame = int(resolved.crop_size) >= 0.8 * stats.max_frame_side * scale
    smaller = math.floor(scale * 0.8 * 1000) / 1000
    if (its < MIN_ITERATIONS and config.input_scale == "auto" and config.crop_size == "auto"
            and not whole_frame and smaller >= MIN_SCALE
            and stats.part_spacing_px * smaller >= MIN_BUDGET_SPACING):
        return (config.replace(input_scale=smaller), "input_scale",
                f"input scale {scale} would get only {its} iterations in the time budget "
                f"(< {MIN_ITERATIONS}): {smaller}, a smaller crop, keeps neighbouring parts "
                f"{stats.part_spacing_px * smaller:.1f} px apart")
    return None


def check_feasible(config: EngineConfig, stats: DatasetStats, n_train: int,
                   memory_bytes: int | None = None) -> None:
    """Reject settings that cannot work on the data, before training starts.

    Raises
    ------
    ConfigError
        Naming the value and one that would work.
    """
    if config.iterations is not None and config.iterations == 0:
        raise ConfigError("Config key 'iterations' is 0: no training would happen. Use at least "
                          "1 (or 'auto').")
    if config.batch_size > n_train:
        raise ConfigError(
            f"Config key 'batch_size' ({config.batch_size}) is larger than the {n_train} "
            f"training frames; use batch_size <= {n_train} (e.g. {min(8, n_train)}).")
    scale = float(config.input_scale)
    spacing = stats.part_spacing_px * scale
    if math.isfinite(spacing) and spacing < config.output_stride:
        ok = math.ceil(config.output_stride * 1.5 / stats.part_spacing_px * 100) / 100
        raise ConfigError(
            f"Config key 'input_scale' ({scale}) makes neighbouring body parts "
            f"{spacing:.1f} px apart, less than one heatmap cell ({config.output_stride} px): "
            f"they cannot be told apart. Use input_scale >= {ok}.")
    frame = stats.max_frame_side * scale
    if int(config.crop_size) > _round_up(frame) + 64 and frame > 0:
        raise ConfigError(
            f"Config key 'crop_size' ({config.crop_size}) is much larger than the frames at "
            f"input_scale {scale} ({frame:.0f} px): the crop would be mostly padding. Use "
            f"crop_size <= {_round_up(frame)}.")
    if memory_bytes:
        per_px = BYTES_PER_PIXEL.get(config.backbone, 6_100)
        need = per_px * config.batch_size * int(config.crop_size) ** 2
        if need > 0.7 * memory_bytes:
            fit = int(math.sqrt(0.7 * memory_bytes / (per_px * config.batch_size)) // 32 * 32)
            raise ConfigError(
                f"Config key 'crop_size' ({config.crop_size}) with batch_size "
                f"{config.batch_size} needs about {need / 2**30:.1f} GiB for training, more "
                f"than the {memory_bytes / 2**30:.1f} GiB available on this device. Use "
                f"crop_size <= {max(fit, 32)} or a smaller batch_size.")


def available_memory(device: str) -> int | None:
    """Bytes of memory training may use on ``device`` (None when unknown)."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
