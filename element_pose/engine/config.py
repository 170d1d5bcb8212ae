"""The engine's one typed, validated training and inference configuration.

:class:`EngineConfig` is a frozen dataclass tree. :meth:`EngineConfig.from_dict` validates a
plain dict (as stored in a ``TrainingParamSet`` row): unknown keys and wrong types raise
:class:`ConfigError` naming the key path and the expected type. :meth:`EngineConfig.to_json`
is canonical (sorted keys, no whitespace, floats always written as floats), so
:meth:`EngineConfig.sha256` identifies a configuration regardless of key order or of ``1``
versus ``1.0`` in the input.

The defaults are the *light* network, a ResNet-18 cut after its third stage (stride 16) with
a two-step deconvolution head to heatmaps with location-refinement offsets, and leave the
data-dependent values ``"auto"`` (:data:`AUTO_KEYS`): input scale, crop size, output stride,
training length and validation interval are chosen from the labeled frames when a training
starts (:mod:`element_pose.engine.autoconfig`). Figures are in BENCHMARKS.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Union

BACKBONES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "mobilenet_v3_large",
    "efficientnet_b0",
)


#: Keys that may be ``"auto"``: chosen from the labeled data when training starts.
AUTO_KEYS = ("input_scale", "output_stride", "crop_size", "iterations", "validation_every",
             "patience", "sigma", "augmentation.rotation", "augmentation.scale",
             "augmentation.translate")


class ConfigError(ValueError):
    """A configuration value that is unknown, of the wrong type, or out of range."""


@dataclass(frozen=True)
class AugmentationConfig:
    """Training-time augmentation; every geometric change moves the keypoints with the pixels.

    Attributes
    ----------
    rotation : float or "auto"
        Maximum rotation in degrees (uniform in ``[-rotation, rotation]``).
    scale : tuple of float or "auto"
        ``(low, high)`` range of the random zoom factor (log-uniform).
    translate : float or "auto"
        Maximum shift of the crop centre, as a fraction of the crop size.

        ``"auto"`` (rotation, scale, translate): strong changes (30 degrees, 0.75-1.3, 0.2)
        for crops that follow a freely moving animal, light ones (10 degrees, 0.9-1.1,
        0.05) when the crop is the whole frame: there the camera's fixed view (a mirror
        rig, a head-fixed animal) tells the network where each part is, and large shifts
        push border parts out of the frame (:mod:`element_pose.engine.autoconfig`).
    flip : float
        Probability of a horizontal flip. Left/right body parts are swapped according to
        :attr:`EngineConfig.flip_pairs`; keep 0 unless the pairs are given.
    brightness : float
        Maximum additive brightness change, as a fraction of 255.
    contrast : float
        Maximum relative contrast change (factor in ``[1 - contrast, 1 + contrast]``).
    noise : float
        Maximum standard deviation of additive Gaussian noise, as a fraction of 255.
    blur : float
        Probability of a Gaussian blur (sigma 0.5 to 1.5 px).
    grayscale : float
        Probability of converting the crop to gray (all three channels equal).
    crop_around_keypoints : float
        Probability that the crop is centred on labels (the whole animal or one body part)
        rather than on a uniformly random point of the frame.
    part_crop_fraction : float
        Of the crops centred on labels, the fraction that targets one body part: the part
        is drawn so that every part ends up inside about as many training crops as the
        others (parts labeled in few frames, or far from the rest of the animal such as at
        the frame border, are targeted most), then a frame where it is labeled, and the crop
        is centred on it. The other crops are centred on the whole labeled animal.
    """

    rotation: float | Literal["auto"] = "auto"
    scale: tuple[float, float] | Literal["auto"] = "auto"
    translate: float | Literal["auto"] = "auto"
    flip: float = 0.0
    brightness: float = 0.15
    contrast: float = 0.25
    noise: float = 0.03
    blur: float = 0.2
    grayscale: float = 0.1
    crop_around_keypoints: float = 0.9
    part_crop_fraction: float = 0.4


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW settings.

    Attributes
    ----------
    lr : float
        Peak learning rate.
    weight_decay : float
        Decoupled weight decay.
    betas : tuple of float
        Adam betas.
    """

    lr: float = 2e-3
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule over training *progress*.

    Progress is the larger of iteration / planned iterations and elapsed seconds /
    ``max_seconds``, so a wall-clock budget still ends with a fully annealed rate.

    Attributes
    ----------
    name : {"cosine", "onecycle", "constant"}
        ``cosine``: linear warm-up then cosine decay to ``min_lr_fraction * lr``;
        ``onecycle``: 30 % linear ramp then cosine decay; ``constant``: warm-up then flat.
    warmup_iterations : int
        Linear warm-up length for ``cosine`` and ``constant``.
    min_lr_fraction : float
        Final learning rate as a fraction of the peak.
    """

    name: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_iterations: int = 100
    min_lr_fraction: float = 0.01


@dataclass(frozen=True)
class EngineConfig:
    """Training and inference configuration of the pose engine.

    Attributes
    ----------
    backbone : str
        torchvision backbone, one of :data:`BACKBONES`.
    backbone_stride : {8, 16, 32}
        Where the backbone is cut: its stages up to this stride are kept. Cutting a ResNet at
        16 drops its most expensive, least useful stage for small-animal keypoints.
    output_stride : {2, 4, 8, 16, "auto"}
        Stride of the heatmaps relative to the network input; the head upsamples from
        ``backbone_stride`` with 4x4 stride-2 deconvolutions. Must be <= backbone_stride.
    head_channels : int
        Channels of each deconvolution layer.
    input_scale : float or "auto"
        Frames are resized by this factor before the network (training and inference);
        predictions are mapped back to original pixels. ``"auto"``: chosen from the labels
        (see :mod:`element_pose.engine.autoconfig`).
    sigma : float or "auto"
        Standard deviation of the Gaussian target heatmaps, in network-input pixels.
        ``"auto"``: ``max(4, 0.75 * output_stride)``, so a coarse heatmap still has a
        positive blob wider than one cell.
    locref_radius : float
        Offsets are supervised within this distance (network-input pixels) of a keypoint.
    locref_weight : float
        Weight of the offset loss relative to the heatmap loss.
    hard_keypoint_weight : float
        Extra weight of the hardest half of each training sample's keypoint heatmaps
        (online hard keypoint mining); 0 weighs every part alike.
    crop_size : int or "auto"
        Side of the square training crops, in network-input pixels (after ``input_scale``).
        ``"auto"``: big enough for every body part labeled in one frame, or the whole frame.
    augmentation, optimizer, schedule
        Nested settings, see their classes.
    iterations, epochs : int, "auto" or None
        Training length; give at most one (epochs = passes over the training frames).
        With neither, ``max_seconds`` must be given. ``iterations="auto"`` is chosen from the
        number of training frames, the crop size and the measured speed.
    validation_fraction : float
        Fraction of the *training* frames held back to choose the snapshot and stop training
        (never the test split); 0 disables validation. Needs at least 10 training frames.
    validation_every : int or "auto"
        Iterations between validations (``"auto"``: about 20 validations per run).
    patience : int or "auto"
        Validations without improvement (by more than 1 %) after which training stops, from
        70 % of the schedule on (``EARLY_STOP_FROM``); the snapshot kept is chosen by
        validation either way. ``"auto"``: never stop early when the iteration count is
        known (it already fits the data and the time budget), else 6.
    max_seconds : float or None
        Wall-clock training budget; training stops (with a fully annealed schedule) when it
        is spent, even if iterations remain.
    batch_size : int
        Training batch size.
    grad_clip : float or None
        Maximum gradient L2 norm; None disables clipping.
    seed : int
        Seed of initialisation, augmentation and batch order. On CPU a fixed seed gives
        identical runs (unless ``max_seconds`` cuts the run).
    device : str
        ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    mixed_precision : bool
        Automatic mixed precision on CUDA (ignored on CPU).
    cpu_bf16 : bool or "auto"
        bfloat16 autocast on CPU (the heatmap and offset outputs stay float32). ``"auto"``:
        when training starts, one float32 and one bfloat16 step are timed and bfloat16 is used
        when it is at least ``train.BF16_MIN_SPEEDUP`` times faster, as on CPUs with native
        bf16 (AVX512-BF16, AMX): on a 2-core AVX-512 machine ResNet-18 steps ran 1.7-2.9x
        faster, so a time-limited training gets that many more iterations. Off by default:
        on mirror-mouse the bfloat16 default run (6000 iterations in the time float32 needed
        for 3400) scored 5.96 px against float32's 4.81 (BENCHMARKS.md), and one run cannot
        tell bfloat16 from the longer schedule. The choice is stored with the model; inference
        uses bfloat16 for a model trained with it when the CPU supports bf16.
    channels_last : bool
        Channels-last memory format (on CUDA and CPU, where oneDNN prefers it).
    num_threads : int or None
        CPU threads for torch; None = all cores.
    pretrained : str
        ``"none"`` (random init), ``"imagenet"`` (torchvision weights API) or a path to a
        ``.pt``/``.pth`` torchvision state_dict of the backbone.
    flip_pairs : tuple of (str, str) or "auto"
        Body parts swapped by a horizontal flip, e.g. ``(("leftear", "rightear"),)``.
        ``"auto"``: the left/right twins found in the body-part names (``leftear`` /
        ``rightear``, ``Ear_L`` / ``Ear_R``, ``wingL`` / ``wingR``), with ``augmentation.flip``
        0.5 unless set; no flip when a name looks left/right but has no twin
        (:func:`element_pose.engine.autoconfig.resolve_flip`). A mirrored animal with its
        sides swapped is an animal too, so every labeled pose also teaches its mirror image.
    pcutoff : float
        Confidence cut-off used by evaluation and downstream filtering.
    separate_parts : bool
        Two body parts predicted much closer than the training labels ever put them (a left
        paw on the right one) are taken apart: the part that loses less confidence moves to
        its next-best heatmap peak (:mod:`element_pose.engine.separation`). The distances are
        measured from the training labels and stored in the model file.
    part_relations : bool
        Coordinate differences the training labels show fixed (a paw and its mirror image at
        one x) are kept when decoding: a part placed where it breaks one (beyond the labeled
        range widened by half its width) moves to its strongest heatmap peak that keeps them
        all, and the other axis of the pair within its labeled range
        (:mod:`element_pose.engine.relations`). Learned from the training labels and stored
        in the model file; freely moving animals have few or none.
    checkpoint_every : int
        Iterations between resumable checkpoints.
    keep_checkpoints : int
        How many resumable checkpoints to keep in the work directory.
    """

    backbone: str = "resnet18"
    backbone_stride: Literal[8, 16, 32] = 16
    output_stride: Literal[2, 4, 8, 16, "auto"] = "auto"
    head_channels: int = 128
    input_scale: float | Literal["auto"] = "auto"
    sigma: float | Literal["auto"] = "auto"
    locref_radius: float = 8.0
    locref_weight: float = 0.5
    hard_keypoint_weight: float = 0.0
    crop_size: int | Literal["auto"] = "auto"
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    iterations: int | Literal["auto"] | None = "auto"
    epochs: int | None = None
    validation_fraction: float = 0.1
    validation_every: int | Literal["auto"] = "auto"
    patience: int | Literal["auto"] = "auto"
    max_seconds: float | None = None
    batch_size: int = 8
    grad_clip: float | None = 5.0
    seed: int = 0
    device: str = "auto"
    mixed_precision: bool = True
    cpu_bf16: bool | Literal["auto"] = False
    channels_last: bool = True
    num_threads: int | None = None
    pretrained: str = "none"
    flip_pairs: tuple[tuple[str, str], ...] | Literal["auto"] = ()
    pcutoff: float = 0.6
    separate_parts: bool = True
    part_relations: bool = True
    checkpoint_every: int = 250
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        _check_ranges(self)

    # -- construction and serialisation ------------------------------------------------

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None = None) -> EngineConfig:
        """Validate a plain dict (missing keys take defaults) and build the config.

        Raises
        ------
        ConfigError
            Naming the offending key (dotted path for nested settings) and what it expects.
        """
        return _build(cls, {} if d is None else d, "")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (lists for tuples, floats for float fields)."""
        return _to_plain(self)

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, compact separators."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        """Hex sha256 of :meth:`to_json`."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def replace(self, **changes: Any) -> EngineConfig:
        """A validated copy with some top-level fields changed (nested ones as dicts ok)."""
        d = self.to_dict()
        for key, value in changes.items():
            if dataclasses.is_dataclass(value):
                value = _to_plain(value)
            d[key] = value
        return EngineConfig.from_dict(d)

    # -- derived values ----------------------------------------------------------------

    def auto_keys(self) -> list[str]:
        """Keys still ``"auto"`` (resolved from the data by ``autoconfig.resolve_config``)."""
        return [k for k in AUTO_KEYS if self.get(k) == "auto"]

    def get(self, key: str) -> Any:
        """Value of a top-level or dotted nested key (``"augmentation.rotation"``)."""
        value: Any = self
        for part in key.split("."):
            value = getattr(value, part)
        return value

    def resolved_device(self) -> str:
        """The torch device string ``device`` stands for on this machine."""
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


