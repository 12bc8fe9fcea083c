"""Qwen2-VL and Qwen2.5-VL (`Qwen2VLForConditionalGeneration`, `Qwen2_5_VLForConditionalGeneration`).

Pixel layout: the processor resizes each picture to (H, W), multiples of factor = patch_size · merge_size
(P · M = 14 · 2) chosen by `smart_resize` within its pixel budget, normalizes it, repeats it over
temporal_patch_size (T = 2) frames and flattens it into patches, merge block by merge block:
    (C, H, W) -> (C, gh/M, M, P, gw/M, M, P) -> (gh/M, gw/M, M, M, C, P, P) -> T copies ->
    (gh · gw, C · T · P · P),  gh = H / P, gw = W / P,  image_grid_thw = (1, gh, gw)
The model takes pixel_values (Σ gh · gw, C · T · P · P) for the whole batch, image_grid_thw (num_images, 3)
and mm_token_type_ids (batch_size, sequence_length) (1 on image tokens), from which it builds its 3-D rope
positions. Here a batch keeps one row of patches per image, (num_images, max_patches, C · T · P · P),
zero-padded; `model_image_inputs` flattens it back to the model's layout.

δv has shape (3, S, S) with S = 448 (or the largest multiple of the factor within the processor's largest
picture, if that is smaller). For each image it is resampled (bilinear) to that image's (H, W) = (gh · P, gw · P)
and patchified exactly as above, so it lands on the same pixels as the picture.

Example (P = 14, M = 2, T = 2, a picture resized to 308 × 448):
    gh, gw = 22, 32; δv (3, 448, 448) -> resampled (3, 308, 448) -> (3, 11, 2, 14, 16, 2, 14)
    -> (11, 16, 2, 2, 3, 14, 14) -> 2 frames (11, 16, 2, 2, 3, 2, 14, 14) -> (704, 1176), added to that image's
    704 patch rows.
δt goes before the user's text (or before <|vision_start|>, placed before the picture) with mm_token_type_ids 0
(text), so the rope positions of what follows shift by the number of virtual tokens, as for any inserted text.
"""

from __future__ import annotations

import math

import torch
from PIL import Image

from .base import FamilyAdapter, RowEncoding
from .layout import add_to_protected, pad_to, resize
from .registry import register_adapter

CANONICAL_SIZE = 448


@register_adapter
class Qwen2VLAdapter(FamilyAdapter):
    architectures = ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")
    decodes_with_language_model = False  # its decoding positions depend on the image grid (multimodal rotary positions)
    token_field_names = ("mm_token_type_ids",)
    image_field_names = ("pixel_values", "image_grid_thw")
    image_features_module = "visual.merger"

    @property
    def _geometry(self) -> tuple[int, int, int]:
        image_processor = self.processor.image_processor
        return image_processor.patch_size, image_processor.merge_size, image_processor.temporal_patch_size

    def visual_shape(self) -> tuple[int, ...]:
        patch_size, merge_size, _ = self._geometry
        factor = patch_size * merge_size
        max_pixels = self.processor.image_processor.size["longest_edge"]
        side = min(CANONICAL_SIZE, math.isqrt(max_pixels) // factor * factor)
        return (3, side, side)

    def _process(self, image: Image.Image | None, text: str, add_special_tokens: bool) -> RowEncoding:
        row = super()._process(image, text, add_special_tokens)
        if "pixel_values" in row.image_fields:  # (num_patches, D) -> one row of patches per image (1, num_patches, D)
            row.image_fields["pixel_values"] = row.image_fields["pixel_values"][None]
        return row

    def map_delta(self, delta: torch.Tensor, grid_height: int, grid_width: int) -> torch.Tensor:
        """δv (3, S, S) as the flattened patches of one image with grid (1, gh, gw): (gh · gw, 3 · T · P · P)."""
        P, M, T = self._geometry
        C = delta.shape[0]
        resized = resize(delta, grid_height * P, grid_width * P)
        patches = resized.reshape(C, grid_height // M, M, P, grid_width // M, M, P).permute(1, 4, 2, 5, 0, 3, 6)
        patches = patches[:, :, :, :, :, None].expand(-1, -1, -1, -1, -1, T, -1, -1)  # (gh/M, gw/M, M, M, C, T, P, P)
        return patches.reshape(grid_height * grid_width, C * T * P * P)

    def apply_visual(
        self, image_fields: dict[str, torch.Tensor], delta: torch.Tensor, protected_images: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        pixel_values = image_fields["pixel_values"]  # (num_images, max_patches, C·T·P·P)
        delta = delta.to(pixel_values.dtype)
        mapped = []
        for frames, grid_height, grid_width in image_fields["image_grid_thw"].tolist():
            if frames != 1:
                raise ValueError(f"an image has {frames} frames in image_grid_thw; images have one")
            mapped.append(pad_to(self.map_delta(delta, grid_height, grid_width), pixel_values.shape[1]))
        return {**image_fields, "pixel_values": add_to_protected(pixel_values, torch.stack(mapped), protected_images)}

    def model_image_inputs(
        self, image_fields: dict[str, torch.Tensor], image_rows: torch.Tensor, input_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        if "pixel_values" not in image_fields:
            return dict(image_fields)
        counts = image_fields["image_grid_thw"].prod(dim=-1).tolist()
        flat = torch.cat([patches[:count] for patches, count in zip(image_fields["pixel_values"], counts)])
        return {**image_fields, "pixel_values": flat}  # (Σ patches, C·T·P·P)
