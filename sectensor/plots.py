"""Figures for training runs: loss curves per split, and what a δv looks like. Written by train.py next to the
tensor (the Hub card shows them) and by the report. matplotlib is imported only when a figure is drawn (machines
without it can still train).
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import torch

from .visualization import visual_delta

SPLIT_COLOURS = {"SA": "#c0392b", "TCB": "#2471a3", "GB": "#229954"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def read_log(log_path: str | os.PathLike) -> list[dict]:
    """The records of a JSON-lines training log (one per optimizer step)."""
    return [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]


def _smoothed(values: list[float], weight: float = 0.9) -> list[float]:
    out, running = [], None
    for value in values:
        running = value if running is None else weight * running + (1 - weight) * value
        out.append(running)
    return out


def plot_losses(log_path: str | os.PathLike, out_png: str | os.PathLike, title: str | None = None) -> Path:
    """Per-split training loss against optimizer step (thin: every step; thick: smoothed)."""
    records = read_log(log_path)
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    for split, colour in SPLIT_COLOURS.items():
        points = [(record["step"], record[split]) for record in records if split in record]
        if not points:
            continue
        steps, values = zip(*points)
        axis.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
        axis.plot(steps, _smoothed(list(values)), color=colour, linewidth=1.8, label=split)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss (CE to target, or KL to base)")
    axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend()
    axis.set_title(textwrap.fill(title or Path(log_path).parent.name, 60))  # report run names can be long
    figure.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png)
    plt.close(figure)
    return out_png


def plot_visual_tensor(tensor, out_png: str | os.PathLike, title: str | None = None) -> Path:
    """δv per colour channel (blue negative, red positive, ±threshold) and as one picture scaled to full range.

    tensor: a VisualSecurityTensor whose delta has shape `(3, H, W)`.
    """
    delta = visual_delta(tensor)
    limit = float(tensor.threshold)
    plt = _pyplot()
    figure, axes = plt.subplots(1, 4, figsize=(10, 2.9), dpi=120)
    for axis, channel, name in zip(axes, delta, ("red", "green", "blue")):
        image = axis.imshow(channel.numpy(), cmap="seismic", vmin=-limit, vmax=limit)
        axis.set_title(f"{name} channel")
    picture = ((delta / max(float(delta.abs().max()), 1e-8) + 1) / 2).permute(1, 2, 0)  # (H, W, 3) in [0, 1]
    axes[3].imshow(torch.clamp(picture, 0, 1).numpy())
    axes[3].set_title("amplified")
    for axis in axes:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.colorbar(image, ax=axes[:3].tolist(), shrink=0.8, label="normalized pixel units")
    figure.suptitle(title or f"δv {tuple(delta.shape)}, clamp ±{limit:g}, mean |δ| {float(delta.abs().mean()):.3f}")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png)
    plt.close(figure)
    return out_png
