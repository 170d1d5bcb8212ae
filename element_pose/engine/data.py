"""Validation of labeled frames and the deterministic, resumable batch stream for training."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from element_pose.engine.augment import augment_sample, flip_permutation, scale_image
from element_pose.engine.background import in_background
from element_pose.engine.config import EngineConfig


def validate_images(images: Sequence[np.ndarray], what: str = "images") -> list[np.ndarray]:
    """Check frames are RGB uint8 (H, W, 3); gray (H, W) frames are expanded to RGB."""
    if isinstance(images, np.ndarray) and images.ndim in (3, 4) and images.dtype == np.uint8:
        images = list(images) if images.ndim == 4 else [images]
    out = []
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.dtype != np.uint8:
            raise ValueError(f"{what}[{i}] has dtype {image.dtype}; frames must be uint8 RGB "
                             "(convert with np.clip(x, 0, 255).astype(np.uint8)).")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
            raise ValueError(f"{what}[{i}] has shape {image.shape}; expected (height, width, 3) "
                             "RGB or (height, width) gray.")
        out.append(np.ascontiguousarray(image))
    return out


def validate_training_data(images: Sequence[np.ndarray], keypoints: np.ndarray,
                           bodyparts: Sequence[str]) -> tuple[list[np.ndarray], np.ndarray]:
    """Check labeled frames before training.

    Returns the images (as RGB uint8 arrays) and keypoints as float64 (N, K, 2).

    Raises
    ------
    ValueError
        Empty data, shape or body-part count mismatches, infinite coordinates.
    """
    imgs = validate_images(images)
    if len(imgs) == 0:
        raise ValueError("No training frames: images is empty.")
    bodyparts = list(bodyparts)
    if len(bodyparts) == 0:
        raise ValueError("bodyparts is empty; give the body-part names in keypoint order.")
    if len(set(bodyparts)) != len(bodyparts):
        raise ValueError(f"Duplicate body part names: {bodyparts}.")
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[2] != 2:
        raise ValueError(f"keypoints has shape {kp.shape}; expected (frames, bodyparts, 2) with "
                         "x, y in pixels (NaN = not visible).")
    if kp.shape[0] != len(imgs):
        raise ValueError(f"keypoints has {kp.shape[0]} frames but there are {len(imgs)} images.")
    if kp.shape[1] != len(bodyparts):
        raise ValueError(f"keypoints has {kp.shape[1]} body parts but bodyparts names "
                         f"{len(bodyparts)}: {bodyparts}.")
    if np.isinf(kp).any():
        frame, part, _ = np.argwhere(np.isinf(kp))[0]
        raise ValueError(f"keypoints has an infinite coordinate (frame {frame}, body part "
                         f"{bodyparts[part]!r}); use NaN for not visible.")
    # A keypoint with one NaN coordinate is not visible at all.
    kp[np.isnan(kp).any(axis=2)] = np.nan
    if np.isnan(kp).all():
        raise ValueError("Every keypoint is NaN: there is nothing to learn from.")
    return imgs, kp


def crop_coverage(keypoints: np.ndarray, crop_size: int, frame_sizes: Sequence[tuple[int, int]]
                  ) -> np.ndarray:
    """Fraction of frames in which each body part is labeled *and* inside a crop centred on the
    whole labeled animal (the crop is the whole frame when it is at least as large)."""
    n, k = keypoints.shape[:2]
    inside = np.zeros((n, k), dtype=bool)
    half = crop_size / 2.0
    for i, (kp, (w, h)) in enumerate(zip(keypoints, frame_sizes, strict=True)):
        vis = np.isfinite(kp).all(axis=1)
        if not vis.any():
            continue
        if crop_size >= max(w, h):
            inside[i] = vis
            continue
        pts = kp[vis]
        centre = (pts.min(axis=0) + pts.max(axis=0)) / 2.0
        inside[i, vis] = (np.abs(pts - centre) <= half).all(axis=1)
    return inside.mean(axis=0) if n else np.zeros(k)


def part_target_probabilities(coverage: np.ndarray, labeled: np.ndarray, fraction: float
                              ) -> np.ndarray:
    """How often part-targeted crops should pick each body part so that every part is inside
    about as many training crops as the others.

    With animal-centred crops covering part ``k`` in a fraction ``coverage[k]`` of samples and
    part-targeted crops (a ``fraction`` of all samples) picking it with probability ``q[k]``,
    part ``k`` is seen in ``(1 - fraction) * coverage[k] + fraction * q[k]`` of the samples;
    ``q`` equalises this as far as probabilities allow (parts never labeled get 0).
    """
    k = len(coverage)
    q = np.zeros(k)
    active = labeled.copy()
    if fraction <= 0 or not active.any():
        return np.where(active, 1.0, 0.0) / max(active.sum(), 1)
    for _ in range(k):
        level = (fraction + (1 - fraction) * coverage[active].sum()) / active.sum()
        q = np.where(active, (level - (1 - fraction) * coverage) / fraction, 0.0)
        negative = active & (q < 0)
        if not negative.any():
            break
        active &= ~negative  # already seen more than the level: never targeted
    q = np.clip(q, 0, None)
    return q / q.sum() if q.sum() > 0 else np.where(labeled, 1.0, 0.0) / labeled.sum()


class TrainingSet:
    """Frames at the network's input scale and a deterministic stream of augmented batches.

    Batch ``i`` depends only on (seed, i): sample order is a fresh permutation per epoch and
    each sample's augmentation is drawn from a generator seeded with (seed, i, j). A resumed
    run therefore sees exactly the batches an uninterrupted run would.
    """

    def __init__(self, images: Sequence[np.ndarray], keypoints: np.ndarray,
                 bodyparts: Sequence[str], config: EngineConfig):
        self.config = config
        self.images: list[np.ndarray] = []
        kps = []
        for image, kp in zip(images, keypoints, strict=True):
            scaled, skp, _ = scale_image(image, kp, config.input_scale)
            self.images.append(scaled)
            kps.append(skp)
        self.keypoints = np.stack(kps)
        self.flip_perm = (flip_permutation(list(bodyparts), config.flip_pairs)
                          if config.flip_pairs else None)
        visible = np.isfinite(self.keypoints).all(axis=2)
        self.frames_with_part = [np.flatnonzero(visible[:, k]) for k in range(visible.shape[1])]
        sizes = [(im.shape[1], im.shape[0]) for im in self.images]
        aug = config.augmentation
        self.part_fraction = aug.crop_around_keypoints * aug.part_crop_fraction
        self.part_probs = part_target_probabilities(
            crop_coverage(self.keypoints, int(config.crop_size), sizes), visible.any(axis=0),
            self.part_fraction)

    def __len__(self) -> int:
        return len(self.images)

    def indices(self, iteration: int) -> np.ndarray:
        """Frame indices of batch ``iteration``."""
        n, bs = len(self.images), self.config.batch_size
        out = np.empty(bs, dtype=np.int64)
        for j in range(bs):
            pos = iteration * bs + j
            epoch, k = divmod(pos, n)
            perm = np.random.default_rng([self.config.seed, 7919, epoch]).permutation(n)
            out[j] = perm[k]
        return out

    def batch(self, iteration: int) -> tuple[np.ndarray, np.ndarray]:
        """(B, S, S, 3) uint8 crops and (B, K, 2) float32 keypoints of batch ``iteration``."""
        c = self.config
        crops, kps = [], []
        for j, idx in enumerate(self.indices(iteration)):
            rng = np.random.default_rng([c.seed, iteration, j])
            target = None
            if rng.random() < self.part_fraction:
                # A part-targeted crop: the part first, then a frame where it is labeled.
                target = int(rng.choice(len(self.part_probs), p=self.part_probs))
                idx = int(rng.choice(self.frames_with_part[target]))
            crop, kp = augment_sample(self.images[idx], self.keypoints[idx], c.crop_size,
                                      c.augmentation, rng, self.flip_perm, target)
            crops.append(crop)
            kps.append(kp)
        return np.stack(crops), np.stack(kps)

    def stream(self, start: int, stop: int, prefetch: int = 3
               ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Batches ``start <= i < stop`` prepared in a background thread (bounded queue)."""
        return in_background(((i, *self.batch(i)) for i in range(start, stop)), prefetch,
                             "element-pose-augment")
