"""What a security tensor looks like: pictures and numbers for δv, sizes and nearest words for δt.

δv lives in the model's *normalized* pixel space, so it is shown the way the model meets it: the picture after
preprocessing (resized, cropped, then de-normalized back to colours), the same picture with δv added, δv itself
stretched to full contrast, and a heat map of |δv|. One unit of δv is one standard deviation of a colour channel,
so its size is also given in 0–255 colour levels.

δt is a row of virtual-token embeddings; the nearest vocabulary embeddings (cosine similarity) show whether
they resemble words at all (usually they do not).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .errors import SectensorError
from .lvlm import LVLM

DISPLAY_SIDE = 256  # smaller model inputs are enlarged (nearest neighbour) to about this size for display
CHANNELS = ("red", "green", "blue")


@dataclass
class VisualViews:
    model_view: Image.Image  # the picture as the model sees it, without δv
    protected_view: Image.Image  # the same with δv added
    clipped_fraction: float  # share of values that leave the displayable colour range once δv is added


def _first_picture(pixel_values: torch.Tensor, lvlm: LVLM) -> torch.Tensor:
    """The first (3, H, W) picture in a family's pixel tensor (LLaVA: the image; tiled families: the overview tile)."""
    if pixel_values.dim() < 3 or pixel_values.shape[-3] != 3:
        raise SectensorError(
            f"{lvlm.architecture} passes pixels as {tuple(pixel_values.shape)}, not as (…, 3, height, width) "
            "pictures; the picture views are not available for this family"
        )
    return pixel_values.reshape(-1, *pixel_values.shape[-3:])[0].detach().float().cpu()


def _to_picture(colours: torch.Tensor) -> Image.Image:
    """(3, H, W) colours, clipped to [0, 1], as an enlarged picture."""
    colours = colours.clamp(0, 1)
    return _enlarged(Image.fromarray((colours.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)))


def _enlarged(picture: Image.Image) -> Image.Image:
    scale = max(1, DISPLAY_SIDE // max(picture.size))
    return picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)


def visual_views(lvlm: LVLM, image: Image.Image, tensor) -> VisualViews:
    """The picture as the model sees it after preprocessing, without and with δv (clamped as in use)."""
    row = lvlm.adapter.encode(image.convert("RGB"), "x")
    fields = dict(row.image_fields)
    delta = tensor.clamped().to(fields["pixel_values"].dtype)
    protected = lvlm.adapter.apply_visual(fields, delta, torch.tensor([True]))
    mean, std = (value.view(3, 1, 1) for value in lvlm.pixel_normalization())
    plain = _first_picture(fields["pixel_values"], lvlm) * std + mean
    perturbed = _first_picture(protected["pixel_values"], lvlm) * std + mean
    clipped = float(((perturbed < 0) | (perturbed > 1)).float().mean())
    return VisualViews(_to_picture(plain), _to_picture(perturbed), clipped)


def delta_amplified(tensor) -> Image.Image:
    """δv stretched so its largest value spans the colour range: grey is zero, bright is positive, dark negative."""
    delta = visual_delta(tensor)
    peak = float(delta.abs().max()) or 1.0
    return _to_picture(delta / peak * 0.5 + 0.5)


def delta_heatmap(tensor) -> Image.Image:
    """|δv| per pixel (mean over colour channels) with a colour bar in normalized units."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: figures here are drawn from request threads

    magnitude = visual_delta(tensor).abs().mean(dim=0).numpy()  # (H, W)
    figure = Figure(figsize=(4.2, 3.4), dpi=80)
    axes = figure.add_subplot()
    shown = axes.imshow(magnitude, cmap="magma", vmin=0, interpolation="nearest")
    axes.set_axis_off()
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def visual_delta(tensor) -> torch.Tensor:
    """δv as applied (clamped), as a (3, H, W) float tensor on the CPU; a clear error for δt or another layout."""
    if tensor.kind != "visual":
        raise SectensorError(f"this is a {tensor.kind} tensor; pictures exist only for visual tensors (δv)")
    delta = tensor.clamped().detach().float().cpu()
    if delta.dim() != 3 or delta.shape[0] != 3:
        raise SectensorError(f"δv of shape {tuple(delta.shape)} is not a (3, height, width) picture")
    return delta


def visual_numbers(tensor, lvlm: LVLM | None = None) -> dict:
    """Sizes of δv (as applied, i.e. clamped): overall and per colour channel.

    With `lvlm`, per-channel L∞ is also given in 0–255 colour levels (δ · std · 255).
    """
    delta = visual_delta(tensor)
    std = lvlm.pixel_normalization()[1] if lvlm is not None else None
    at_bound = float((delta.abs() >= 0.999 * tensor.threshold).float().mean())
    channels = []
    for index, name in enumerate(CHANNELS):
        values = delta[index]
        row = {
            "channel": name, "mean": float(values.mean()), "std": float(values.std()),
            "L∞": float(values.abs().max()), "L2": float(values.norm()),
        }
        if std is not None:
            row["L∞ (0–255 levels)"] = float(values.abs().max() * std[index] * 255)
        channels.append(row)
    return {
        "shape": list(delta.shape), "threshold": tensor.threshold, "L∞": float(delta.abs().max()),
        "L2": float(delta.norm()), "mean": float(delta.mean()), "mean |δv|": float(delta.abs().mean()),
        "share at ±threshold": at_bound, "channels": channels,
    }


@torch.no_grad()
def textual_numbers(tensor, lvlm: LVLM, nearest: int = 3) -> dict:
    """Size and norms of δt, compared with the vocabulary's embeddings; the nearest tokens to each virtual token."""
    if tensor.kind != "textual":
        raise SectensorError(f"this is a {tensor.kind} tensor; token neighbours exist only for textual tensors (δt)")
    # On the CPU: runs outside GPU time (ZeroGPU) and is done once per tensor.
    vocabulary = lvlm.model.get_input_embeddings().weight.detach().float().cpu()  # (vocab_size, hidden_size)
    delta = tensor.embeddings.detach().float().cpu()  # (num_tokens, hidden_size)
    norms = delta.norm(dim=1)
    similarity = torch.nn.functional.normalize(delta, dim=1) @ torch.nn.functional.normalize(vocabulary, dim=1).T
    scores, ids = similarity.topk(min(nearest, vocabulary.shape[0]), dim=1)  # (num_tokens, nearest)
    tokens = [lvlm.tokenizer.convert_ids_to_tokens(row) for row in ids.tolist()]
    vocabulary_norms = vocabulary.norm(dim=1)
    return {
        "num_tokens": tensor.num_tokens, "hidden_size": int(delta.shape[1]), "placement": tensor.placement,
        "L2": float(delta.norm()),
        "token L2 min / mean / max": [float(norms.min()), float(norms.mean()), float(norms.max())],
        "vocabulary token L2 mean": float(vocabulary_norms.mean()),
        "nearest": [
            {"virtual token": index, "L2": float(norms[index]),
             "nearest tokens": [(token, float(score)) for token, score in zip(tokens[index], scores[index].tolist())]}
            for index in range(tensor.num_tokens)
        ],
    }
