"""Training augmentation on uint8 RGB frames; keypoints move with the pixels.

Geometry is one affine warp per sample (rotation, zoom, translation, optional flip) that also
cuts the training crop, so pixels are interpolated once. Keypoints are mapped with the very
matrix OpenCV uses (pixel centres at integer coordinates), hence stay on the same image
content. Keypoints that leave the crop become NaN (not visible).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import cv2
import numpy as np

from element_pose.engine.config import AugmentationConfig


def scale_image(image: np.ndarray, keypoints: np.ndarray | None, scale: float
                ) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float]]:
    """Resize a frame by ``scale`` (area interpolation when shrinking).

    Uses the half-pixel convention ``x' = (x + 0.5) * r - 0.5`` with the exact per-axis ratio
    ``r`` = new size / old size, the same as ``torch.nn.functional.interpolate`` at inference.

    Returns the resized image, the mapped keypoints and ``(rx, ry)``.
    """
    h, w = image.shape[:2]
    nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    rx, ry = nw / w, nh / h
    if (nw, nh) == (w, h):
        out = image
    else:
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        out = cv2.resize(image, (nw, nh), interpolation=interp)
    kp = None
    if keypoints is not None:
        kp = np.empty_like(keypoints, dtype=np.float64)
        kp[..., 0] = (keypoints[..., 0] + 0.5) * rx - 0.5
        kp[..., 1] = (keypoints[..., 1] + 0.5) * ry - 0.5
    return out, kp, (rx, ry)


def flip_permutation(bodyparts: list[str] | tuple[str, ...],
                     pairs: tuple[tuple[str, str], ...] | list) -> np.ndarray:
    """Index permutation that swaps the named left/right body parts."""
    index = {name: i for i, name in enumerate(bodyparts)}
    perm = np.arange(len(bodyparts))
    for a, b in pairs:
        for name in (a, b):
            if name not in index:
                raise ValueError(f"flip_pairs names {name!r}, which is not a body part "
                                 f"({', '.join(bodyparts)}).")
        perm[index[a]], perm[index[b]] = index[b], index[a]
    return perm


# A left/right token: the words left/right anywhere ("leftear", "Shoulder_left"), or a lone
# L/R letter: upper case after a lower-case letter, digit or separator and before a digit,
# upper-case letter, separator or the end ("eyeL", "forelegL4", "Ear_L", "paw1LH"), lower case
# only between separators ("ear_l").
_LATERAL = re.compile(r"(?i:left|right)|(?<![A-Z])[LR](?=[0-9A-Z_\-. ]|$)"
                      r"|(?<![^_\-. ])[lr](?=[_\-. ]|$)")
_TWIN = {"left": "right", "right": "left", "l": "r", "r": "l"}


def _twin_name(name: str) -> str | None:
    """``name`` with every left/right token swapped (case kept); None without such a token."""
    def swap(m: re.Match) -> str:
        word = m.group(0)
        twin = _TWIN[word.lower()]
        if word.isupper():
            return twin.upper()
        return twin.capitalize() if word[0].isupper() else twin

    twin, n = _LATERAL.subn(swap, name)
    return twin if n else None


def lateral_pairs(bodyparts: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """Left/right twins among the body-part names, for flip augmentation.

    Returns the pairs (each once, in body-part order) and the names that look lateral but
    have no twin (``paw1LH`` without ``paw1RH``). A flip is only safe when that list is empty:
    a lateral part left unswapped would teach the network to confuse its sides.
    """
    names = set(bodyparts)
    pairs, unpaired, seen = [], [], set()
    for name in bodyparts:
        twin = _twin_name(name)
        if twin is None or name in seen:
            continue
        if twin in names and twin != name:
            pairs.append((name, twin))
            seen.update((name, twin))
        else:
            unpaired.append(name)
    return pairs, unpaired


def affine_matrix(center: tuple[float, float], crop_size: int, angle_deg: float = 0.0,
                  zoom: float = 1.0, flip: bool = False) -> np.ndarray:
    """2x3 matrix mapping source pixels to crop pixels.

    The source point ``center`` lands on the crop centre; the image is rotated by
    ``angle_deg`` (counter-clockwise as displayed), zoomed by ``zoom`` and optionally
    mirrored left-right.
    """
    a = math.radians(angle_deg)
    cos, sin = math.cos(a) * zoom, math.sin(a) * zoom
    lin = np.array([[cos, sin], [-sin, cos]])
    if flip:
        lin = np.array([[-1.0, 0.0], [0.0, 1.0]]) @ lin
    mid = (crop_size - 1) / 2.0
    t = np.array([mid, mid]) - lin @ np.asarray(center, dtype=np.float64)
    return np.hstack([lin, t[:, None]])


def apply_affine(keypoints: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Map (..., 2) points with a 2x3 affine matrix (NaN stays NaN)."""
    return keypoints @ matrix[:, :2].T + matrix[:, 2]


