"""What a security tensor looks like: the model's view of a picture, δv pictures and numbers, δt neighbours.

    python -m pytest tests/test_visualization.py
"""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from sectensor import SectensorError, TextualSecurityTensor, VisualSecurityTensor
from sectensor.visualization import (
    delta_amplified, delta_heatmap, textual_numbers, visual_numbers, visual_views,
)


def test_model_view_undoes_the_normalization(tiny_llava):
    side = tiny_llava.adapter.visual_shape()[-1]
    flat = Image.new("RGB", (side, side), (200, 40, 90))
    views = visual_views(tiny_llava, flat, VisualSecurityTensor.zeros(tiny_llava))
    colours = np.asarray(views.model_view).reshape(-1, 3)
    assert np.abs(colours.astype(int) - [200, 40, 90]).max() <= 1
    assert views.model_view.tobytes() == views.protected_view.tobytes() and views.clipped_fraction == 0


def test_protected_view_shows_delta_in_colour_levels(tiny_llava):
    side = tiny_llava.adapter.visual_shape()[-1]
    grey = Image.new("RGB", (side, side), (128, 128, 128))
    delta = torch.zeros(tiny_llava.adapter.visual_shape())
    delta[0] = 0.25  # +0.25 standard deviations of red, everywhere
    views = visual_views(tiny_llava, grey, VisualSecurityTensor(delta))
    red_std = tiny_llava.processor.image_processor.image_std[0]
    shift = np.asarray(views.protected_view).astype(int) - np.asarray(views.model_view).astype(int)
    assert np.allclose(shift[..., 0], 0.25 * red_std * 255, atol=1) and np.abs(shift[..., 1:]).max() == 0


def test_numbers_of_a_known_delta(tiny_llava):
    shape = tiny_llava.adapter.visual_shape()
    delta = torch.full(shape, -0.5)
    delta[2] = 2.0  # clamped to the threshold 1.0 when applied
    numbers = visual_numbers(VisualSecurityTensor(delta, threshold=1.0), tiny_llava)
    per_channel = shape[1] * shape[2]
    assert numbers["L∞"] == 1.0
    assert math.isclose(numbers["L2"], math.sqrt(2 * per_channel * 0.25 + per_channel), rel_tol=1e-5)
    assert math.isclose(numbers["share at ±threshold"], 1 / 3, rel_tol=1e-5)
    blue = numbers["channels"][2]
    assert blue["channel"] == "blue" and blue["mean"] == 1.0 and blue["std"] == 0.0
    red_std = tiny_llava.processor.image_processor.image_std[0]
    assert math.isclose(numbers["channels"][0]["L∞ (0–255 levels)"], 0.5 * red_std * 255, rel_tol=1e-5)


def test_delta_pictures(tiny_llava):
    zero = VisualSecurityTensor.zeros(tiny_llava)
    assert set(np.unique(np.asarray(delta_amplified(zero)))) == {128}  # zero is mid-grey
    torch.manual_seed(0)
    noisy = VisualSecurityTensor(torch.randn(tiny_llava.adapter.visual_shape()))
    amplified = np.asarray(delta_amplified(noisy))
    assert amplified.min() == 0 or amplified.max() == 255  # stretched to full contrast
    heatmap = delta_heatmap(noisy)
    assert heatmap.mode == "RGB" and min(heatmap.size) > 100
    with pytest.raises(SectensorError, match="visual"):
        delta_heatmap(TextualSecurityTensor.zeros(tiny_llava, num_tokens=2))


def test_textual_neighbours_find_the_tokens_it_was_made_from(tiny_llava):
    tensor = TextualSecurityTensor.from_vocabulary(tiny_llava, num_tokens=6, seed=4)
    table = tiny_llava.model.get_input_embeddings().weight
    numbers = textual_numbers(tensor, tiny_llava, nearest=2)
    assert numbers["num_tokens"] == 6 and numbers["hidden_size"] == tiny_llava.hidden_size
    assert numbers["placement"] == "before_text"
    placed = TextualSecurityTensor.from_vocabulary(tiny_llava, num_tokens=2, placement="before_image")
    assert textual_numbers(placed, tiny_llava)["placement"] == "before_image"
    for index, row in enumerate(numbers["nearest"]):
        token, score = row["nearest tokens"][0]
        source = int((table - tensor.embeddings[index]).abs().sum(dim=1).argmin())
        assert token == tiny_llava.tokenizer.convert_ids_to_tokens(source) and score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(SectensorError, match="textual"):
        textual_numbers(VisualSecurityTensor.zeros(tiny_llava), tiny_llava)
