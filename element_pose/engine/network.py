"""The pose network: a (cut) torchvision backbone and a deconvolution heatmap head.

The head outputs, per body part, one heatmap (logits of "the keypoint is in this cell") and
two location-refinement offsets (x, y, in units of the output stride) as in DeepLabCut's
heatmap + locref design.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
import torchvision
from torch import nn

from element_pose.engine.config import BACKBONES, EngineConfig

logger = logging.getLogger(__name__)

#: ImageNet normalisation, applied on the device to uint8 input.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PretrainedWeightsError(RuntimeError):
    """Pretrained backbone weights that cannot be obtained or do not fit the backbone."""


def _named_stages(model: nn.Module, name: str) -> list[tuple[str, nn.Module]]:
    """The backbone's sequential stages with their state_dict prefixes."""
    if name.startswith("resnet"):
        return [(n, getattr(model, n)) for n in
                ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")]
    return [(f"features.{i}", m) for i, m in enumerate(model.features)]


def _torchvision_model(name: str, pretrained: str) -> nn.Module:
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}.")
    if pretrained == "none":
        return torchvision.models.get_model(name, weights=None)
    if pretrained == "imagenet":
        weights = torchvision.models.get_model_weights(name).DEFAULT
        try:
            return torchvision.models.get_model(name, weights=weights)
        except Exception as exc:  # network errors come in many types
            hub = Path(torch.hub.get_dir()) / "checkpoints"
            raise PretrainedWeightsError(
                f"Could not fetch the ImageNet weights of {name} ({weights}) from {weights.url}: "
                f"{exc}. Either download that file on a machine with internet access and put it "
                f"in {hub} (torchvision's cache, set by TORCH_HOME), or set the config key "
                "'pretrained' to the path of the downloaded .pth file, or use "
                "pretrained='none' to train from random initialisation."
            ) from exc
    return torchvision.models.get_model(name, weights=None)


