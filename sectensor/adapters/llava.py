"""LLaVA-1.5 (`LlavaForConditionalGeneration`).

Pixel layout: pixel_values (num_images, 3, H, W), normalized by the CLIP image processor; one image
gives H×W/patch² image tokens. δv has shape (3, H, W) and is added to the normalized pixels of each
protected image, exactly as in the paper.
"""

from __future__ import annotations

import torch

from .base import FamilyAdapter
from .registry import register_adapter


@register_adapter
class LlavaAdapter(FamilyAdapter):
    architectures = ("LlavaForConditionalGeneration",)
    whole_vision_tower = "vision_tower"

    def visual_shape(self) -> tuple[int, ...]:
        size = self.processor.image_processor.crop_size
        return (3, size["height"], size["width"])

    def apply_visual(
        self, image_fields: dict[str, torch.Tensor], delta: torch.Tensor, protected_images: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        pixel_values = image_fields["pixel_values"]
        perturbed = pixel_values + delta.to(pixel_values.dtype)
        mask = protected_images.to(pixel_values.device).view(-1, 1, 1, 1)
        return {**image_fields, "pixel_values": torch.where(mask, perturbed, pixel_values)}
