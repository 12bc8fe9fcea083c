"""LLaVA-NeXT (`LlavaNextForConditionalGeneration`): any-resolution patches.

Pixel layout: pixel_values (num_images, 1 + num_patches, 3, S, S) and image_sizes (num_images, 2), the
original (height, width). Patch 0 is the whole picture squashed to S×S. The others tile the picture after it
is fitted, aspect ratio kept, into the best grid resolution (bh, bw) of `image_grid_pinpoints` and centred on
a zero canvas of that size; tiles go row by row. Rows of a batch are zero-padded to the most patches.

δv has shape (3, S, S), S = the processor's crop size (336 for llava-v1.6). For each image it is mapped as
the processor maps the picture: added as is to patch 0; resampled (bilinear) to the fitted content size,
placed at the same offset on a (3, bh, bw) zero canvas and cut into S×S tiles for the others. Padding
patches get nothing.

Example (S = 336, pinpoints include [672, 672], an image of height 500 and width 800):
    best resolution (672, 672) -> content fitted to (420, 672), offset (126, 0)
    δv (3, 336, 336) -> resampled (3, 420, 672) -> canvas (3, 672, 672) -> 4 tiles (4, 3, 336, 336)
    mapped δv (5, 3, 336, 336) = [δv, tile 0, tile 1, tile 2, tile 3], added to pixel_values[i, :5]
"""

from __future__ import annotations

import math

import torch

from .base import FamilyAdapter
from .layout import add_to_protected, pad_to, place, split_tiles
from .registry import register_adapter


def _fitted_size(height: int, width: int, target_height: int, target_width: int) -> tuple[int, int]:
    """Size of a (height, width) picture fitted into the target, aspect ratio kept (as the processor rounds)."""
    scale_w, scale_h = target_width / width, target_height / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_height), target_width
    return target_height, min(math.ceil(width * scale_h), target_width)


@register_adapter
class LlavaNextAdapter(FamilyAdapter):
    architectures = ("LlavaNextForConditionalGeneration",)
    image_field_names = ("pixel_values", "image_sizes")

    def visual_shape(self) -> tuple[int, ...]:
        size = self.processor.image_processor.crop_size
        return (3, size["height"], size["width"])

    def map_delta(self, delta: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """δv (3, S, S) on the patches of one (height, width) picture: (1 + num_patches, 3, S, S)."""
        from transformers.image_processing_utils import select_best_resolution

        _, S, _ = delta.shape
        best_height, best_width = select_best_resolution((height, width), self.processor.image_processor.image_grid_pinpoints)
        content_height, content_width = _fitted_size(height, width, best_height, best_width)
        top, left = (best_height - content_height) // 2, (best_width - content_width) // 2
        canvas = place(delta, content_height, content_width, best_height, best_width, top, left)
        return torch.cat([delta[None], split_tiles(canvas, S, S)])

    def apply_visual(
        self, image_fields: dict[str, torch.Tensor], delta: torch.Tensor, protected_images: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        pixel_values = image_fields["pixel_values"]  # (num_images, max_patches, 3, S, S)
        delta = delta.to(pixel_values.dtype)
        mapped = torch.stack([
            pad_to(self.map_delta(delta, height, width), pixel_values.shape[1])
            for height, width in image_fields["image_sizes"].tolist()
        ])
        return {**image_fields, "pixel_values": add_to_protected(pixel_values, mapped, protected_images)}