def augment_sample(image: np.ndarray, keypoints: np.ndarray, crop_size: int,
                   aug: AugmentationConfig, rng: np.random.Generator,
                   flip_perm: np.ndarray | None = None, target: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """One augmented training crop.

    Parameters
    ----------
    image : np.ndarray
        (H, W, 3) uint8 RGB (already at the network's input scale).
    keypoints : np.ndarray
        (K, 2) x, y in the image's pixels, NaN = not visible.
    crop_size : int
        Side of the square output crop.
    aug : AugmentationConfig
        Ranges of the random changes.
    rng : np.random.Generator
        Source of randomness (seed it for reproducible crops).
    flip_perm : np.ndarray, optional
        Body-part permutation applied when the crop is flipped.
    target : int, optional
        Centre the crop on this body part (when labeled). Otherwise the crop is centred on
        the whole labeled animal with probability ``aug.crop_around_keypoints``, else on a
        random point.

    Returns
    -------
    crop : np.ndarray
        (crop_size, crop_size, 3) uint8.
    keypoints : np.ndarray
        (K, 2) float32 in crop pixels; NaN where not visible or outside the crop.
    """
    unresolved = [k for k in ("rotation", "scale", "translate") if getattr(aug, k) == "auto"]
    if unresolved:
        raise ValueError(f"augmentation {', '.join(unresolved)} still 'auto': resolve the "
                         "config from the labeled frames first (autoconfig.resolve_config).")
    h, w = image.shape[:2]
    kp = np.asarray(keypoints, dtype=np.float64)
    visible = np.isfinite(kp).all(axis=1)
    angle = rng.uniform(-aug.rotation, aug.rotation) if aug.rotation > 0 else 0.0
    lo, hi = aug.scale
    zoom = math.exp(rng.uniform(math.log(lo), math.log(hi))) if hi > lo else lo
    flip = bool(aug.flip > 0 and rng.random() < aug.flip)
    shift = rng.uniform(-aug.translate, aug.translate, size=2) * crop_size / zoom
    on_labels = visible.any() and rng.random() < aug.crop_around_keypoints
    if crop_size >= max(h, w):
        # The crop holds the whole frame: centre it on the frame, so no label falls outside
        # because the crop was centred elsewhere.
        center = np.array([(w - 1) / 2.0, (h - 1) / 2.0]) + shift
    elif target is not None and visible[target]:
        center = kp[target] + shift
    elif on_labels:
        # Centre on the whole labeled animal (the box around its labels).
        pts = kp[visible]
        center = (pts.min(axis=0) + pts.max(axis=0)) / 2.0 + shift
    else:
        center = np.array([rng.uniform(0, w - 1), rng.uniform(0, h - 1)])
    matrix = affine_matrix((float(center[0]), float(center[1])), crop_size, angle, zoom, flip)
    crop = cv2.warpAffine(image, matrix, (crop_size, crop_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    out = apply_affine(kp, matrix)
    if flip and flip_perm is not None:
        out = out[flip_perm]
    inside = (out >= -0.5).all(axis=1) & (out <= crop_size - 0.5).all(axis=1)
    out[~inside] = np.nan
    crop = photometric(crop, aug, rng)
    return crop, out.astype(np.float32)


def photometric(image: np.ndarray, aug: AugmentationConfig, rng: np.random.Generator
                ) -> np.ndarray:
    """Random contrast, brightness, gray, blur and noise on a uint8 image (same shape)."""
    out = image.astype(np.float32)
    if aug.contrast > 0:
        factor = rng.uniform(1 - aug.contrast, 1 + aug.contrast)
        out = (out - out.mean()) * factor + out.mean()
    if aug.brightness > 0:
        out += rng.uniform(-aug.brightness, aug.brightness) * 255.0
    if aug.grayscale > 0 and rng.random() < aug.grayscale:
        out[:] = out.mean(axis=2, keepdims=True)
    if aug.blur > 0 and rng.random() < aug.blur:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=rng.uniform(0.5, 1.5))
    if aug.noise > 0:
        std = rng.uniform(0, aug.noise) * 255.0
        out += rng.standard_normal(out.shape, dtype=np.float32) * std
    return np.clip(out, 0, 255).astype(np.uint8)
