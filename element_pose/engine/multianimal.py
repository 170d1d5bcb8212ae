"""Several animals per frame: a top-down model of two networks of the bundled engine.

Why top-down (SLEAP's centroid + centred-instance design) rather than DeepLabCut's bottom-up
part-affinity assembly:

* **Assembly of touching look-alikes is learned, not solved.** The instance network sees a
  crop centred on one animal and is trained to output *that* animal's parts only; when two
  animals touch, which leg belongs to whom is decided from the whole crop's context instead of
  by a graph-matching step over part-affinity fields, which is where bottom-up methods swap
  parts between touching animals.
* **It is cheap on a CPU.** The centroid network runs on a strongly downscaled frame (the
  animal about 24 px long) and the instance network on small crops at full resolution, so
  a 1024 x 1024 video with two flies costs one 260 px and two 160 px forward passes per frame
  instead of one at full resolution; both train from random initialisation in minutes.
* **Identity comes for free.** When the individuals are visually distinct and labeled by name
  (``identity=True``), the instance network has one extra channel per name whose heatmap
  peaks at the crop centre when the centred animal is that individual (a heatmap-shaped
  classifier, trained with the same loss as the body parts); names are then assigned per
  frame by optimal matching (:func:`element_pose.engine.tracking.assign_identities`).

Both networks are :class:`~element_pose.engine.network.PoseNet` models trained by
:func:`element_pose.engine.train.train`: the centroid network with several instances per
channel (one peak per animal), the instance network on crops cut around each labeled animal,
with validation, early stopping and resumable checkpoints as for one animal.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from scipy.optimize import linear_sum_assignment
from tqdm.auto import tqdm

from element_pose.engine.augment import (
    affine_matrix,
    apply_affine,
    flip_permutation,
    lateral_pairs,
)
from element_pose.engine.autoconfig import (
    ITERATION_BUDGET,
    REFERENCE_CROP,
    STRIDE_COST,
    TRAINING_MINUTES,
    TRAINING_OVERHEAD,
    resolve_flip,
)
from element_pose.engine.checkpoint import FORMAT_VERSION, MODEL_KIND, atomic_save, load_model_file
from element_pose.engine.config import ConfigError, EngineConfig, _build, _to_plain
from element_pose.engine.data import validate_images
from element_pose.engine.predict import (
    PoseModel,
    batches_by_shape,
    iter_video_batches,
    model_from_payload,
)
from element_pose.engine.sides import SideRules, decode_with_sides, learn_sides
from element_pose.engine.targets import find_peaks
from element_pose.engine.train import (
    TrainResult,
    choose_cpu_bf16,
    library_versions,
    measure_iteration_seconds,
    train,
)

logger = logging.getLogger(__name__)

#: Wanted length (network px) of an animal on the centroid network's input.
CENTROID_ANIMAL_PX = 24.0
#: Largest training crop (network px) of the centroid network.
CENTROID_CROP = 160
#: Prefix of the instance network's identity channels.
IDENTITY_PREFIX = "identity:"


@dataclass(frozen=True)
class MultiAnimalConfig:
    """Settings of a multi-animal model (the ``"multianimal"`` section of training params).

    Attributes
    ----------
    max_animals : int or "auto"
        Most animals detected per frame (``"auto"``: the most labeled in one frame).
    identity : bool
        Learn to tell the labeled individuals apart by their looks (they must be visually
        distinct and labeled by name, e.g. "female" / "male"). Without it, animals are
        anonymous and linked over time by the tracker only.
    centroid_input_scale : float or "auto"
        Scale of the frames for the centroid network (``"auto"``: the median animal about
        24 px long).
    centroid_iterations, instance_iterations : int or "auto"
        Training length of each network (``"auto"``: 40 % and 60 % of the single-animal time
        budget, see :mod:`element_pose.engine.autoconfig`).
    instance_crop_size : int or "auto"
        Side of the crop around each animal, in pixels at ``instance_input_scale``
        (``"auto"``: 1.15 x the largest labeled animal, rounded up to 32).
    instance_input_scale : float or "auto"
        Scale of the frames for the instance network (``"auto"``: 1, or smaller so the
        crop stays <= 320 px).
    detection_threshold : float
        Smallest centroid confidence of a detected animal.
    min_distance : float or "auto"
        Two detections closer than this (pixels, mean over shared parts) are one animal
        (``"auto"``: a fifth of the median animal length).
    align : bool or "auto"
        Egocentric crops: turn every instance crop so the animal's body axis points up, as
        LEAP and DeepPoseKit do for flies. The centroid network also learns the two parts of
        ``align_parts`` and the axis between them sets each crop's angle, so the instance
        network never has to learn the animal at every orientation (its rotation
        augmentation drops to +-15 degrees, for the error of the predicted axis).
        ``"auto"``: when the labels have a body axis (see ``align_parts``).
    align_parts : list of two str or "auto"
        The body axis, the part turned up first (``"auto"``: among parts labeled on >= 90 %
        of the animals and a quarter of the median animal length apart, the pair under which
        the turned animals scatter least, :func:`choose_axis`).
    flip : bool or "auto"
        Mirror half of the instance network's training crops, swapping the left/right twins
        named in the body parts (``wingL`` / ``wingR``): each labeled pose also teaches its
        mirror image, so a pose shown on one side only is learned on both (sleap-fly-clip:
        the female's hind and mid legs of the test frames lie far from every training pose
        twice as often without it). ``"auto"``: when every left/right name has its twin
        (:func:`~element_pose.engine.autoconfig.resolve_flip`) and there is no ``identity``
        output (trained on mirrored flies, a fly model named them right on 83 % of the test
        frames instead of 100 %, BENCHMARKS.md); ``True`` makes a missing twin an error.
        ``flip_pairs`` set in the training config are used as they are.
    flip_test : bool or "auto"
        At inference the instance network also sees every crop mirrored, its left/right
        channels swapped back, and the two outputs are averaged (twice the instance
        network's work; the identity channels keep the unmirrored answer). ``"auto"``: when
        every left/right name has its twin.
    sides : bool or "auto"
        Keep left/right parts on the side of the body axis where the labels always put them
        (:mod:`~element_pose.engine.sides`). ``"auto"``: where the labels show such a rule;
        ``True`` makes its absence an error.
    instance_backbone_stride : {8, 16, 32} or "auto"
        Where the instance network's backbone is cut (``backbone_stride`` of the instance
        network only; the centroid network keeps the training config's). A shorter backbone
        sees less of the crop at once, so it learns each part's own look more than whole
        poses, which carries over better to poses the training frames do not show.
        ``"auto"``: the training config's ``backbone_stride``.
    instance_shift : float or "auto"
        How far the instance network's training crops are shifted off their animal's centre,
        as a fraction of the crop side (the instance network's ``augmentation.translate``;
        the centroid network keeps the training config's). At inference a crop is centred on
        the centroid network's peak, which strays from the animal's centre when animals
        touch, so the instance network must find the animal it is meant for off-centre too.
        ``"auto"``: the training config's ``augmentation.translate`` where it is set, else a
        quarter of the median animal length (sleap-fly-clip: the centroid peaks of touching flies
        were 20-27 px off; with +-5 px shifts the crop on one fly returned the other in 2 % of
        the test frames, with +-24 px in 0.4 %, BENCHMARKS.md).
    recentre : bool
        At inference, cut each animal's crop a second time, centred on the box around the
        parts the first pass found (as the training crops are centred on the labeled box), and
        keep the second pass's parts and identity: the centroid peak of an animal touching
        another strays towards it, and a crop that far off-centre named the flies wrongly
        (sleap-fly-clip: names right on 93.8 % of the test frames with one pass, 99.2 % with
        two, BENCHMARKS.md). Twice the instance network's work. Off by default: on the
        synthetic pair of the tests, whose identity output is barely learned, it lowered the
        names from 100 % to 89 %.
    search_missed : bool
        In frames where the crops found fewer than ``max_animals`` distinct animals, cut
        every crop whose animal lies off its centre again, half-way further from that animal
        (:func:`second_look_centres`): a crop centred between two close animals returns one
        of them, which another crop may have returned already, and the other animal is then
        on the far side of the crop (sleap-fly-clip: 6 test frames with a missed fly, where
        the flies came closer than in any training frame, BENCHMARKS.md). Costs a pass of the
        instance network only in such frames.
    crowd : float
        Add this fraction of extra instance training crops, copies of the others with a second
        animal cut out of a training frame (a soft mask around its parts, turned at random)
        pasted beside the centred one, 0.5-0.9 animal lengths away and covering none of its
        labeled parts. The instance network then learns to return the centred animal when
        another is closer than the training frames ever show them (sleap-fly-clip: the two
        flies sit 100 px apart in every training frame and come within 73 px in the test
        frames, where crops returned parts of both). 0 (off) by default: with 1.0 a fly model
        missed the fewest flies of three trainings but named them right on 78 % of the test
        frames instead of 99 % (BENCHMARKS.md).
    """

    max_animals: int | Literal["auto"] = "auto"
    identity: bool = False
    centroid_input_scale: float | Literal["auto"] = "auto"
    centroid_iterations: int | Literal["auto"] = "auto"
    instance_iterations: int | Literal["auto"] = "auto"
    instance_crop_size: int | Literal["auto"] = "auto"
    instance_input_scale: float | Literal["auto"] = "auto"
    detection_threshold: float = 0.2
    min_distance: float | Literal["auto"] = "auto"
    align: bool | Literal["auto"] = False
    align_parts: tuple[str, ...] | Literal["auto"] = "auto"
    flip: bool | Literal["auto"] = "auto"
    flip_test: bool | Literal["auto"] = "auto"
    sides: bool | Literal["auto"] = "auto"
    instance_backbone_stride: int | Literal["auto"] = "auto"
    instance_shift: float | Literal["auto"] = "auto"
    recentre: bool = False
    search_missed: bool = True
    crowd: float = 0.0

    @classmethod
    def from_dict(cls, d: dict | None = None) -> MultiAnimalConfig:
        """Validate a plain dict (missing keys take defaults); :class:`ConfigError` names
        the offending key."""
        out = _build(cls, {} if d is None else d, "multianimal.")
        for key in ("max_animals", "centroid_iterations", "instance_iterations",
                    "instance_crop_size"):
            value = getattr(out, key)
            if value != "auto" and value < 1:
                raise ConfigError(f"Config key 'multianimal.{key}' must be >= 1, got {value}.")
        for key in ("centroid_input_scale", "instance_input_scale", "min_distance"):
            value = getattr(out, key)
            if value != "auto" and not value > 0:
                raise ConfigError(f"Config key 'multianimal.{key}' must be > 0, got {value}.")
        if out.align_parts != "auto" and (len(out.align_parts) != 2
                                          or out.align_parts[0] == out.align_parts[1]):
            raise ConfigError("Config key 'multianimal.align_parts' must name two different "
                              f"body parts (front, back), got {list(out.align_parts)}.")
        if not 0 <= out.crowd <= 4:
            raise ConfigError("Config key 'multianimal.crowd' must be within [0, 4] (extra "
                              f"crowded crops per training crop), got {out.crowd}.")
        if out.instance_shift != "auto" and not 0 <= out.instance_shift < 0.5:
            raise ConfigError("Config key 'multianimal.instance_shift' must be within [0, 0.5) "
                              f"(a fraction of the crop side), got {out.instance_shift}; "
                              "0.15 shifts a 160 px crop by up to 24 px.")
        if out.instance_backbone_stride not in ("auto", 8, 16, 32):
            raise ConfigError("Config key 'multianimal.instance_backbone_stride' must be 8, 16, "
                              f"32 or 'auto', got {out.instance_backbone_stride!r}.")
        if not 0 < out.detection_threshold < 1:
            raise ConfigError("Config key 'multianimal.detection_threshold' must be within "
                              f"(0, 1), got {out.detection_threshold}.")
        return out

    def to_dict(self) -> dict:
        """Plain JSON types."""
        return _to_plain(self)


def instance_boxes(keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre (box around the visible parts) and extent (longer box side) of each instance.

    ``keypoints`` is (..., K, 2); returns (..., 2) centres and (...) extents, NaN for
    instances without a visible part.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an unlabeled instance is normal
        lo, hi = np.nanmin(kp, axis=-2), np.nanmax(kp, axis=-2)
    return (lo + hi) / 2.0, (hi - lo).max(axis=-1)


def choose_axis(keypoints: np.ndarray, bodyparts: Sequence[str], median_extent: float
                ) -> tuple[tuple[str, str], str]:
    """The body axis of egocentric crops (front, back) and why.

    Among parts labeled on >= 90 % of the animals and at least a quarter of
    ``median_extent`` apart on average (a short axis gives a noisy angle), the pair under
    which the turned animals scatter least: the mean over body parts of the spread of their
    egocentric positions. A distance alone would not do: a wing keeps its distance from the
    thorax while it swings.
    """
    kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, len(bodyparts), 2)
    kp = kp[np.isfinite(kp).all(axis=-1).any(axis=-1)]
    seen = np.isfinite(kp).all(axis=-1).mean(axis=0)
    best, best_spread = None, math.inf
    for a in range(len(bodyparts)):
        for b in range(len(bodyparts)):
            if a == b or min(seen[a], seen[b]) < 0.9:
                continue
            if np.nanmean(np.linalg.norm(kp[:, a] - kp[:, b], axis=-1)) < 0.25 * median_extent:
                continue
            x, y = _turn(kp[..., 0] - kp[:, b, None, 0], kp[..., 1] - kp[:, b, None, 1],
                         axis_angles(kp, a, b)[:, None])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a part never labeled
                spread = float(np.nanmean(np.sqrt(np.nanvar(x, axis=0) + np.nanvar(y, axis=0))))
            if spread < best_spread - 1e-9:
                best, best_spread = (bodyparts[a], bodyparts[b]), spread
    if best is None:
        raise ConfigError(
            "multianimal.align is on, but no two body parts are labeled on >= 90 % of the "
            "animals at least a quarter of the animal's length apart; name the body axis with "
            "'multianimal.align_parts' (front, back), or set 'multianimal.align' to false.")
    return best, (f"the parts scatter least around it: {best_spread:.1f} px on average in the "
                  "turned crops, over the pairs of parts labeled on >= 90 % of the animals")


def axis_angles(keypoints: np.ndarray, front: int, back: int) -> np.ndarray:
    """Crop angles (degrees, as :func:`~element_pose.engine.augment.affine_matrix` takes them)
    that turn the back -> front axis of each animal to point up; 0 where a part is missing.

    ``keypoints`` is (..., K, 2); returns (...).
    """
    v = np.asarray(keypoints)[..., front, :] - np.asarray(keypoints)[..., back, :]
    angle = np.degrees(np.arctan2(v[..., 1], v[..., 0])) + 90.0
    return np.where(np.isfinite(angle), angle, 0.0)


def egocentric_centres(keypoints: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Centre of the box around each animal's parts *in its turned crop*, in frame pixels.

    Training crops are centred on the labeled box of the turned animal, so the centroid
    network must learn that point (not the box centre in the frame, which differs for an
    animal at an angle). ``keypoints`` (N, M, K, 2), ``angles`` (N, M) degrees; (N, M, 2).
    """
    u, v = _turn(keypoints[..., 0], keypoints[..., 1], np.asarray(angles)[..., None])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an unlabeled instance is normal
        cu = (np.nanmin(u, axis=-1) + np.nanmax(u, axis=-1)) / 2.0
        cv = (np.nanmin(v, axis=-1) + np.nanmax(v, axis=-1)) / 2.0
    return np.stack(_turn(cu, cv, -np.asarray(angles)), axis=-1)


def _turn(x: np.ndarray, y: np.ndarray, angle_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points turned as :func:`~element_pose.engine.augment.affine_matrix`'s rotation turns
    them (``-angle_deg`` turns them back)."""
    a = np.radians(angle_deg)
    cos, sin = np.cos(a), np.sin(a)
    return cos * x + sin * y, -sin * x + cos * y


def _round_up(value: float, multiple: int = 32) -> int:
    return int(math.ceil(value / multiple) * multiple)


def _budget_iterations(crop: int, stride: int, n: int, share: float,
                       seconds_per_iteration: float | None = None,
                       max_seconds: float | None = None) -> tuple[int, str]:
    """Iterations that spend ``share`` of the automatic time budget on ``crop`` px crops, at
    most 30 passes over ``n`` samples; and the reason.

    At a measured speed the budget is ``max_seconds`` or ``TRAINING_MINUTES``; without one,
    the single-animal cost model stands in (``ITERATION_BUDGET`` reference units).
    """
    passes = max(30 * n, 1000)
    if seconds_per_iteration:
        budget = max_seconds or TRAINING_MINUTES * 60
        fit = share * budget / (seconds_per_iteration * TRAINING_OVERHEAD)
        why = (f"{share:.0%} of {budget / 60:.1f} training minutes at the measured "
               f"{seconds_per_iteration:.3f} s per iteration")
    else:
        cost = (crop / REFERENCE_CROP) ** 2 * STRIDE_COST.get(stride, 1.0)
        fit = ITERATION_BUDGET * share / cost
        why = f"{share:.0%} of the modelled time budget"
    if passes < fit:
        return int(round(passes / 100.0) * 100), f"30 passes over {n} samples (within {why})"
    return max(int(fit // 100 * 100), 500), why


@dataclass
class MultiAnimalPlan:
    """The resolved multi-animal settings and the two networks' configs, with reasons."""

    multianimal: MultiAnimalConfig
    centroid: EngineConfig
    instance: EngineConfig
    report: dict = field(default_factory=dict)
    sides: SideRules | None = None


def plan(image_sizes: Sequence[tuple[int, int]], keypoints: np.ndarray, config: EngineConfig,
         ma: MultiAnimalConfig, seconds_per_iteration: dict[str, float] | None = None,
         bodyparts: Sequence[str] | None = None) -> MultiAnimalPlan:
    """Resolve the ``"auto"`` multi-animal settings from the labels (N, M, K, 2).

    ``bodyparts`` (the K names) are needed for ``align``.

    ``seconds_per_iteration`` (``{"centroid": s, "instance": s}``, measured on the training
    device) makes the automatic iteration counts fit the time budget on this machine.
    """
    speed = seconds_per_iteration or {}
    _, extent = instance_boxes(keypoints)
    labeled = np.isfinite(extent)
    if not labeled.any():
        raise ValueError("No labeled animal in the training frames: nothing to learn from.")
    median, largest = float(np.median(extent[labeled])), float(extent[labeled].max())
    frame_side = max(max(w, h) for w, h in image_sizes)
    chosen: dict = {}

    def pick(key: str, value, reason: str):
        chosen[key] = {"value": value, "reason": reason}
        return value

    max_animals = ma.max_animals
    if max_animals == "auto":
        max_animals = pick("max_animals", int(labeled.sum(axis=1).max()),
                           "the most animals labeled in one frame")
    cscale = ma.centroid_input_scale
    if cscale == "auto":
        cscale = min(1.0, max(CENTROID_ANIMAL_PX / max(median, 1.0), 64 / frame_side))
        cscale = pick("centroid_input_scale", math.floor(cscale * 1000) / 1000,
                      f"the median animal ({median:.0f} px) about {CENTROID_ANIMAL_PX:.0f} px long")
    iscale = ma.instance_input_scale
    if iscale == "auto":
        iscale = pick("instance_input_scale", min(1.0, math.floor(280 / largest * 1000) / 1000),
                      "full resolution unless the largest animal is over 280 px")
    crop = ma.instance_crop_size
    if crop == "auto":
        crop = pick("instance_crop_size", max(64, _round_up(1.15 * largest * iscale)),
                    f"1.15 x the largest labeled animal ({largest:.0f} px), rounded up to 32")
    min_distance = ma.min_distance
    if min_distance == "auto":
        min_distance = pick("min_distance", round(median / 5.0, 2),
                            "a fifth of the median animal length")
    axis, align = ma.align_parts, ma.align
    if align is not False:
        names = [f"part{k}" for k in range(keypoints.shape[2])] if bodyparts is None \
            else list(bodyparts)
        if axis == "auto":
            try:
                axis, why = choose_axis(keypoints, names, median)
            except ConfigError:
                if align is True:
                    raise
                align = pick("align", False, "no two parts labeled on >= 90 % of the animals "
                             "make a body axis a quarter of the animal long")
            else:
                axis = pick("align_parts", list(axis), why)
        if align is not False:
            unknown = [a for a in axis if a not in names]
            if unknown:
                raise ConfigError(f"multianimal.align_parts names {unknown}, which the dataset "
                                  f"does not label; its body parts are {names}.")
            if align == "auto":
                align = pick("align", True, "a body axis was found: egocentric crops")
    n_frames, n_instances = len(keypoints), int(labeled.sum())

    # The centroid network trains on crops of at most CENTROID_CROP px (over six animal
    # lengths of context) rather than whole frames: a crop costs a third of a 272 px frame,
    # so the same time buys three times the iterations; it runs on whole frames all the same.
    ccrop = min(_round_up(frame_side * cscale - 1, 16), CENTROID_CROP)
    cits = ma.centroid_iterations
    if cits == "auto":
        cits, why = _budget_iterations(ccrop, 4, n_frames, 0.4, speed.get("centroid"),
                                       config.max_seconds)
        cits = pick("centroid_iterations", cits, why)
    its = ma.instance_iterations
    if its == "auto" and config.iterations == "auto":
        its, why = _budget_iterations(int(crop), 4, n_instances, 0.6, speed.get("instance"),
                                      config.max_seconds)
        its = pick("instance_iterations", its, why)
    length = {} if its == "auto" else {"iterations": int(its), "epochs": None}
    centroid = config.replace(
        input_scale=float(cscale), crop_size=int(ccrop), output_stride=4, iterations=int(cits),
        epochs=None, validation_fraction=0.0, flip_pairs=[],
        augmentation={**_to_plain(config.augmentation), "flip": 0.0, "part_crop_fraction": 0.0})
    aug = _to_plain(config.augmentation)
    # Crops stay centred on their animal (the network must learn which animal is meant):
    # small shifts, no part-targeted crops; zoom and rotation as for any freely moving animal.
    # Egocentric crops are already turned to the body axis: rotation covers its error only.
    rotation = 15.0 if align else 180.0
    for key, value in (("rotation", rotation), ("scale", [0.9, 1.1])):
        if aug[key] == "auto":
            aug[key] = value
    shift = ma.instance_shift
    if shift == "auto" and aug["translate"] != "auto":
        shift = pick("instance_shift", float(aug["translate"]),
                     "the training config's augmentation.translate")
    elif shift == "auto":
        shift = pick("instance_shift", round(min(0.25, median / 4.0 / int(crop)), 3),
                     f"a quarter of the median animal ({median:.0f} px), as far as the centroid "
                     "peak strays from an animal's centre when animals touch")
    aug["translate"] = float(shift)
    aug.update(crop_around_keypoints=1.0, part_crop_fraction=0.0)
    stride = config.output_stride
    if stride == "auto":
        # Each channel holds one part of the centred animal, so parts close to each other
        # (a fly's eyes and head) never share a heatmap; a coarser heatmap learns much
        # faster from scratch (sleap-fly-clip: stride 2 was chosen by the single-animal rule
        # and its legs were still 40-50 px off after 2200 iterations, BENCHMARKS.md).
        stride = pick("instance_output_stride", 4,
                      "one centred animal per crop: stride 4, whatever the part spacing")
    backbone = config.backbone_stride
    if ma.instance_backbone_stride != "auto":
        backbone = ma.instance_backbone_stride
        if stride != "auto" and stride > backbone:
            raise ConfigError(f"multianimal.instance_backbone_stride ({backbone}) must be >= "
                              f"the output stride ({stride}); use {max(stride, 8)} or more.")
    instance = config.replace(input_scale=1.0, crop_size=int(crop), augmentation=aug,
                              output_stride=stride, backbone_stride=backbone, **length)
    flip = ma.flip
    if config.flip_pairs not in ((), "auto"):
        flip = instance.augmentation.flip > 0  # the user's own pairs
    elif flip is False or bodyparts is None or (flip == "auto" and ma.identity):
        instance = instance.replace(flip_pairs=[], augmentation={**aug, "flip": 0.0})
        if flip == "auto" and ma.identity:
            pick("flip", False, "no mirrored crops with an identity output: trained on mirror "
                 "images, the names of a fly model were right on 83 % of the test frames "
                 "instead of 100 %")
        flip = False
    else:
        instance, why = resolve_flip(instance.replace(flip_pairs="auto"), bodyparts,
                                     required=flip is True)
        flip = pick("flip", bool(instance.flip_pairs), why["reason"])
    flip_test = ma.flip_test
    if flip_test == "auto":
        pairs, unpaired = lateral_pairs(bodyparts or [])
        flip_test = pick("flip_test", bool(pairs) and not unpaired,
                         "each crop also seen mirrored, its left/right parts swapped back"
                         if pairs and not unpaired else "no left/right twins to swap")
    sides = None
    if ma.sides is not False:
        sides, why = learn_sides(keypoints, bodyparts or [])
        if sides is None and ma.sides is True:
            raise ConfigError("multianimal.sides is true, but "
                              f"{why.removeprefix('no rule: ')}; set it to 'auto' or false.")
        pick("sides", sides is not None, why)
    resolved = MultiAnimalConfig.from_dict({
        **ma.to_dict(), "max_animals": int(max_animals), "centroid_input_scale": float(cscale),
        "instance_input_scale": float(iscale), "instance_crop_size": int(crop),
        "min_distance": float(min_distance), "centroid_iterations": int(cits),
        "instance_iterations": its, "align": bool(align),
        "align_parts": list(axis) if align else "auto", "flip": bool(flip),
        "flip_test": bool(flip_test), "sides": sides is not None,
        "instance_backbone_stride": int(backbone), "instance_shift": float(shift)})
    report = {"stats": {"frames": n_frames, "instances": n_instances,
                        "median_animal_px": median, "largest_animal_px": largest,
                        "frame_side_px": frame_side}, "chosen": chosen}
    return MultiAnimalPlan(resolved, centroid, instance, report, sides)


def instance_crops(images: Sequence[np.ndarray], keypoints: np.ndarray, individuals: list[str],
                   crop_size: int, scale: float, identity: bool,
                   angles: np.ndarray | None = None, centres: np.ndarray | None = None
                   ) -> tuple[list[np.ndarray], np.ndarray, list[tuple[int, int]]]:
    """Training crops (1.5 x ``crop_size``) cut around each labeled animal (at ``centres``,
    (N, M, 2), default the box centres), turned by ``angles`` (N, M) degrees for egocentric
    crops.

    Returns the crops, their keypoints (n, K [+ C identity channels], 2) and the
    (frame, individual) index of each. Identity channel ``c`` is labeled at the crop centre
    when the animal is individual ``c``, NaN otherwise.
    """
    side = int(math.ceil(crop_size * 1.5))
    boxes, extent = instance_boxes(keypoints)
    centres = boxes if centres is None else centres
    crops, kps, index = [], [], []
    n_ids = len(individuals) if identity else 0
    for i, image in enumerate(images):
        for m in range(keypoints.shape[1]):
            if not np.isfinite(extent[i, m]):
                continue
            angle = 0.0 if angles is None else float(angles[i, m])
            matrix = affine_matrix(tuple(centres[i, m]), side, angle_deg=angle, zoom=scale)
            crops.append(cv2.warpAffine(image, matrix, (side, side), flags=cv2.INTER_LINEAR,
                                        borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0)))
            kp = apply_affine(keypoints[i, m], matrix)
            ids = np.full((n_ids, 2), np.nan)
            if identity:
                ids[m] = (side - 1) / 2.0
            kps.append(np.concatenate([kp, ids]))
            index.append((i, m))
    return crops, np.asarray(kps, dtype=np.float64), index


def animal_cutout(image: np.ndarray, keypoints: np.ndarray, side: int, scale: float = 1.0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """One animal cut out of its frame: a ``side`` px patch centred on the box around its
    parts (K, 2), and a soft mask (0-1) of its stick figure: a disc of a fifth of its length
    at the middle of its parts and a band a tenth of its length wide from there to each part,
    feathered (a hull around all parts would carry the background between spread legs)."""
    centre, extent = instance_boxes(keypoints)
    matrix = affine_matrix(tuple(centre), side, zoom=scale)
    patch = cv2.warpAffine(image, matrix, (side, side), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    pts = apply_affine(keypoints[np.isfinite(keypoints).all(axis=1)], matrix)
    length = float(extent) * scale
    mask = np.zeros((side, side), np.float32)
    middle = tuple(int(v) for v in np.median(pts, axis=0).round())
    cv2.circle(mask, middle, max(2, int(round(0.2 * length))), 1.0, -1)
    for x, y in pts.round().astype(int):
        cv2.line(mask, middle, (int(x), int(y)), 1.0, max(2, int(round(0.1 * length))))
    return patch, cv2.GaussianBlur(mask, (0, 0), max(1.0, 0.03 * length))


def paste_beside(crop: np.ndarray, keypoints: np.ndarray, patch: np.ndarray, mask: np.ndarray,
                 distance: float, rng: np.random.Generator, tries: int = 24) -> np.ndarray | None:
    """``crop`` with the animal of ``patch`` / ``mask`` pasted ``distance`` px from the crop
    centre in a random direction, turned at random; None when every try would cover one of
    the centred animal's labeled ``keypoints`` (K, 2) or a tenth of the hull around them."""
    side, pside = crop.shape[0], patch.shape[0]
    mid, pmid = (side - 1) / 2.0, (pside - 1) / 2.0
    labeled = keypoints[np.isfinite(keypoints).all(axis=1)].round().astype(int)
    inside = ((labeled >= 0) & (labeled < side)).all(axis=1)
    labeled = labeled[inside]
    body = np.zeros((side, side), np.uint8)
    if len(labeled) >= 3:
        cv2.fillConvexPoly(body, cv2.convexHull(labeled.astype(np.int32)), 1)
    body = body.astype(bool)
    for _ in range(tries):
        direction = rng.uniform(0.0, 2.0 * math.pi)
        matrix = cv2.getRotationMatrix2D((pmid, pmid), float(rng.uniform(0.0, 360.0)), 1.0)
        matrix[:, 2] += (mid + distance * math.cos(direction) - pmid,
                         mid + distance * math.sin(direction) - pmid)
        alpha = cv2.warpAffine(mask, matrix, (side, side), flags=cv2.INTER_LINEAR)
        if len(labeled) and (alpha[labeled[:, 1], labeled[:, 0]] > 0.5).any():
            continue
        if body.any() and (alpha[body] > 0.5).mean() > 0.1:
            continue
        moved = cv2.warpAffine(patch, matrix, (side, side), flags=cv2.INTER_LINEAR)
        a = alpha[..., None]
        return (crop * (1.0 - a) + moved * a).round().clip(0, 255).astype(np.uint8)
    return None


def crowded_crops(images: Sequence[np.ndarray], keypoints: np.ndarray, crops: list[np.ndarray],
                  crop_kps: np.ndarray, fraction: float, scale: float, seed: int
                  ) -> tuple[list[np.ndarray], np.ndarray]:
    """``fraction`` x ``len(crops)`` extra training crops: copies of random ``crops`` with a
    random other labeled animal of ``images`` / ``keypoints`` (N, M, K, 2) pasted beside the
    centred one, 0.5-0.9 median animal lengths from the crop centre (:func:`paste_beside`).

    The pasted animal gets no labels: the crop's keypoints (``crop_kps``, identity channels
    included) stay those of the centred animal.
    """
    rng = np.random.default_rng(seed)
    _, extent = instance_boxes(keypoints)
    donors = np.argwhere(np.isfinite(extent))
    median, largest = float(np.median(extent[np.isfinite(extent)])), float(np.nanmax(extent))
    pside = int(math.ceil(1.3 * largest * scale)) | 1
    k = keypoints.shape[2]
    out, kps = [], []
    for _ in range(int(round(fraction * len(crops)))):
        c = int(rng.integers(len(crops)))
        i, m = donors[rng.integers(len(donors))]
        patch, mask = animal_cutout(images[i], keypoints[i, m], pside, scale)
        pasted = paste_beside(crops[c], crop_kps[c, :k], patch, mask,
                              float(rng.uniform(0.5, 0.9)) * median * scale, rng)
        if pasted is not None:
            out.append(pasted)
            kps.append(crop_kps[c])
    return out, np.asarray(kps, dtype=np.float64).reshape(-1, *crop_kps.shape[1:])


def train_multianimal(images: Sequence[np.ndarray], keypoints: np.ndarray,
                      bodyparts: Sequence[str], individuals: Sequence[str], config: EngineConfig,
                      ma: MultiAnimalConfig, workdir: str | Path, progress: bool = True
                      ) -> TrainResult:
    """Train the centroid and instance networks and write one model file.

    Parameters
    ----------
    images : sequence of np.ndarray
        RGB uint8 frames (sizes may differ).
    keypoints : np.ndarray
        (N, M, K, 2): per frame, individual and body part x, y in pixels; NaN = not labeled.
    bodyparts, individuals : sequence of str
        K body-part and M individual names.
    config : EngineConfig
        The training settings both networks start from (backbone, optimiser, ...).
    ma : MultiAnimalConfig
        Multi-animal settings.
    workdir : str or Path
        Checkpoints of both networks (resumable) and the final model file.

    Returns
    -------
    TrainResult
        Curves of the instance network (its validation included) plus the centroid network's
        loss under ``auto_report["centroid"]``; the model file holds both networks.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    bodyparts, individuals = list(bodyparts), list(individuals)
    if kp.ndim != 4 or kp.shape[-1] != 2:
        raise ValueError(f"keypoints has shape {kp.shape}; a multi-animal model needs "
                         "(frames, individuals, bodyparts, 2).")
    if kp.shape[1:3] != (len(individuals), len(bodyparts)):
        raise ValueError(f"keypoints has {kp.shape[1]} individuals and {kp.shape[2]} body parts "
                         f"but {len(individuals)} individual and {len(bodyparts)} body-part "
                         "names were given.")
    if len(set(individuals)) != len(individuals):
        raise ValueError(f"An individual name appears twice: {individuals}.")
    imgs = validate_images(images)
    sizes = [(im.shape[1], im.shape[0]) for im in imgs]
    p = plan(sizes, kp, config, ma, bodyparts=bodyparts)
    n_channels = len(bodyparts) + (len(individuals) if p.multianimal.identity else 0)
    precision = None
    if config.cpu_bf16 == "auto":
        # one choice for both networks, timed on the costlier one; it sets their speed
        _, precision = choose_cpu_bf16(p.instance, n_channels)
        config = config.replace(cpu_bf16=precision["value"])
        p = plan(sizes, kp, config, ma, bodyparts=bodyparts)
    if "centroid_iterations" in p.report["chosen"] or "instance_iterations" in p.report["chosen"]:
        # time three steps of each network here, then plan the counts that fit the budget
        speed = {"centroid": measure_iteration_seconds(p.centroid,
                                                         3 if p.multianimal.align else 1),
                 "instance": measure_iteration_seconds(p.instance, n_channels)}
        p = plan(sizes, kp, config, ma, seconds_per_iteration=speed, bodyparts=bodyparts)
        p.report["seconds_per_iteration"] = speed
    if precision is not None:
        p.report["chosen"]["cpu_bf16"] = precision
    workdir = Path(workdir)
    centres, _ = instance_boxes(kp)
    angles = None
    if p.multianimal.align:
        front, back = (bodyparts.index(a) for a in p.multianimal.align_parts)
        angles = axis_angles(kp, front, back)
        centres = egocentric_centres(kp, angles)
    targets, target_names = centres[:, :, None, :], ["animal"]
    if p.multianimal.align:
        # the centroid network also finds both ends of the body axis of every animal
        targets = np.concatenate([targets, kp[:, :, [front, back]]], axis=2)
        target_names += [f"axis:{bodyparts[front]}", f"axis:{bodyparts[back]}"]
    logger.info("Training the centroid network (%s)", p.report["chosen"])
    cres = train(imgs, targets, target_names, p.centroid, workdir / "centroid",
                 progress=progress)
    crops, ikp, _ = instance_crops(imgs, kp, individuals, p.multianimal.instance_crop_size,
                                   p.multianimal.instance_input_scale, p.multianimal.identity,
                                   angles, centres)
    if p.multianimal.crowd > 0:
        extra, extra_kp = crowded_crops(imgs, kp, crops, ikp, p.multianimal.crowd,
                                        p.multianimal.instance_input_scale, config.seed)
        logger.info("Crowded crops: %d with a second animal pasted beside the centred one",
                    len(extra))
        crops, ikp = crops + extra, np.concatenate([ikp, extra_kp])
    channels = bodyparts + ([IDENTITY_PREFIX + n for n in individuals]
                            if p.multianimal.identity else [])
    logger.info("Training the instance network on %d animals", len(crops))
    # instance crops are decoded with the side rules, never with part relations: none are
    # learned, so none steer the choice of the instance network's snapshot either
    ires = train(crops, ikp, channels, p.instance.replace(part_relations=False),
                 workdir / "instance", progress=progress)
    cpay = torch.load(cres.checkpoint_path, map_location="cpu", weights_only=True)
    ipay = torch.load(ires.checkpoint_path, map_location="cpu", weights_only=True)
    report = {**p.report, "instance": ires.auto_report,
              "centroid": {"iterations": cres.iterations, "train_seconds": cres.train_seconds,
                           "learning_curve": cres.learning_curve.tolist()}}
    config_out = {**ires.config, "multianimal": p.multianimal.to_dict(),
                  "centroid": cres.config, "individuals": individuals}
    path = workdir / "model.pt"
    atomic_save({"kind": MODEL_KIND, "format_version": FORMAT_VERSION, "multianimal": True,
                 "bodyparts": bodyparts, "individuals": individuals,
                 "settings": p.multianimal.to_dict(), "centroid": cpay, "instance": ipay,
                 "sides": p.sides.to_dict() if p.sides else None,
                 "config": config_out,
                 "extra": {"versions": library_versions(), "auto_report": report}}, path)
    return TrainResult(
        checkpoint_path=path, learning_curve=ires.learning_curve,
        iterations=int(ires.iterations + cres.iterations),
        train_seconds=float(ires.train_seconds + cres.train_seconds), device=ires.device,
        versions=library_versions(), validation_curve=ires.validation_curve,
        best_iteration=ires.best_iteration, config=config_out, auto_report=report)


@dataclass
class MultiAnimalPoses:
    """Detections of :class:`MultiAnimalModel`.

    Attributes
    ----------
    poses : np.ndarray
        (F, M, K, 3) float32 [x, y, confidence] per frame, detection slot and body part
        (slots sorted by score; NaN rows where fewer animals were found).
    scores : np.ndarray
        (F, M) centroid confidence of each detection (NaN: none).
    identity : np.ndarray or None
        (F, M, C) probability that a detection is each named individual (identity models).
    """

    poses: np.ndarray
    scores: np.ndarray
    identity: np.ndarray | None


#: Parts found with at least this confidence place a re-cut crop (``recentre``).
RECENTRE_MIN_SCORE = 0.3


def _found_centre(parts: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre of the box around the parts (n, K, 3) found with some confidence, where at
    least three were; the old centre elsewhere."""
    xy, ok = parts[..., :2], parts[..., 2] >= RECENTRE_MIN_SCORE
    ok &= torch.isfinite(xy).all(dim=-1)
    inf = torch.full_like(xy, float("inf"))
    lo = torch.where(ok[..., None], xy, inf).amin(dim=1)
    hi = torch.where(ok[..., None], xy, -inf).amax(dim=1)
    enough = ok.sum(dim=1) >= 3
    return (torch.where(enough, (lo[:, 0] + hi[:, 0]) / 2, cx),
            torch.where(enough, (lo[:, 1] + hi[:, 1]) / 2, cy))


def _same_animal(a: np.ndarray, b: np.ndarray, limit: float) -> bool:
    """Two detections (K, 2+) are one animal: their parts are closer than ``limit`` at the
    median."""
    d = np.linalg.norm(a[:, :2] - b[:, :2], axis=1)
    return bool(np.isfinite(d).any() and np.nanmedian(d) < limit)


def second_look_centres(parts: torch.Tensor, frame_of: torch.Tensor, cx: torch.Tensor,
                        cy: torch.Tensor, max_animals: int, limit: float
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crops to cut a second time, in frames where the crops found fewer than
    ``max_animals`` distinct animals, and where.

    A crop centred between two close animals may return the other one (which another crop
    already returned, or which the centroid network missed): cut again half-way further from
    the animal it returned (the median of its confident parts), the animal left out is there.

    Parameters
    ----------
    parts : torch.Tensor
        (n, K, 3) what each crop returned, [x, y, confidence].
    frame_of, cx, cy : torch.Tensor
        (n,) frame and centre of each crop, strongest centroid peak first within a frame.
    max_animals : int
        Most animals per frame.
    limit : float
        Two answers closer than this (median over parts) are one animal; a crop whose
        animal is within it of the centre is not moved.

    Returns
    -------
    rows, x, y : torch.Tensor
        The crops to cut again and their new centres.
    """
    p = parts.detach().float().cpu().numpy()
    fo = frame_of.cpu().numpy()
    centre = torch.stack([cx, cy], dim=1).float().cpu().numpy()
    sure = np.isfinite(p[..., :2]).all(axis=-1) & (np.nan_to_num(p[..., 2]) >= RECENTRE_MIN_SCORE)
    rows, moved = [], []
    for f in np.unique(fo):
        here = np.flatnonzero(fo == f)
        distinct: list[int] = []
        for r in here:
            if not any(_same_animal(p[r], p[q], limit) for q in distinct):
                distinct.append(int(r))
        if len(distinct) >= max_animals:
            continue
        for r in here:
            if sure[r].sum() < 3:
                continue
            away = centre[r] - np.median(p[r, sure[r], :2], axis=0)
            if np.linalg.norm(away) > limit:
                rows.append(int(r))
                moved.append(centre[r] + away / 2.0)
    dev = parts.device
    if not rows:
        empty = torch.zeros(0, device=dev)
        return empty.long(), empty, empty
    xy = torch.as_tensor(np.asarray(moved), dtype=cx.dtype, device=dev)
    return torch.as_tensor(rows, device=dev), xy[:, 0], xy[:, 1]


class MultiAnimalModel:
    """A trained centroid + instance model ready for inference."""

    def __init__(self, payload: dict, device: str = "auto"):
        self.bodyparts = list(payload["bodyparts"])
        self.individuals = list(payload["individuals"])
        self.settings = MultiAnimalConfig.from_dict(payload["settings"])
        self.centroid = model_from_payload(payload["centroid"], device, "the centroid network")
        self.instance = model_from_payload(payload["instance"], device, "the instance network")
        self.config = self.instance.config
        #: The stored config: the instance network's, plus "multianimal" and "centroid".
        self.config_dict = dict(payload["config"])
        self.device = self.instance.device
        self._dev = self.instance._dev
        #: Channel permutation of a mirrored crop (None: the parts name no left/right twins);
        #: with ``flip_test`` the instance network also sees every crop mirrored and the two
        #: outputs are averaged.
        self.flip_perm = _flip_perm(self.instance.config, self.instance.bodyparts,
                                    self.bodyparts)
        # files written before these settings existed ran neither
        self.flip_test = payload["settings"].get("flip_test", False) is True
        #: Run the instance network a second time on crops re-cut around what it found.
        self.recentre = bool(self.settings.recentre)
        #: Cut crops again, pushed away from the animal they returned, in frames where
        #: fewer than ``max_animals`` distinct animals were found.
        self.search_missed = bool(self.settings.search_missed)
        #: Left/right parts kept on their side of the body axis (learned from the labels).
        self.sides = SideRules.from_dict(payload.get("sides"))

    @property
    def max_animals(self) -> int:
        """Most animals detected per frame."""
        return int(self.settings.max_animals)

    @torch.inference_mode()
    def _infer(self, frames: torch.Tensor, bgr: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(B, H, W, 3) uint8 on the device -> poses (B, M, K, 3), scores, identity."""
        s = self.settings
        x = frames.permute(0, 3, 1, 2)
        if bgr:
            x = x.flip(1)
        x = x.float()
        b, _, h, w = x.shape
        # 1. Centroids on the downscaled frame: every peak of the "animal" heatmap.
        cm = self.centroid
        cs = float(s.centroid_input_scale)
        ch, cw = max(1, int(round(h * cs))), max(1, int(round(w * cs)))
        small = F.interpolate(x, size=(ch, cw), mode="area") if (ch, cw) != (h, w) else x
        heat, off = cm.network(cm.network.normalize(small))
        m = self.max_animals
        found = find_peaks(heat, off, cm.network.output_stride, 2 * m,
                           s.detection_threshold)  # (B, 1 [+ 2 axis ends], 2M, 3)
        found[..., 0] = (found[..., 0] + 0.5) * (w / cw) - 0.5
        found[..., 1] = (found[..., 1] + 0.5) * (h / ch) - 0.5
        peaks = found[:, 0]
        # 2. The instance network on a crop centred on each centroid (turned to the body
        #    axis for egocentric models), then, with ``recentre``, on one re-cut around the
        #    parts it found.
        ok = torch.isfinite(peaks[..., 2])
        frame_of, slot = torch.nonzero(ok, as_tuple=True)
        k = len(self.bodyparts)
        n_ch = self.instance.network.num_keypoints
        # slots 0..2M-1: the centroid peaks; 2M..4M-1: second looks (``search_missed``)
        poses = torch.full((b, 4 * m, n_ch, 3), float("nan"), device=x.device)
        scores = torch.full((b, 4 * m), float("nan"), device=x.device)
        scores[:, :2 * m] = peaks[..., 2]
        if len(frame_of):
            crop = int(s.instance_crop_size)
            iscale = float(s.instance_input_scale)
            src = x
            if iscale != 1.0:
                src = F.interpolate(x, size=(max(1, round(h * iscale)), max(1, round(w * iscale))),
                                    mode="area" if iscale < 1 else "bilinear")
            cx = (peaks[frame_of, slot, 0] + 0.5) * iscale - 0.5
            cy = (peaks[frame_of, slot, 1] + 0.5) * iscale - 0.5
            if s.align is True:  # files written before the setting existed are not egocentric
                # an end over one animal length away (5 x min_distance) is not this one's
                angles = match_axis_angles(found.cpu().numpy(), 5.0 * float(s.min_distance))
                coarse = torch.as_tensor(angles,
                                         dtype=x.dtype, device=x.device)[frame_of, slot]
            else:
                coarse = None
            out = self._instance(src, frame_of, cx, cy, coarse, crop)
            if self.recentre:
                cx, cy = _found_centre(out[:, :k], cx, cy)
                out = self._instance(src, frame_of, cx, cy, coarse, crop)
            if self.search_missed:
                rows, nx, ny = second_look_centres(out[:, :k], frame_of, cx, cy, m,
                                                   float(s.min_distance) * iscale)
                if len(rows):
                    again = self._instance(src, frame_of[rows], nx, ny,
                                           None if coarse is None else coarse[rows], crop)
                    # an answer with fewer than three parts found is not an animal
                    sure = (again[:, :k, 2] >= RECENTRE_MIN_SCORE).sum(dim=1) >= 3
                    rows, again = rows[sure], again[sure]
                    # a second look takes a slot after the centroid peaks, and its crop's score
                    taken: dict[int, int] = {}
                    extra = []
                    for f in frame_of[rows].tolist():
                        taken[f] = taken.get(f, 0) + 1
                        extra.append(2 * m + taken[f] - 1)
                    extra = torch.as_tensor(extra, dtype=slot.dtype, device=slot.device)
                    scores[frame_of[rows], extra] = scores[frame_of[rows], slot[rows]]
                    frame_of = torch.cat([frame_of, frame_of[rows]])
                    slot = torch.cat([slot, extra])
                    out = torch.cat([out, again])
            out[..., 0] = (out[..., 0] + 0.5) / iscale - 0.5
            out[..., 1] = (out[..., 1] + 0.5) / iscale - 0.5
            poses[frame_of, slot] = out
        identity = None
        if n_ch > k:
            identity = poses[..., k:, 2]
            identity = identity / identity.sum(dim=-1, keepdim=True).clamp(min=1e-6)
        return poses[..., :k, :], scores, identity

    def _instance(self, src: torch.Tensor, frame_of: torch.Tensor, cx: torch.Tensor,
                  cy: torch.Tensor, angle: torch.Tensor | None, crop: int) -> torch.Tensor:
        """The instance network on crops centred on (cx, cy), turned by ``angle`` degrees
        (None: axis-aligned); returns (n, K + C, 3) in ``src`` pixels."""
        net = self.instance.network
        if angle is None:
            x1, y1 = cx - (crop - 1) / 2.0, cy - (crop - 1) / 2.0
            boxes = torch.stack([frame_of.to(src.dtype), x1, y1, x1 + crop, y1 + crop], dim=1)
            crops = torchvision.ops.roi_align(src, boxes, crop, 1.0, 1, aligned=True)
            hm, of = self._run_instance(crops)
            out = decode_with_sides(hm.float(), of.float(), net.output_stride, self.sides)  # (n, K + C, 3)
            out[..., 0] += x1[:, None]
            out[..., 1] += y1[:, None]
            return out
        hm, of = self._run_instance(rotated_crops(src, frame_of, cx, cy, angle, crop))
        out = decode_with_sides(hm.float(), of.float(), net.output_stride, self.sides)
        # crop pixels -> source pixels: the inverse of affine_matrix(centre, crop, angle)
        a = torch.deg2rad(angle)[:, None]
        cos, sin = torch.cos(a), torch.sin(a)
        du, dv = out[..., 0] - (crop - 1) / 2.0, out[..., 1] - (crop - 1) / 2.0
        out[..., 0] = cos * du - sin * dv + cx[:, None]
        out[..., 1] = sin * du + cos * dv + cy[:, None]
        return out

    def _run_instance(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmap logits and offsets of the instance network (averaged with the mirrored
        crops' under ``flip_test``)."""
        net = self.instance.network
        x = net.normalize(crops)
        hm, of = net(x)
        if not self.flip_test or self.flip_perm is None:
            return hm, of
        hm2, of2 = net(x.flip(-1))  # (n, K + C, h, w), (n, K + C, 2, h, w)
        k = len(self.bodyparts)
        perm = torch.as_tensor(self.flip_perm[:k], device=hm.device)
        # a mirrored heatmap cell j is cell w-1-j exactly (cell centres at j*s + (s-1)/2)
        hm2 = hm2.flip(-1)[:, perm]
        of2 = of2.flip(-1)[:, perm]
        of2 = torch.stack([-of2[:, :, 0], of2[:, :, 1]], dim=2)
        # the identity channels keep the unmirrored crop's answer: mirrored, a fly model's
        # names were right on 96 % of the test frames instead of 98 % (BENCHMARKS.md)
        hm, of = hm.float().clone(), of.float().clone()
        hm[:, :k] = (hm[:, :k] + hm2.float()) / 2
        of[:, :k] = (of[:, :k] + of2.float()) / 2
        return hm, of

    def _finish(self, poses: np.ndarray, scores: np.ndarray, identity: np.ndarray | None
                ) -> MultiAnimalPoses:
        """Drop duplicate detections of one animal, keep the ``max_animals`` best."""
        m, limit = self.max_animals, float(self.settings.min_distance)
        f = len(poses)
        out = np.full((f, m, *poses.shape[2:]), np.nan, dtype=np.float32)
        out_s = np.full((f, m), np.nan, dtype=np.float32)
        out_i = None if identity is None else np.full((f, m, identity.shape[2]), np.nan,
                                                      dtype=np.float32)
        for i in range(f):
            kept: list[int] = []
            for j in np.argsort(-np.nan_to_num(scores[i], nan=-1.0)):
                if not np.isfinite(scores[i, j]) or len(kept) == m:
                    break
                if not any(_same_animal(poses[i, j], poses[i, q], limit) for q in kept):
                    kept.append(int(j))
            out[i, :len(kept)] = poses[i, kept]
            out_s[i, :len(kept)] = scores[i, kept]
            if out_i is not None:
                out_i[i, :len(kept)] = identity[i, kept]
        return MultiAnimalPoses(out, out_s, out_i)

    def predict_frames(self, images: Sequence[np.ndarray], batch_size: int = 8
                       ) -> MultiAnimalPoses:
        """Detect the animals on RGB uint8 frames (sizes may differ)."""
        imgs = validate_images(images)
        parts = []
        order: list[int] = []
        for chunk, batch in batches_by_shape(imgs, batch_size):
            out = self._infer(torch.from_numpy(batch).to(self._dev))
            parts.append(tuple(None if t is None else t.cpu().numpy() for t in out))
            order.extend(chunk)
        result = self._concat(parts)
        inverse = np.argsort(order)
        return MultiAnimalPoses(result.poses[inverse], result.scores[inverse],
                                None if result.identity is None else result.identity[inverse])

    def _concat(self, parts: list[tuple]) -> MultiAnimalPoses:
        if not parts:
            k, m = len(self.bodyparts), self.max_animals
            return MultiAnimalPoses(np.zeros((0, m, k, 3), np.float32),
                                    np.zeros((0, m), np.float32), None)
        poses = np.concatenate([p[0] for p in parts])
        scores = np.concatenate([p[1] for p in parts])
        identity = None if parts[0][2] is None else np.concatenate([p[2] for p in parts])
        return self._finish(poses, scores, identity)

    def predict_video(self, paths: str | Path | Sequence[str | Path], batch_size: int = 8,
                      progress: bool = True, stop: int | None = None
                      ) -> tuple[MultiAnimalPoses, dict]:
        """Detect the animals on every frame of one video (or several, concatenated).

        Returns the detections and ``frames``, ``seconds`` and ``fps`` (decoding included).
        """
        if isinstance(paths, (str, Path)):
            paths = [paths]
        bar = tqdm(desc="analyse", unit="frame", disable=not progress, dynamic_ncols=True)
        parts, frames = [], 0
        t0 = time.perf_counter()
        for batch in _batches(paths, batch_size, stop):
            out = self._infer(torch.from_numpy(batch).to(self._dev), bgr=True)
            parts.append(tuple(None if t is None else t.cpu().numpy() for t in out))
            frames += len(batch)
            bar.update(len(batch))
        bar.close()
        seconds = time.perf_counter() - t0
        return self._concat(parts), {"frames": frames, "seconds": seconds,
                                     "fps": frames / seconds if seconds > 0 else float("nan")}


def _flip_perm(config: EngineConfig, channels: Sequence[str], bodyparts: Sequence[str]
               ) -> np.ndarray | None:
    """Channel permutation of a mirrored instance crop: the trained flip pairs, else the
    left/right twins of the body-part names (None when a lateral name has no twin)."""
    pairs = config.flip_pairs
    if not pairs:
        pairs, unpaired = lateral_pairs(bodyparts)
        if unpaired or not pairs:
            return None
    return flip_permutation(list(channels), pairs)


def match_axis_angles(found: np.ndarray, max_distance: float = math.inf) -> np.ndarray:
    """Crop angle (degrees) of each detected animal from the centroid network's axis peaks.

    ``found`` is (B, 3, P, 3): peaks of the animal, front and back maps. Each animal gets the
    front and the back peak of an optimal assignment by distance (so two touching animals do
    not share one), unless that peak is over ``max_distance`` away (another animal's end,
    when its own was missed); a missing end is replaced by the animal's centre. Returns
    (B, P); 0 where neither end was found.
    """
    b, _, n, _ = found.shape
    angles = np.zeros((b, n))
    for i in range(b):
        animals = found[i, 0, :, :2]
        alive = np.flatnonzero(np.isfinite(found[i, 0, :, 2]))
        ends = []
        for c in (1, 2):
            end = animals.copy()
            cand = np.flatnonzero(np.isfinite(found[i, c, :, 2]))
            if len(alive) and len(cand):
                cost = np.linalg.norm(animals[alive, None] - found[i, c, cand, None, :2]
                                      .transpose(1, 0, 2), axis=-1)
                rows, cols = linear_sum_assignment(cost)
                near = cost[rows, cols] <= max_distance
                end[alive[rows[near]]] = found[i, c, cand[cols[near]], :2]
            ends.append(end)
        v = ends[0] - ends[1]
        angle = np.degrees(np.arctan2(v[:, 1], v[:, 0])) + 90.0
        angles[i] = np.where(np.isfinite(angle) & (np.abs(v).sum(axis=1) > 0), angle, 0.0)
    return angles


def rotated_crops(src: torch.Tensor, frame_of: torch.Tensor, cx: torch.Tensor,
                  cy: torch.Tensor, angle: torch.Tensor, crop: int) -> torch.Tensor:
    """``crop`` px crops of ``src`` (B, 3, H, W) centred on (cx, cy), turned by ``angle``
    degrees: the same pixels as ``cv2.warpAffine`` with
    :func:`~element_pose.engine.augment.affine_matrix` (centre, crop, angle) gives in training.

    An axis-aligned crop large enough for any angle is cut first (``roi_align``), so the
    rotation (``grid_sample``) only touches small images.
    """
    big = int(math.ceil(crop * math.sqrt(2))) + 2
    cx, cy = cx.to(src.dtype), cy.to(src.dtype)
    # whole-pixel corners: roi_align then copies pixels, and grid_sample alone interpolates
    # (as warpAffine does once in training)
    x1, y1 = torch.floor(cx - (big - 1) / 2.0), torch.floor(cy - (big - 1) / 2.0)
    boxes = torch.stack([frame_of.to(src.dtype), x1, y1, x1 + big, y1 + big], dim=1)
    around = torchvision.ops.roi_align(src, boxes, big, 1.0, 1, aligned=True)
    a = torch.deg2rad(angle.to(src.dtype))[:, None, None]
    cos, sin = torch.cos(a), torch.sin(a)
    d = torch.arange(crop, dtype=src.dtype, device=src.device) - (crop - 1) / 2.0
    du, dv = d[None, None, :], d[None, :, None]  # (1, 1, crop) across, (1, crop, 1) down
    qx = cos * du - sin * dv + (cx - x1)[:, None, None]
    qy = sin * du + cos * dv + (cy - y1)[:, None, None]
    grid = torch.stack([(2 * qx + 1) / big - 1, (2 * qy + 1) / big - 1], dim=-1)
    return F.grid_sample(around, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def _batches(paths: Sequence[str | Path], batch_size: int, stop: int | None
             ) -> Iterator[np.ndarray]:
    return iter_video_batches([Path(p) for p in paths], batch_size, stop=stop)


def load_multianimal_model(path: str | Path, device: str = "auto") -> MultiAnimalModel:
    """Load a file written by :func:`train_multianimal`.

    Raises
    ------
    ValueError
        Not a multi-animal model file (a single-animal one: use
        :func:`element_pose.engine.predict.load_model`).
    """
    payload = load_model_file(path)
    if not payload.get("multianimal"):
        raise ValueError(f"{path} holds a single-animal model; it detects one animal per frame. "
                         "Load it with element_pose.engine.predict.load_model, or train a "
                         "multi-animal model on a dataset with several individuals.")
    return MultiAnimalModel(payload, device=device)


def load_any_model(path: str | Path, device: str = "auto") -> PoseModel | MultiAnimalModel:
    """A single-animal :class:`PoseModel` or a :class:`MultiAnimalModel`, as the file holds."""
    payload = load_model_file(path)  # read once: the file says which kind it holds
    if payload.get("multianimal"):
        return MultiAnimalModel(payload, device=device)
    return model_from_payload(payload, device, str(path))
