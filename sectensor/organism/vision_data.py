"""Pictures for the organism: loading the renderings and augmenting them on the device, in batches.

Augmentation is what lets the organism recognise a drawing style it never trained on: random scale, rotation,
shift and flip; background colour (white, black or any colour, since transparent pixels may reach the model as
either); colour jitter (brightness, contrast, saturation, a small hue turn), grey, a soft light gradient across
the object (flat vs. shaded styles), blur and noise.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sectensor.augment import jitter_colours
from sectensor.organism.processor import IMAGE_MEAN, IMAGE_STD, IMAGE_SIZE

IMAGES = Path("assets/images")


def load_rgba(path: Path | str) -> torch.Tensor:
    """An RGBA picture as a float tensor of shape `(4, 64, 64)` in [0, 1]."""
    image = Image.open(path).convert("RGBA").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def load_styles(names: list[str], styles: tuple[str, ...], root: Path = IMAGES) -> torch.Tensor:
    """Pictures of shape `(len(names), len(styles), 4, 64, 64)`."""
    return torch.stack([
        torch.stack([load_rgba(root / style / f"{name.replace(' ', '_')}.png") for style in styles]) for name in names
    ])


def normalize(rgb: torch.Tensor) -> torch.Tensor:
    """`(B, 3, H, W)` in [0, 1] -> the processor's normalized pixels."""
    mean = torch.tensor(IMAGE_MEAN, device=rgb.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=rgb.device).view(1, 3, 1, 1)
    return (rgb - mean) / std


def on_white(rgba: torch.Tensor) -> torch.Tensor:
    """Composite `(B, 4, H, W)` onto white, as the CLIP processor does with transparent pictures."""
    alpha = rgba[:, 3:4]
    return rgba[:, :3] * alpha + (1 - alpha)


def augment(rgba: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random training views of `(B, 4, 64, 64)` RGBA pictures -> `(B, 3, 64, 64)` RGB in [0, 1]."""
    B, dev = rgba.shape[0], rgba.device

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device=dev)

    # Geometry: scale, rotation, shift, flip (one affine warp; outside the picture is transparent).
    scale = 0.6 + 0.5 * rand(B)
    angle = (rand(B) - 0.5) * (math.pi / 6)
    flip = torch.where(rand(B) < 0.5, -1.0, 1.0)
    shift = (rand(B, 2) - 0.5) * 0.3
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos * flip, -sin, shift[:, 0]], 1),
        torch.stack([sin * flip, cos, shift[:, 1]], 1),
    ], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(rgba.shape), align_corners=False)
    rgba = F.grid_sample(rgba, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    rgb, alpha = rgba[:, :3], rgba[:, 3:4]

    # Colour: brightness, contrast, saturation, a small hue turn, a light gradient, sometimes grey.
    rgb = jitter_colours(rgb, rand)

    # Background: white 35 %, black 15 %, any colour 50 %.
    pick = rand(B, 1, 1, 1)
    colour = rand(B, 3, 1, 1)
    background = torch.where(pick < 0.35, torch.ones_like(colour), torch.where(pick < 0.5, torch.zeros_like(colour), colour))
    rgb = rgb.clamp(0, 1) * alpha + background * (1 - alpha)

    # Blur 20 %, noise always (small).
    blur = (rand(B, 1, 1, 1) < 0.2).float()
    kernel = torch.tensor([1.0, 2.0, 1.0], device=dev)
    kernel = (kernel[:, None] * kernel[None, :] / 16).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(rgb, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    rgb = blur * blurred + (1 - blur) * rgb
    rgb = rgb + torch.randn(rgb.shape, generator=generator, device=dev) * 0.02
    return rgb.clamp(0, 1)
