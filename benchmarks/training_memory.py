"""Peak CPU memory of training steps per backbone (the constants of engine/autoconfig.py).

Usage::

    for b in resnet18 resnet34 resnet50 resnet101 mobilenet_v3_large efficientnet_b0; do
        python benchmarks/training_memory.py $b 256; done
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from element_pose.engine.config import EngineConfig  # noqa: E402
from element_pose.engine.network import build_network  # noqa: E402
from element_pose.engine.targets import make_targets, pose_loss  # noqa: E402


def main() -> None:
    backbone, crop = sys.argv[1], int(sys.argv[2])
    batch, parts = 8, 17
    torch.set_num_threads(1)
    cfg = EngineConfig(backbone=backbone, output_stride=4, input_scale=1.0, crop_size=crop,
                       iterations=1)
    net = build_network(cfg, parts)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    opt = torch.optim.AdamW(net.parameters())
    x = torch.rand(batch, 3, crop, crop) * 255
    kp = torch.rand(batch, parts, 2) * crop
    for _ in range(2):
        heat, off = net(net.normalize(x))
        targets = make_targets(kp, tuple(heat.shape[-2:]), 4, 4.0, 8.0)
        loss = pose_loss(heat, off, targets, 0.5)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(f"{backbone} crop {crop} batch {batch}: +{(peak - base) / 1024:.0f} MiB, "
          f"{(peak - base) * 1024 / (batch * crop * crop):.0f} bytes per pixel and sample")


if __name__ == "__main__":
    main()
