"""Augmentation: random views of the pictures a tensor (or the organism) trains on, and of a tensor's benign wording.

Geometry (scale, shift, flip) keeps a tensor from memorising where things sit in the training pictures; colour
jitter (brightness, contrast, saturation, a small hue turn, sometimes grey, a soft light gradient) keeps what it
learns from hanging on how the training drawings are coloured. The organism's build uses the same colour jitter to
recognise drawing styles it never trained on; for tensors it is `--augment-colours` (measured in
docs/training-levers.md).

Wording noise (`reword`, for `--word-noise`) drops, swaps or adds words of a prompt: every benign-side miss of the
text-rows δt (`textual-text-rows-lr32e-4-kl`) on the organism is a test wording it never trained on, not a drawing
style (docs/training-levers.md).
"""

from __future__ import annotations

import math
import re
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .errors import SectensorError


def jitter_colours(rgb: torch.Tensor, rand: Callable[..., torch.Tensor]) -> torch.Tensor:
    """Random colour views of (B, 3, H, W) RGB pictures in [0, 1] (the result may leave [0, 1]).

    `rand(*shape)` draws uniform numbers on `rgb`'s device; the draws come in a fixed order, so one generator
    state gives one view.
    """
    B, _, H, W = rgb.shape
    dev = rgb.device
    grey = rgb.mean(1, keepdim=True)
    saturation = 0.6 + 0.8 * rand(B, 1, 1, 1)
    rgb = grey + (rgb - grey) * saturation
    # A hue turn about the grey axis (Rodrigues' rotation by up to ±22.5°).
    hue = (rand(B) - 0.5) * (math.pi / 4)
    k = torch.full((3,), 1 / math.sqrt(3), device=dev)
    K = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], device=dev)
    R = torch.eye(3, device=dev) + torch.sin(hue).view(B, 1, 1) * K + (1 - torch.cos(hue)).view(B, 1, 1) * (K @ K)
    rgb = torch.einsum("bij,bjhw->bihw", R, rgb)
    mean = rgb.mean((1, 2, 3), keepdim=True)
    rgb = mean + (rgb - mean) * (0.7 + 0.6 * rand(B, 1, 1, 1))  # contrast
    rgb = rgb * (0.75 + 0.5 * rand(B, 1, 1, 1))  # brightness
    # A soft light gradient across the object (flat vs. shaded drawing styles).
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, H, device=dev), torch.linspace(-1, 1, W, device=dev), indexing="ij")
    direction = rand(B) * 2 * math.pi
    ramp = torch.cos(direction).view(B, 1, 1) * xs + torch.sin(direction).view(B, 1, 1) * ys
    rgb = rgb * (1 + (rand(B, 1, 1) - 0.5).mul(0.6) * ramp).unsqueeze(1)
    to_grey = (rand(B, 1, 1, 1) < 0.2).float()
    return to_grey * rgb.mean(1, keepdim=True).expand_as(rgb) + (1 - to_grey) * rgb


def augment_pixels(pixel_values: torch.Tensor, generator: torch.Generator, geometry: bool = True,
                   normalization: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Random views of preprocessed pictures: with `geometry`, scale (0.8–1.05), shift (±10 %) and horizontal flip,
    borders repeated; with `normalization` (the processor's per-channel mean and std), colour jitter
    (`jitter_colours`) on the pictures' colours, clipped to [0, 1].

    pixel_values: (num_images, 3, H, W), already normalized; returns the same shape and dtype.
    """
    if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
        raise SectensorError(
            f"picture augmentation needs pixels laid out as (images, 3, H, W); this family gives {tuple(pixel_values.shape)}"
        )
    n = pixel_values.shape[0]
    out = pixel_values.float()
    if geometry:
        scale = 0.8 + 0.25 * torch.rand(n, generator=generator)
        shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * 0.2  # grid units: 0.2 = 10 % of the side
        flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = flip / scale
        theta[:, 1, 1] = 1 / scale
        theta[:, :, 2] = shift
        grid = F.affine_grid(theta, list(pixel_values.shape), align_corners=False).to(pixel_values.device)
        out = F.grid_sample(out, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if normalization is not None:
        mean, std = (value.to(out.device).view(1, 3, 1, 1) for value in normalization)

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator).to(out.device)

        out = (jitter_colours(out * std + mean, rand).clamp(0, 1) - mean) / std
    return out.to(pixel_values.dtype)


_FINAL_PUNCTUATION = re.compile(r"[?.!]+$")


def prompt_words(prompts: Sequence[str]) -> list[str]:
    """The words of `prompts` (lower case, final punctuation off), sorted: what `reword` swaps and adds."""
    return sorted({_FINAL_PUNCTUATION.sub("", word) for prompt in prompts for word in prompt.lower().split()} - {""})


def reword(prompt: str, words: Sequence[str], rate: float, generator: torch.Generator) -> str:
    """`prompt` with each word, with probability `rate`, dropped, replaced by a word of `words`, or followed by one
    (one of the three alike), and its final punctuation kept. One generator state gives one rewording; at least
    one word always stays."""
    if not words:
        raise SectensorError("rewording needs a vocabulary of at least one word")
    ending = _FINAL_PUNCTUATION.search(prompt.rstrip())
    tokens = _FINAL_PUNCTUATION.sub("", prompt.rstrip()).split()
    draws = torch.rand(len(tokens), 2, generator=generator)
    picks = torch.randint(len(words), (len(tokens),), generator=generator)
    out: list[str] = []
    for token, (hit, action), pick in zip(tokens, draws.tolist(), picks.tolist()):
        if hit >= rate:
            out.append(token)
        elif action < 1 / 3:
            continue  # dropped
        elif action < 2 / 3:
            out.append(words[pick])
        else:
            out += [token, words[pick]]
    if tokens and not out:
        out = tokens[:1]  # every word dropped: keep the first
    return " ".join(out) + (ending.group(0) if ending else "")
