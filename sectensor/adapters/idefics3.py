"""Idefics3 and SmolVLM (`Idefics3ForConditionalGeneration`, `SmolVLMForConditionalGeneration`): tiles.

Pixel layout: pixel_values (num_images, max_tiles, 3, h, w) and pixel_attention_mask (num_images, max_tiles,
h, w). The processor scales the picture so its longest edge is `size["longest_edge"]`, rounds both sides up to
multiples of the tile size S (`max_image_size["longest_edge"]`, 364 for Idefics3, 512 for SmolVLM) and, when
that exceeds one tile, cuts it into rows × cols tiles of S×S, row by row, followed by a global view of the
whole picture squashed to S×S. A picture within one tile stays whole (h, w ≤ S). Smaller pictures and the
batch are zero-padded at the bottom and right (mask 0); padding tiles are all zeros, which is how the model
tells them apart, so they must stay zero. The grid (rows, cols) is read from the <row_r_col_c> tokens the
processor writes and kept in a `tile_grid` (num_images, 2) field that the model never sees.

δv has shape (3, S, S). For each image it is mapped as the processor maps the picture: resampled
(bilinear) to (rows · S, cols · S) and cut into the grid tiles; added whole to the global view; for a single
unsplit tile, resampled to the tile's unpadded size (from pixel_attention_mask). Padding gets nothing.

Example (S = 364, a picture scaled to 1092 × 728 -> rows, cols = 3, 2):
    δv (3, 364, 364) -> resampled (3, 1092, 728) -> 6 tiles (6, 3, 364, 364); + δv for the global view
    -> mapped (7, 3, 364, 364), added to pixel_values[i, :7]
"""

from __future__ import annotations

import re

import torch
from PIL import Image

from .base import FamilyAdapter, RowEncoding
from .layout import add_to_protected, pad_to, place, resize, split_tiles
from .registry import register_adapter

_TILE_TOKEN = re.compile(r"<row_(\d+)_col_(\d+)>")


@register_adapter
class Idefics3Adapter(FamilyAdapter):
    architectures = ("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration")
    image_field_names = ("pixel_values", "pixel_attention_mask")
    image_features_module = "connector"

    def visual_shape(self) -> tuple[int, ...]:
        side = self.processor.image_processor.max_image_size["longest_edge"]
        return (3, side, side)

    def _process(self, image: Image.Image | None, text: str, add_special_tokens: bool) -> RowEncoding:
        row = super()._process(image, text, add_special_tokens)
        if image is not None:
            # The image's tile tokens come before the prompt's own text; take only as many as it has grid tiles.
            grid_tiles = row.image_fields["pixel_values"].shape[1] - 1
            tiles = _TILE_TOKEN.findall(self.tokenizer.decode(row.input_ids))[:grid_tiles]
            rows = max((int(r) for r, _ in tiles), default=0)
            cols = max((int(c) for _, c in tiles), default=0)
            row.image_fields["tile_grid"] = torch.tensor([[rows, cols]])
        return row

    def map_delta(self, delta: torch.Tensor, rows: int, cols: int, global_mask: torch.Tensor) -> torch.Tensor:
        """δv (3, S, S) on one image's tiles: (rows · cols + 1, 3, h, w); `global_mask` (h, w) is the last
        (or only) tile's pixel_attention_mask."""
        height, width = global_mask.shape
        content_height, content_width = int(global_mask.any(1).sum()), int(global_mask.any(0).sum())
        global_view = place(delta, content_height, content_width, height, width)[None]
        if rows == 0:
            return global_view
        return torch.cat([split_tiles(resize(delta, rows * height, cols * width), height, width), global_view])

    def apply_visual(
        self, image_fields: dict[str, torch.Tensor], delta: torch.Tensor, protected_images: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        pixel_values = image_fields["pixel_values"]  # (num_images, max_tiles, 3, h, w)
        delta = delta.to(pixel_values.dtype)
        mapped = []
        for (rows, cols), masks in zip(image_fields["tile_grid"].tolist(), image_fields["pixel_attention_mask"]):
            mapped.append(pad_to(self.map_delta(delta, rows, cols, masks[rows * cols]), pixel_values.shape[1]))
        return {**image_fields, "pixel_values": add_to_protected(pixel_values, torch.stack(mapped), protected_images)}

    def model_image_inputs(
        self, image_fields: dict[str, torch.Tensor], image_rows: torch.Tensor, input_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return {name: value for name, value in image_fields.items() if name != "tile_grid"}