# ---------------------------------------------------------------------------------------
# validation machinery


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of ({_type_name(args[0])})"
        return f"list of {len(args)} [" + ", ".join(_type_name(a) for a in args) + "]"
    if dataclasses.is_dataclass(tp):
        return f"dict ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is type(None):
        if value is None:
            return None
        raise TypeError
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _convert(arg, value, path)
            except TypeError:
                continue
        raise TypeError
    if origin is Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if type(value) is type(choice) and value == choice:
                return value
        raise TypeError
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise TypeError
        return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise TypeError
        return _build(tp, value, path + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        raise TypeError
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"Config key {path!r} must be a finite number, got {value!r}.")
            return value
        raise TypeError
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError
    raise TypeError  # pragma: no cover - unsupported annotation


def _build(cls: Any, d: dict[str, Any], prefix: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"Config {prefix.rstrip('.') or 'root'} must be a dict, got "
                          f"{type(d).__name__}.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(
            f"Unknown config key {prefix + str(unknown[0])!r}"
            + (f" (and {unknown[1:]})" if len(unknown) > 1 else "")
            + f"; valid keys{' of ' + prefix.rstrip('.') if prefix else ''} are: "
            + ", ".join(sorted(names)) + "."
        )
    kwargs = {}
    for name, value in d.items():
        path = prefix + name
        try:
            kwargs[name] = _convert(hints[name], value, path)
        except TypeError:
            raise ConfigError(
                f"Config key {path!r} expects {_type_name(hints[name])}, got {value!r} "
                f"({type(value).__name__})."
            ) from None
    return cls(**kwargs)


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_to_plain(v) for v in obj]
    return obj


