"""Configuration dataclasses for mlcore.nn (no Django)."""

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class EmbedConfig:
    """How images are turned into embeddings.

    backbone: a name from mlcore.nn.backbones.BACKBONES.
    image_size_px: side of the square network input. Fashion-MNIST sources are 28 px, so 96 px
        loses nothing and runs ~10x faster than 224 px on a CPU (docs/benchmarks.md).
    batch_size: images per forward pass.
    weights_path: local weights file for torchvision backbones; never downloaded.
    """

    backbone: str = "efficientnet_lite0"
    image_size_px: int = 96
    batch_size: int = 32
    weights_path: str = ""

    def to_dict(self) -> dict:
        return asdict(self)
