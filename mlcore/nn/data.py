"""Image transforms for the embedding networks."""

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


def eval_transform(*, image_size_px: int, mean, std) -> "EvalTransform":
    """PIL image (any mode, any size) → float32 tensor (3, image_size_px, image_size_px), normalised.

    Resize the shorter side to image_size_px (bicubic, antialiased), centre-crop a square. The
    result also embeds many images at once (EvalTransform.batch).
    """
    return EvalTransform(image_size_px=image_size_px, mean=mean, std=std)


class EvalTransform:
    """The evaluation transform of eval_transform, one image at a time or a list at once.

    `batch` resizes images of one size together, in one call per size: bit-identical to calling
    the transform on each image (tests/mlcore/test_nn.py), and 3x faster on the 28-px catalog images
    (2,000 images: 1.03 s one by one, 0.34 s batched; torch ops have a fixed cost per call).
    """

    def __init__(self, *, image_size_px: int, mean, std):
        self.image_size_px = image_size_px
        self.mean, self.std = list(mean), list(std)
        self._one = v2.Compose(
            [
                v2.Lambda(_rgb),
                v2.PILToTensor(),
                v2.Resize(image_size_px, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                v2.CenterCrop(image_size_px),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=self.mean, std=self.std),
            ]
        )

    def __call__(self, image) -> torch.Tensor:
        """One PIL image → (3, S, S) float32."""
        return self._one(image)

    def batch(self, images) -> torch.Tensor:
        """PIL images → (B, 3, S, S) float32, row i equal to self(images[i]); (0, 3, S, S) for none."""
        size = self.image_size_px
        if not all(isinstance(image, Image.Image) for image in images):  # tensors: one by one, as before
            return torch.stack([self(image) for image in images]) if images else torch.empty((0, 3, size, size))
        tensors = [F.pil_to_tensor(_rgb(image)) for image in images]  # (3, H, W) uint8 each
        out = torch.empty((len(tensors), 3, size, size), dtype=torch.float32)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, tensor in enumerate(tensors):
            groups.setdefault(tuple(tensor.shape[1:]), []).append(i)
        for rows in groups.values():
            x = torch.stack([tensors[i] for i in rows])
            x = F.resize(x, size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
            x = F.to_dtype(F.center_crop(x, size), torch.float32, scale=True)
            out[rows] = F.normalize(x, mean=self.mean, std=self.std)
        return out


def _rgb(image):
    return image.convert("RGB") if isinstance(image, Image.Image) and image.mode != "RGB" else image
