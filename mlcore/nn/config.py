"""Configuration dataclasses for mlcore.nn (no Django)."""

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class EmbedConfig:
    """How images are turned into embeddings.

    backbone: a name from mlcore.nn.backbones.BACKBONES.
    image_size_px: side of the square network input. 96 px embeds ~7x faster than 224 px on a
        2-core CPU, at a cost in recall (recall@1 0.025 vs 0.064 on the demo photos; see
        docs/benchmarks.md). 96 is the default so that `make demo` is usable within minutes on a CPU;
        use 224 on a GPU.
    batch_size: images per forward pass.
    weights_path: local weights file for torchvision backbones; never downloaded.
    """

    backbone: str = "efficientnet_lite0"
    image_size_px: int = 96
    batch_size: int = 32
    weights_path: str = ""

    def to_dict(self) -> dict:
        return asdict(self)