def _load_backbone_file(model: nn.Module, path: Path, kept: list[str]) -> None:
    if not path.is_file():
        raise PretrainedWeightsError(
            f"Pretrained weights file not found: {path}. The config key 'pretrained' must be "
            "'none', 'imagenet' or the path of a torchvision state_dict (.pt/.pth)."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PretrainedWeightsError(f"Cannot read {path} as a torch state_dict: {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{path} does not hold a state_dict (got {type(state)}).")
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    own = model.state_dict()
    needed = [k for k in own if any(k == p or k.startswith(p + ".") for p in kept)]
    missing = [k for k in needed if k not in state]
    if missing:
        raise PretrainedWeightsError(
            f"{path} lacks {len(missing)} weights of the backbone (e.g. {missing[:3]}); it must "
            "be a state_dict of the same torchvision architecture."
        )
    bad = [k for k in needed if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise PretrainedWeightsError(
            f"{path} has weights of the wrong shape for this backbone, e.g. {bad[0]}: "
            f"{tuple(state[bad[0]].shape)} vs {tuple(own[bad[0]].shape)}."
        )
    model.load_state_dict({k: state[k] for k in needed}, strict=False)
    logger.info("Loaded %d backbone tensors from %s", len(needed), path)


def build_backbone(name: str, stride: int, pretrained: str = "none") -> tuple[nn.Sequential, int]:
    """A torchvision backbone cut after its last stage of the given stride.

    Returns
    -------
    backbone : nn.Sequential
    channels : int
        Channels of its output feature map.
    """
    model = _torchvision_model(name, "imagenet" if pretrained == "imagenet" else "none")
    stages = _named_stages(model, name)
    # Measure each stage's stride with a small dummy pass (architecture-agnostic).
    kept: list[tuple[str, nn.Module]] = []
    channels = 3
    size = 64
    was_training = model.training
    model.eval()
    with torch.no_grad():
        x = torch.zeros(1, 3, size, size)
        for prefix, module in stages:
            y = module(x)
            if size / y.shape[-1] > stride:
                break
            kept.append((prefix, module))
            x = y
            channels = y.shape[1]
    model.train(was_training)
    if pretrained not in ("none", "imagenet"):
        _load_backbone_file(model, Path(os.path.expanduser(pretrained)), [p for p, _ in kept])
    return nn.Sequential(*[m for _, m in kept]), int(channels)


class PoseNet(nn.Module):
    """Backbone + deconvolution head to heatmaps and location-refinement offsets.

    ``forward`` takes normalised float images (B, 3, H, W) and returns
    ``(heatmaps, offsets)``: logits (B, K, H/s, W/s) and offsets (B, K, 2, H/s, W/s) in units
    of the output stride ``s``.
    """

    def __init__(self, num_keypoints: int, backbone: str = "resnet18", backbone_stride: int = 16,
                 output_stride: int = 4, head_channels: int = 128, pretrained: str = "none"):
        super().__init__()
        if output_stride > backbone_stride:
            raise ValueError("output_stride must be <= backbone_stride")
        self.num_keypoints = num_keypoints
        self.output_stride = output_stride
        self.backbone, channels = build_backbone(backbone, backbone_stride, pretrained)
        layers: list[nn.Module] = []
        n_up = int(round(math.log2(backbone_stride / output_stride)))
        cin = channels
        for _ in range(n_up):
            layers += [nn.ConvTranspose2d(cin, head_channels, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(head_channels), nn.ReLU(inplace=True)]
            cin = head_channels
        if n_up == 0:
            layers += [nn.Conv2d(cin, head_channels, 3, padding=1, bias=False),
                       nn.BatchNorm2d(head_channels), nn.ReLU(inplace=True)]
            cin = head_channels
        self.head = nn.Sequential(*layers)
        self.heatmap = nn.Conv2d(cin, num_keypoints, 1)
        self.locref = nn.Conv2d(cin, 2 * num_keypoints, 1)
        nn.init.normal_(self.heatmap.weight, std=0.001)
        nn.init.constant_(self.heatmap.bias, -4.0)  # prior: a keypoint is rarely in a cell
        nn.init.normal_(self.locref.weight, std=0.001)
        nn.init.zeros_(self.locref.bias)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0,
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0,
                             persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or float 0..255 (B, 3, H, W) -> ImageNet-normalised float."""
        return (images.float() - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.head(self.backbone(x))
        # The 1x1 output layers run in float32 under autocast: bfloat16's 8-bit mantissa would
        # quantise the heatmap logits (ties between peak cells) and the sub-cell offsets.
        with torch.autocast(features.device.type, enabled=False):
            features = features.float()
            heatmaps = self.heatmap(features)
            b, k, h, w = heatmaps.shape
            offsets = self.locref(features).view(b, k, 2, h, w)
        return heatmaps, offsets


def build_network(config: EngineConfig, num_keypoints: int) -> PoseNet:
    """The :class:`PoseNet` a config describes (with its pretrained backbone, if any)."""
    return PoseNet(num_keypoints, backbone=config.backbone,
                   backbone_stride=config.backbone_stride, output_stride=config.output_stride,
                   head_channels=config.head_channels, pretrained=config.pretrained)


def cpu_supports_bf16() -> bool:
    """Whether oneDNN runs bfloat16 on this CPU (natively, or emulated on AVX-512)."""
    return bool(torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def count_parameters(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def load_matching_weights(model: PoseNet, state_dict: dict, source_bodyparts: list[str],
                          bodyparts: list[str]) -> list[str]:
    """Copy a trained model's weights into ``model``, output channels matched by body part.

    Backbone and head weights are copied whole (their shapes must match); the heatmap and
    location-refinement channels of body parts present in both lists are copied, the others
    keep their fresh initialisation. Returns the matched body parts.

    Raises
    ------
    ValueError
        When a backbone or head weight has another shape (a different architecture).
    """
    own = model.state_dict()
    index = {name: i for i, name in enumerate(source_bodyparts)}
    matched = [b for b in bodyparts if b in index]
    new = {}
    for key, value in own.items():
        if key not in state_dict:
            raise ValueError(f"The initial model lacks weight {key!r}: another architecture.")
        src = state_dict[key]
        if key.startswith(("heatmap.", "locref.")):
            value = value.clone()
            for k, name in enumerate(bodyparts):
                if name not in index:
                    continue
                j = index[name]
                if key.startswith("heatmap."):
                    value[k] = src[j]
                else:  # locref channels are (x, y) pairs per body part
                    value[2 * k:2 * k + 2] = src[2 * j:2 * j + 2]
            new[key] = value
        elif tuple(src.shape) != tuple(value.shape):
            raise ValueError(f"The initial model's weight {key!r} has shape {tuple(src.shape)}, "
                             f"this network's {tuple(value.shape)}: another architecture.")
        else:
            new[key] = src
    model.load_state_dict(new)
    return matched
