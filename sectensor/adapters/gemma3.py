"""Gemma 3 (`Gemma3ForConditionalGeneration`).

Pixel layout: pixel_values (num_images, 3, S, S), the picture squashed to S×S (896 for Gemma 3) and
normalized; token_type_ids (sequence_length,) mark image tokens (1), which attend to each other both ways.
δv has shape (3, S, S) and is added to the normalized pixels of each protected image, as for LLaVA-1.5.
With pan-and-scan on, the processor adds crops as further S×S images of the same row; each gets δv whole.
"""

from __future__ import annotations

from .llava import LlavaAdapter
from .registry import register_adapter


@register_adapter
class Gemma3Adapter(LlavaAdapter):
    architectures = ("Gemma3ForConditionalGeneration",)
    token_field_names = ("token_type_ids",)

    def visual_shape(self) -> tuple[int, ...]:
        size = self.processor.image_processor.size
        return (3, size["height"], size["width"])
