"""How far a drawing style moves a picture's features, and how much feature noise the model itself shrugs off.

    python scripts/probe_feature_noise.py --model assets/organism --data assets/data/tensor_tests.jsonl

Two measurements behind `train.py --image-noise` (docs/training-levers.md):
1. For every concept drawn in Noto and in another style of `assets/images/`, the RMS distance between the two
   drawings' features where the language model reads them (`LVLM.image_feature_module`), token by token,
   relative to the Noto features' RMS; averaged over concepts, per style. Two different concepts in Noto give the
   scale of a change of object.
2. The base model's answers to the caption, benign and unseen-harmful test rows with noise of each `--scales` times
   the features' RMS added to every picture (`LVLM.image_feature_noise`, seed 0): the split table of
   `python -m sectensor.evaluate` per scale.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sectensor  # noqa: E402
from sectensor.data import load_manifest, open_image  # noqa: E402
from sectensor.evaluate import evaluate, format_table  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_feature_shift import captured_features  # noqa: E402

IMAGES = Path(__file__).resolve().parents[1] / "assets" / "images"
SPLITS = ("caption", "benign_neutral", "harmful_unseen")


def picture_features(lvlm: sectensor.LVLM, path: Path) -> torch.Tensor:
    """(tokens, features) of one picture, captured where the language model reads it."""
    return captured_features(lvlm, lvlm.encode([open_image(path)], ["what is this?"]))[0]


def relative_distance(features: torch.Tensor, reference: torch.Tensor) -> float:
    return ((features - reference).pow(2).mean(-1).sqrt() / reference.pow(2).mean(-1).sqrt()).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="assets/organism")
    parser.add_argument("--data", default="assets/data/tensor_tests.jsonl")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0, 2.0])
    args = parser.parse_args()
    lvlm = sectensor.load_lvlm(args.model)

    noto = {path.name: picture_features(lvlm, path) for path in sorted((IMAGES / "noto").glob("*.png"))}
    for style in sorted(path.name for path in IMAGES.iterdir() if path.is_dir() and path.name != "noto"):
        shared = [path for path in sorted((IMAGES / style).glob("*.png")) if path.name in noto]
        if shared:
            distances = [relative_distance(picture_features(lvlm, path), noto[path.name]) for path in shared]
            print(f"{style}: {sum(distances) / len(distances):.3f} of the RMS from Noto ({len(shared)} concepts)")
    pairs = list(itertools.combinations(noto.values(), 2))
    print(f"two different concepts in Noto: {sum(relative_distance(a, b) for a, b in pairs) / len(pairs):.3f}")

    samples = load_manifest(args.data, SPLITS)
    for scale in args.scales:
        generator = torch.Generator(device=lvlm.device).manual_seed(0)
        with lvlm.image_feature_noise(scale, generator):
            result = evaluate(lvlm, samples, None, batch_size=64, progress=False)
        print(f"\nnoise of {scale:g} x the features' RMS\n{format_table(result['splits'])}")


if __name__ == "__main__":
    main()