def _fail(key: str, message: str) -> None:
    raise ConfigError(f"Config key {key!r} {message}")


def _check_ranges(c: EngineConfig) -> None:
    # Direct construction (EngineConfig(...)) gets the same type checks as from_dict.
    hints = typing.get_type_hints(EngineConfig)
    for f in fields(EngineConfig):
        value = getattr(c, f.name)
        if dataclasses.is_dataclass(hints[f.name]) and isinstance(value, dict):
            object.__setattr__(c, f.name, _build(hints[f.name], value, f.name + "."))
            continue
        try:
            object.__setattr__(c, f.name, _convert(hints[f.name], value, f.name))
        except TypeError:
            raise ConfigError(
                f"Config key {f.name!r} expects {_type_name(hints[f.name])}, got {value!r} "
                f"({type(value).__name__})."
            ) from None
    if c.backbone not in BACKBONES:
        _fail("backbone", f"must be one of {', '.join(BACKBONES)}; got {c.backbone!r}.")
    if c.output_stride != "auto" and c.output_stride > c.backbone_stride:
        _fail("output_stride", f"({c.output_stride}) must be <= backbone_stride "
              f"({c.backbone_stride}).")
    for key in ("head_channels", "crop_size", "batch_size", "checkpoint_every", "patience"):
        if getattr(c, key) != "auto" and getattr(c, key) < 1:
            _fail(key, f"must be >= 1, got {getattr(c, key)}.")
    if c.keep_checkpoints < 1:
        _fail("keep_checkpoints", f"must be >= 1, got {c.keep_checkpoints}.")
    for key in ("input_scale", "sigma", "locref_radius"):
        if getattr(c, key) != "auto" and not getattr(c, key) > 0:
            _fail(key, f"must be > 0, got {getattr(c, key)}.")
    if c.locref_weight < 0:
        _fail("locref_weight", f"must be >= 0, got {c.locref_weight}.")
    if c.hard_keypoint_weight < 0:
        _fail("hard_keypoint_weight", f"must be >= 0 (0 disables it), got "
              f"{c.hard_keypoint_weight}.")
    if c.iterations is not None and c.epochs is not None:
        _fail("epochs", "and 'iterations' are exclusive: set one of them to null.")
    if c.iterations not in (None, "auto") and c.iterations < 0:
        _fail("iterations", f"must be >= 0, got {c.iterations}.")
    if not 0.0 <= c.validation_fraction < 0.5:
        _fail("validation_fraction", f"must be within [0, 0.5), got {c.validation_fraction}.")
    if c.validation_every != "auto" and c.validation_every < 1:
        _fail("validation_every", f"must be >= 1 or 'auto', got {c.validation_every}.")
    if c.epochs is not None and c.epochs < 0:
        _fail("epochs", f"must be >= 0, got {c.epochs}.")
    if c.max_seconds is not None and not c.max_seconds > 0:
        _fail("max_seconds", f"must be > 0 or null, got {c.max_seconds}.")
    if c.iterations is None and c.epochs is None and c.max_seconds is None:
        _fail("iterations", "is null and so are 'epochs' and 'max_seconds': give at least one.")
    if c.grad_clip is not None and not c.grad_clip > 0:
        _fail("grad_clip", f"must be > 0 or null, got {c.grad_clip}.")
    if c.num_threads is not None and c.num_threads < 1:
        _fail("num_threads", f"must be >= 1 or null, got {c.num_threads}.")
    if not 0.0 <= c.pcutoff <= 1.0:
        _fail("pcutoff", f"must be within [0, 1], got {c.pcutoff}.")
    dev = c.device
    if not (dev in ("auto", "cpu", "cuda", "mps") or dev.startswith("cuda:")):
        _fail("device", f"must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'; got {dev!r}.")
    if not c.pretrained:
        _fail("pretrained", "must be 'none', 'imagenet' or a path to a .pt/.pth file.")
    for a, b in () if c.flip_pairs == "auto" else c.flip_pairs:
        if a == b:
            _fail("flip_pairs", f"pairs two different body parts; got ({a!r}, {b!r}).")
    aug = c.augmentation
    if aug.scale != "auto" and not 0 < aug.scale[0] <= aug.scale[1]:
        _fail("augmentation.scale", f"must be (low, high) with 0 < low <= high; got {aug.scale}.")
    for key in ("flip", "blur", "grayscale", "crop_around_keypoints", "part_crop_fraction"):
        if not 0.0 <= getattr(aug, key) <= 1.0:
            _fail(f"augmentation.{key}", f"is a probability in [0, 1]; got {getattr(aug, key)}.")
    for key in ("rotation", "translate", "brightness", "contrast", "noise"):
        if getattr(aug, key) != "auto" and getattr(aug, key) < 0:
            _fail(f"augmentation.{key}", f"must be >= 0; got {getattr(aug, key)}.")
    if aug.flip > 0 and not c.flip_pairs:
        # Flipping without swapping left/right parts teaches the network to confuse them.
        _fail("augmentation.flip", f"is {aug.flip} but 'flip_pairs' is empty: name the "
              "left/right body parts a flip swaps, e.g. [['leftear', 'rightear']], or set "
              "flip to 0.")
    if not c.optimizer.lr > 0:
        _fail("optimizer.lr", f"must be > 0; got {c.optimizer.lr}.")
    if c.optimizer.weight_decay < 0:
        _fail("optimizer.weight_decay", f"must be >= 0; got {c.optimizer.weight_decay}.")
    if c.schedule.warmup_iterations < 0:
        _fail("schedule.warmup_iterations", "must be >= 0.")
    if not 0.0 <= c.schedule.min_lr_fraction <= 1.0:
        _fail("schedule.min_lr_fraction", "must be within [0, 1].")
