"""Models: torchvision ResNets (the paper's ResNet-50), any timm model, and a small
CIFAR-style ResNet for 32x32 inputs that the CPU demo trains in minutes.

Names: ``resnet50`` (any torchvision classification model name), ``timm:<name>``
(any timm model, built with ``model.kwargs``: e.g. a ViT sized for 32x32 images), ``small_resnet`` (widths and blocks from the model config).
"""
from __future__ import annotations

import functools

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

import imagenet_repro  # noqa: F401  (torchvision compatibility shim first)
from imagenet_repro.errors import ConfigError

SMALL = "small_resnet"


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """ResNet for small images: 3x3 stem, one stage per width (stride 2 after the first),
    global average pooling and a linear classifier.  Every conv is followed by BatchNorm,
    so every conv weight is a 'normalized' weight in the paper's sense; ``fc`` is not,
    unless ``head_norm``: then the classifier is a bias-free linear layer followed by
    BatchNorm1d, which makes ``fc.weight`` normalized too (the logit scale is then carried by
    that BatchNorm's affine weight)."""

    def __init__(self, num_classes: int, widths: list[int] = (8, 16, 32), blocks_per_stage: int = 1,
                 head_norm: bool = False) -> None:
        super().__init__()
        widths = list(widths)
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks_per_stage):
                layers.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes, bias=not head_norm)
        self.head_norm = nn.BatchNorm1d(num_classes) if head_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.head_norm(self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)))


@functools.lru_cache(maxsize=None)  # listing torchvision's models takes ~20 ms; sweeps validate hundreds of points
def known_model(name: str) -> bool:
    if name == SMALL:
        return True
    if name.startswith("timm:"):
        import timm

        return timm.is_model(name[5:])
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models)


def fixed_input_size(name: str) -> bool:
    """Whether the model takes one input size only (timm's ViTs: a position embedding per patch
    of ``img_size``; ``model.kwargs.img_size`` resizes them); torchvision's CNNs and ours pool."""
    if not name.startswith("timm:"):
        return False
    import timm

    cfg = timm.models.get_pretrained_cfg(name[5:])
    return bool(cfg is not None and getattr(cfg, "fixed_input_size", False))


def build_model(cfg, num_classes: int) -> nn.Module:
    """Model from a model config section (``name``, ``widths``, ``blocks_per_stage``)."""
    if cfg.name == SMALL:
        return SmallResNet(num_classes, list(cfg.widths), cfg.blocks_per_stage, cfg.head_norm)
    if cfg.name.startswith("timm:"):
        import timm

        kwargs = getattr(cfg, "kwargs", None) or {}
        kwargs = OmegaConf.to_container(kwargs) if isinstance(kwargs, DictConfig) else dict(kwargs)
        try:  # e.g. model.kwargs: {img_size: 32, patch_size: 4, depth: 6} for a small ViT
            return timm.create_model(cfg.name[5:], pretrained=False, num_classes=num_classes, **kwargs)
        except TypeError as exc:
            raise ConfigError(f"model.kwargs for {cfg.name}: {exc}") from None
    if getattr(cfg, "kwargs", None):
        raise ConfigError(f"model.kwargs is for timm:<name> models only (model.name is {cfg.name!r})")
    import torchvision

    return torchvision.models.get_model(cfg.name, weights=None, num_classes=num_classes)
