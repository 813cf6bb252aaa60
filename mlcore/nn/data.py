"""Image transforms for the embedding networks."""

import torch
from PIL import Image
from torchvision.transforms import v2


def eval_transform(*, image_size_px: int, mean, std) -> v2.Compose:
    """PIL image (any mode, any size) → float32 tensor (3, image_size_px, image_size_px), normalised.

    Resize the shorter side to image_size_px (bicubic, antialiased), centre-crop a square.
    """
    return v2.Compose(
        [
            v2.Lambda(lambda im: im.convert("RGB") if isinstance(im, Image.Image) and im.mode != "RGB" else im),
            v2.PILToTensor(),
            v2.Resize(image_size_px, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(image_size_px),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )
