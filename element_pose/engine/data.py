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
            crop, kp = augment_sample(self.images[idx], self.keypoints[idx], c.crop_size,
                                      c.augmentation, rng, self.flip_perm)
            crops.append(crop)
            kps.append(kp)
        return np.stack(crops), np.stack(kps)

    def stream(self, start: int, stop: int, prefetch: int = 3
               ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Batches ``start <= i < stop`` prepared in a background thread (bounded queue)."""
        return in_background(((i, *self.batch(i)) for i in range(start, stop)), prefetch,
                             "element-pose-augment")
