"""Heatmap + location-refinement targets and their decoding, vectorised on the device.

Coordinates are in network-input pixels with pixel centres at integers. Heatmap cell
``(i, j)`` of a stride-``s`` map stands for the input point ``(j * s + (s - 1) / 2,
i * s + (s - 1) / 2)``; its offsets hold ``(keypoint - cell centre) / s``.
"""

from __future__ import annotations

import torch


def cell_centers(size: int, stride: int, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Input-pixel coordinates of the centres of ``size`` cells at ``stride``."""
    return torch.arange(size, device=device, dtype=dtype) * stride + (stride - 1) / 2.0


def make_targets(keypoints: torch.Tensor, shape: tuple[int, int], stride: int, sigma: float,
                 locref_radius: float) -> dict[str, torch.Tensor]:
    """Gaussian heatmaps and offset targets for a batch.

    Parameters
    ----------
    keypoints : torch.Tensor
        (B, K, 2) x, y in network-input pixels; NaN = not visible (all-zero heatmap, no
        offset supervision).
    shape : (int, int)
        Heatmap height and width.
    stride : int
        Output stride.
    sigma : float
        Gaussian standard deviation in input pixels.
    locref_radius : float
        Offsets are supervised at cells within this distance (input pixels) of the keypoint.

    Returns
    -------
    dict
        ``heatmaps`` (B, K, H, W) in [0, 1] with 1 at the keypoint, ``offsets``
        (B, K, 2, H, W), ``offset_mask`` (B, K, H, W) bool, ``visible`` (B, K) bool.
    """
    h, w = shape
    dtype = torch.float32
    kp = keypoints.to(dtype)
    visible = torch.isfinite(kp).all(dim=-1)
    kp = torch.where(visible[..., None], kp, torch.zeros_like(kp))
    ys = cell_centers(h, stride, kp.device, dtype)
    xs = cell_centers(w, stride, kp.device, dtype)
    dx = kp[..., 0, None, None] - xs.view(1, 1, 1, w)  # (B, K, 1, W)
    dy = kp[..., 1, None, None] - ys.view(1, 1, h, 1)  # (B, K, H, 1)
    dist2 = dx * dx + dy * dy  # (B, K, H, W)
    heatmaps = torch.exp(-dist2 / (2.0 * sigma * sigma)) * visible[..., None, None]
    offsets = torch.stack(torch.broadcast_tensors(dx, dy), dim=2) / stride
    mask = (dist2 <= locref_radius * locref_radius) & visible[..., None, None]
    return {"heatmaps": heatmaps, "offsets": offsets, "offset_mask": mask, "visible": visible}


def merge_instances(targets: dict[str, torch.Tensor], instances: int) -> dict[str, torch.Tensor]:
    """Targets of ``instances`` keypoints per channel merged into one map per channel.

    ``targets`` is from :func:`make_targets` on (B, M * K, 2) keypoints ordered instance by
    instance (``M`` = ``instances``). Each channel's heatmap is the maximum of its instances'
    Gaussians (one peak per animal), and each cell's offsets point to the nearest instance.
    """
    if instances == 1:
        return targets
    heat = targets["heatmaps"]
    b, mk, h, w = heat.shape
    k = mk // instances
    heat = heat.view(b, instances, k, h, w)
    best = heat.argmax(dim=1, keepdim=True)  # (B, 1, K, H, W): the nearest visible instance
    offsets = targets["offsets"].view(b, instances, k, 2, h, w)
    offsets = torch.gather(offsets, 1, best[:, :, :, None].expand(b, 1, k, 2, h, w))[:, 0]
    mask = torch.gather(targets["offset_mask"].view(b, instances, k, h, w), 1, best)[:, 0]
    visible = targets["visible"].view(b, instances, k).any(dim=1)
    return {"heatmaps": heat.max(dim=1).values, "offsets": offsets, "offset_mask": mask,
            "visible": visible}


def find_peaks(heatmaps: torch.Tensor, offsets: torch.Tensor, stride: int, max_peaks: int,
               threshold: float, radius: int = 1) -> torch.Tensor:
    """Every local maximum of each heatmap (several animals), refined by the offsets.

    Parameters
    ----------
    heatmaps, offsets : torch.Tensor
        Network outputs (B, K, H, W) logits and (B, K, 2, H, W).
    stride : int
        Output stride.
    max_peaks : int
        Peaks kept per map, strongest first.
    threshold : float
        Smallest confidence (sigmoid of the logit) of a peak.
    radius : int
        A peak is the maximum of its (2 radius + 1)-cell square neighbourhood.

    Returns
    -------
    torch.Tensor
        (B, K, max_peaks, 3) [x, y, confidence] in network-input pixels, strongest first;
        NaN rows where there are fewer peaks.
    """
    b, k, h, w = heatmaps.shape
    conf = torch.sigmoid(heatmaps.float())
    pooled = torch.nn.functional.max_pool2d(conf, 2 * radius + 1, stride=1, padding=radius)
    peaks = torch.where((conf == pooled) & (conf >= threshold), conf, torch.zeros_like(conf))
    n = min(max_peaks, h * w)
    value, index = peaks.reshape(b, k, h * w).topk(n, dim=-1)
    row = torch.div(index, w, rounding_mode="floor")
    col = index - row * w
    off = offsets.float().reshape(b, k, 2, h * w)
    gathered = torch.gather(off, 3, index[:, :, None, :].expand(b, k, 2, n))
    x = col.float() * stride + (stride - 1) / 2.0 + gathered[:, :, 0] * stride
    y = row.float() * stride + (stride - 1) / 2.0 + gathered[:, :, 1] * stride
    out = torch.stack([x, y, value], dim=-1)
    out[value <= 0] = float("nan")
    if n < max_peaks:
        pad = torch.full((b, k, max_peaks - n, 3), float("nan"), device=out.device)
        out = torch.cat([out, pad], dim=2)
    return out


def decode(heatmaps: torch.Tensor, offsets: torch.Tensor, stride: int) -> torch.Tensor:
    """Peaks of heatmap logits, refined by the offsets, as (B, K, 3) [x, y, confidence].

    The argmax cell's centre plus its offset gives a sub-pixel position in network-input
    pixels; confidence is the sigmoid of the peak logit.
    """
    b, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(b, k, h * w)
    peak, index = flat.max(dim=-1)
    row = torch.div(index, w, rounding_mode="floor")
    col = index - row * w
    off = offsets.reshape(b, k, 2, h * w)
    gathered = torch.gather(off, 3, index[:, :, None, None].expand(b, k, 2, 1))[..., 0]
    x = col.to(torch.float32) * stride + (stride - 1) / 2.0 + gathered[..., 0].float() * stride
    y = row.to(torch.float32) * stride + (stride - 1) / 2.0 + gathered[..., 1].float() * stride
    return torch.stack([x, y, torch.sigmoid(peak.float())], dim=-1)


def pose_loss(heatmap_logits: torch.Tensor, offsets: torch.Tensor, targets: dict[str, torch.Tensor],
              locref_weight: float, hard_keypoint_weight: float = 0.0,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted BCE on the heatmaps plus masked smooth-L1 on the offsets.

    The BCE is averaged per keypoint map and positive pixels are up-weighted so the small
    Gaussian blob is not drowned by the background. With ``hard_keypoint_weight`` > 0 the
    hardest half of each sample's keypoint maps is counted that much more (online hard
    keypoint mining, as in CPN): a part that is often hidden and has to be inferred from
    the body keeps a share of the gradient after the easy parts are learned. The heatmap
    loss is rescaled so its size does not depend on the weight. Returns (total, heatmap,
    offset) losses.
    """
    target = targets["heatmaps"]
    logits = heatmap_logits.float()
    weight = 1.0 + 10.0 * target
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, weight=weight,
                                                               reduction="none")
    per_map = bce.mean(dim=(-1, -2))  # (batch, keypoints)
    n_maps = per_map.shape[1]
    if hard_keypoint_weight > 0 and n_maps > 1:
        n_hard = (n_maps + 1) // 2
        hard = per_map.topk(n_hard, dim=1).values.sum(dim=1)
        per_sample = (per_map.sum(dim=1) + hard_keypoint_weight * hard) * (
            n_maps / (n_maps + hard_keypoint_weight * n_hard))
        heat_loss = per_sample.mean()
    else:
        heat_loss = per_map.sum(dim=1).mean()
    mask = targets["offset_mask"]
    n = mask.sum().clamp(min=1)
    diff = torch.nn.functional.smooth_l1_loss(offsets.float(), targets["offsets"],
                                              reduction="none", beta=0.5)
    off_loss = (diff.sum(dim=2) * mask).sum() / n * heatmap_logits.shape[1]
    total = heat_loss + locref_weight * off_loss
    return total, heat_loss.detach(), off_loss.detach()
