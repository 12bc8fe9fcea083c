"""Differentiable pieces for mapping a canonical δv (3, S, S) onto a family's pixel layout.

Family adapters compose these to repeat, on δv, the geometry their image processor applies to the picture
(resize, pad, cut into tiles). Every step is linear in δv, so adding the mapped δv to the processed pixels
equals processing a picture that carries δv, and gradients flow back to the canonical grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize(delta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resample of `delta` (C, h, w) to (C, height, width); antialiased when shrinking, like the
    processors' own resizing."""
    if tuple(delta.shape[-2:]) == (height, width):
        return delta
    return F.interpolate(delta[None], size=(height, width), mode="bilinear", align_corners=False, antialias=True)[0]


def place(
    delta: torch.Tensor, height: int, width: int, canvas_height: int, canvas_width: int, top: int = 0, left: int = 0
) -> torch.Tensor:
    """`delta` resampled to (height, width) and put at (top, left) on a zero canvas (C, canvas_height, canvas_width):
    the picture's content region gets δv, the processor's padding gets none."""
    content = resize(delta, height, width)
    return F.pad(content, (left, canvas_width - width - left, top, canvas_height - height - top))


def split_tiles(canvas: torch.Tensor, tile_height: int, tile_width: int) -> torch.Tensor:
    """Cut a canvas (C, rows·tile_height, cols·tile_width) into tiles (rows·cols, C, tile_height, tile_width),
    row by row, left to right (the order of every tiling processor here)."""
    C, H, W = canvas.shape
    rows, cols = H // tile_height, W // tile_width
    tiles = canvas.reshape(C, rows, tile_height, cols, tile_width).permute(1, 3, 0, 2, 4)  # (rows, cols, C, th, tw)
    return tiles.reshape(rows * cols, C, tile_height, tile_width)


def pad_to(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad dim 0 of `tensor` to `length` (for padded tile or patch slots, which must stay zero)."""
    missing = length - tensor.shape[0]
    return torch.cat([tensor, tensor.new_zeros((missing, *tensor.shape[1:]))]) if missing > 0 else tensor


def add_to_protected(values: torch.Tensor, perturbation: torch.Tensor, protected_images: torch.Tensor) -> torch.Tensor:
    """values + perturbation on the images (dim 0) where `protected_images` (num_images,) is True; the other
    images are returned untouched (bit-identical)."""
    mask = protected_images.to(values.device).view(-1, *([1] * (values.dim() - 1)))
    return torch.where(mask, values + perturbation.to(values.dtype), values)
