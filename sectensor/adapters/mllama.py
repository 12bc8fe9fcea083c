"""Llama-3.2-Vision (`MllamaForConditionalGeneration`): tiles and aspect ratios; the image enters through
cross-attention layers, not as tokens.

Pixel layout: the processor picks a canvas of th × tw tiles of S×S (S = 560, th · tw ≤ max_image_tiles = 4),
fits the picture into it with its aspect ratio kept (content size ch × cw), pads the bottom and right with
zeros, normalizes and cuts the canvas into tiles row by row. The model takes, per row of the batch,
pixel_values (batch_size, max_images, max_tiles, 3, S, S), aspect_ratio_ids (batch_size, max_images),
aspect_ratio_mask (batch_size, max_images, max_tiles) and cross_attention_mask (batch_size, sequence_length,
max_images, max_tiles): 1 where a token may attend to a tile, i.e. from the <|image|> token on.
Here a batch keeps one entry per image: pixel_values (num_images, max_tiles, 3, S, S), aspect_ratio_ids
(num_images,), aspect_ratio_mask (num_images, max_tiles) and a `tile_layout` (num_images, 4) = (ch, cw, th, tw)
that the model never sees. `model_image_inputs` puts each image in its row and derives cross_attention_mask
from the token positions, so δt slots and answer tokens, which come after the image, attend to it too.

δv has shape (3, S, S). For each image it is resampled (bilinear) to the content size (ch, cw), put at the
top left of a zero (3, th · S, tw · S) canvas and cut into th · tw tiles, as the picture is.

Example (S = 560, max 4 tiles, a picture of height 400 and width 1200): the smallest canvas that needs no
shrinking is 1 × 3 tiles (560 × 1680); the picture fits it unscaled, content (400, 1200)
    δv (3, 560, 560) -> resampled (3, 400, 1200) -> canvas (3, 560, 1680) -> tiles (3, 3, 560, 560) -> padded to
    (4, 3, 560, 560), added to pixel_values[i].

A text-only row batched with image rows gets zero pixels and an all-zero cross_attention_mask, as the
processor gives it; the model then still adds gated cross-attention over those zero tiles to it, so such a
row's logits differ (slightly) from running it alone. Rows with images are unaffected.
"""

from __future__ import annotations

import torch
from PIL import Image

from .base import FamilyAdapter, RowEncoding
from .layout import add_to_protected, pad_to, place, split_tiles
from .registry import register_adapter


@register_adapter
class MllamaAdapter(FamilyAdapter):
    architectures = ("MllamaForConditionalGeneration",)
    decodes_with_language_model = False  # its language model cross-attends to the image at every step
    supports_static_cache = False  # its cross-attention key-value cache is not checked with compiled decoding
    supports_prefix_cache = False  # the tokens after the prefix need the cross-attention mask of the image rows
    image_field_names = ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")

    def visual_shape(self) -> tuple[int, ...]:
        size = self.processor.image_processor.size
        return (3, size["height"], size["width"])

    def _process(self, image: Image.Image | None, text: str, add_special_tokens: bool) -> RowEncoding:
        from transformers.models.mllama.image_processing_pil_mllama import (
            get_image_size_fit_to_canvas, get_optimal_tiled_canvas,
        )

        row = super()._process(image, text, add_special_tokens)
        if image is None:
            return row
        # (1, 1, ...) per row of one image -> (1, ...) per image
        row.image_fields = {name: value[0] for name, value in row.image_fields.items()}
        image_processor = self.processor.image_processor
        tile = image_processor.size["height"]
        canvas_height, canvas_width = get_optimal_tiled_canvas(image.height, image.width, image_processor.max_image_tiles, tile)
        content = get_image_size_fit_to_canvas(image.height, image.width, canvas_height, canvas_width, tile)
        row.image_fields["tile_layout"] = torch.tensor([[*content, canvas_height // tile, canvas_width // tile]])
        return row

    def map_delta(self, delta: torch.Tensor, layout: list[int]) -> torch.Tensor:
        """δv (3, S, S) on the tiles of one image with tile_layout (ch, cw, th, tw): (th · tw, 3, S, S)."""
        content_height, content_width, tiles_high, tiles_wide = layout
        _, S, _ = delta.shape
        canvas = place(delta, content_height, content_width, tiles_high * S, tiles_wide * S)
        return split_tiles(canvas, S, S)

    def apply_visual(
        self, image_fields: dict[str, torch.Tensor], delta: torch.Tensor, protected_images: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        pixel_values = image_fields["pixel_values"]  # (num_images, max_tiles, 3, S, S)
        delta = delta.to(pixel_values.dtype)
        mapped = torch.stack([
            pad_to(self.map_delta(delta, layout), pixel_values.shape[1]) for layout in image_fields["tile_layout"].tolist()
        ])
        return {**image_fields, "pixel_values": add_to_protected(pixel_values, mapped, protected_images)}

    def model_image_inputs(
        self, image_fields: dict[str, torch.Tensor], image_rows: torch.Tensor, input_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        if "pixel_values" not in image_fields:
            return {}
        if image_rows.unique().numel() != image_rows.numel():
            raise ValueError("Mllama rows here hold at most one image each")
        batch_size = input_ids.shape[0]
        per_row = {}
        for name in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask"):
            value = image_fields[name]
            rows = value.new_zeros((batch_size, 1, *value.shape[1:]))  # (batch_size, max_images = 1, ...)
            rows[image_rows.to(value.device), 0] = value
            per_row[name] = rows
        # A token attends to its row's image tiles from the <|image|> token on.
        after_image = (input_ids == self.model.config.image_token_index).cumsum(dim=1) > 0  # (batch_size, seq)
        tiles = per_row["aspect_ratio_mask"][:, 0].bool()  # (batch_size, max_tiles)
        cross_attention_mask = after_image[:, :, None, None] & tiles[:, None, None, :]  # (batch_size, seq, 1, max_tiles)
        return {**per_row, "cross_attention_mask": cross_attention_mask.long()}
