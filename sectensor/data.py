"""Data manifests and images.

A manifest is JSON Lines, one sample a line:
    {"image": "pictures/bomb.png" | null, "prompt": "...", "split": "SA" | "TCB" | "GB" | any test name,
     "harmful": true, "category": "weapons", "concept": "bomb", "target": "optional training answer",
     "answer_contains": ["optional", "strings"]}
Image paths are relative to the manifest. The reference code's JSON format (a list of objects with
`pic_path`, `input`, `output`, `type` = "SA set" | "TCB set" | "GB set", `output_refuse`) is read too.
Bad rows are reported together, each with its line number; nothing is dropped silently.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from .errors import ImageError, ManifestError

TRAINING_SPLITS = ("SA", "TCB", "GB")
_REFERENCE_TYPES = {"SA set": "SA", "TCB set": "TCB", "GB set": "GB"}
_KNOWN_KEYS = {"image", "prompt", "split", "harmful", "category", "concept", "target", "answer_contains"}
MAX_IMAGE_PIXELS = 100_000_000  # larger images are refused before decoding
MAX_IMAGE_SIDE = 2048  # images are downscaled to this longest side after decoding


@dataclass
class Sample:
    prompt: str
    split: str
    image: str | None = None  # absolute path
    harmful: bool = False
    category: str | None = None
    concept: str | None = None
    target: str | None = None
    answer_contains: list[str] = field(default_factory=list)
    source: str = ""  # "file:line", for messages

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        row.pop("source")
        return row


def load_manifest(path: str | os.PathLike, splits: Sequence[str] | None = None) -> list[Sample]:
    """Read a manifest (.jsonl), a reference-format .json, or every .jsonl in a folder.

    `splits` restricts the result to those split names; a name that matches nothing is an error.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise ManifestError(f"{path} holds no .jsonl manifests")
        samples = [sample for file in files for sample in _load_file(file)]
    elif path.is_file():
        samples = _load_file(path)
    else:
        raise ManifestError(f"no manifest at {path}")
    if splits is not None:
        missing = set(splits) - {sample.split for sample in samples}
        if missing:
            raise ManifestError(f"{path} has no rows in split(s) {sorted(missing)}")
        samples = [sample for sample in samples if sample.split in splits]
    return samples


def _load_file(path: Path) -> list[Sample]:
    errors: list[str] = []
    samples: list[Sample] = []
    if path.suffix == ".json":
        rows = _reference_rows(path, errors)
    else:
        rows = []
        for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((line_number, json.loads(line)))
            except json.JSONDecodeError as error:
                errors.append(f"line {line_number}: not valid JSON ({error.msg})")
    for line_number, row in rows:
        try:
            samples.append(_sample(row, path, line_number))
        except ValueError as error:
            errors.append(f"line {line_number}: {error}")
    if errors:
        shown = "\n  ".join(errors[:50]) + (f"\n  ... and {len(errors) - 50} more" if len(errors) > 50 else "")
        raise ManifestError(f"{path}: {len(errors)} bad row(s):\n  {shown}")
    return samples


def _reference_rows(path: Path, errors: list[str]) -> list[tuple[int, dict]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        errors.append(f"line {error.lineno}: not valid JSON ({error.msg})")
        return []
    if not isinstance(data, list):
        errors.append("line 1: expected a JSON list of samples (reference format)")
        return []
    rows = []
    for index, item in enumerate(data, start=1):
        if not isinstance(item, dict) or "type" not in item:
            rows.append((index, item if isinstance(item, dict) else {"_bad": item}))
            continue
        split = _REFERENCE_TYPES.get(item["type"], item["type"])
        harmful = split == "SA"
        rows.append((index, {
            "image": item.get("pic_path"),
            "prompt": item.get("input"),
            "split": split,
            "harmful": harmful,
            "target": item.get("output_refuse") if harmful else item.get("output"),
        }))
    return rows


def _sample(row: Any, manifest: Path, line_number: int) -> Sample:
    if not isinstance(row, dict):
        raise ValueError("expected a JSON object")
    unknown = set(row) - _KNOWN_KEYS
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}")
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("empty or missing prompt")
    split = row.get("split")
    if not isinstance(split, str) or not split.strip():
        raise ValueError("missing split")
    if split.endswith(" set") or split.upper() in TRAINING_SPLITS and split not in TRAINING_SPLITS:
        raise ValueError(f"unknown split {split!r}; training splits are {', '.join(TRAINING_SPLITS)}")
    image = row.get("image")
    if image is not None:
        if not isinstance(image, str) or not image:
            raise ValueError("image must be a path or null")
        image_path = Path(image) if os.path.isabs(image) else manifest.parent / image
        if not image_path.is_file():
            raise ValueError(f"image file not found: {image_path}")
        image = str(image_path.resolve())
    harmful = row.get("harmful", split == "SA")
    if not isinstance(harmful, bool):
        raise ValueError("harmful must be true or false")
    target = row.get("target")
    if target is not None and not isinstance(target, str):
        raise ValueError("target must be a string")
    contains = row.get("answer_contains") or []
    if not isinstance(contains, list) or not all(isinstance(item, str) and item for item in contains):
        raise ValueError("answer_contains must be a list of non-empty strings")
    return Sample(
        prompt=prompt, split=split, image=image, harmful=harmful, category=row.get("category"),
        concept=row.get("concept"), target=target, answer_contains=contains, source=f"{manifest}:{line_number}",
    )


def open_image(source: str | os.PathLike | Image.Image, max_side: int = MAX_IMAGE_SIDE) -> Image.Image:
    """Open an image safely as RGB: refuse non-images and decompression bombs, downscale huge ones."""
    if isinstance(source, Image.Image):
        image = source
    else:
        try:
            with Image.open(source) as probe:
                width, height = probe.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise ImageError(
                        f"{source}: {width}×{height} pixels is too large (limit {MAX_IMAGE_PIXELS // 1_000_000} megapixels)"
                    )
                probe.load()
                image = probe.copy()
        except FileNotFoundError:
            raise ImageError(f"image not found: {source}") from None
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as error:
            raise ImageError(f"{source} is not a readable image ({error})") from None
    if image.mode != "RGB":
        rgba = image.convert("RGBA")  # transparent areas become white, as CLIP-style processors do
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def sample_image(sample: Sample) -> Image.Image | None:
    return open_image(sample.image) if sample.image else None
