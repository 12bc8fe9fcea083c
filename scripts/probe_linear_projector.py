"""Whether δv carries further through a linear projector: the organism with its projector made linear.

    python scripts/probe_linear_projector.py --out runs/linear-projector-organism
    python train.py --model runs/linear-projector-organism --kind visual ...   # then any tensor recipe on it

The organism's projector (LLaVA's MLP, 256 -> 384 -> GELU -> 384) is a sparse gate: 0.5 % of its hidden values are
above zero, and δv's change, mostly shared by every picture up to the projector, comes out of it picture by picture
(docs/training-levers.md, "Where on the vision side one shift stops carrying"). This writes a copy of the model whose
projector is the least-squares linear map from the vision features to the old projector's output, fitted over
augmented views of every concept in the training styles (`projector_hidden_act="linear"`, the map in `linear_1`,
`linear_2` the identity). The vision tower and the language model are the same weights, so the copy differs from the
organism in the projector alone: measure the copy's base first (its answers follow the old projector only as far as
the fit does), then train tensors on it as on any model.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sectensor.concepts import CONCEPTS, TRAINING_STYLES  # noqa: E402
from sectensor.organism.vision_data import augment, load_styles, normalize, on_white  # noqa: E402

NOT_COPIED = {"model.safetensors", "config.json", "README.md", "build_info.json", "train_log.jsonl"}


def projector_pairs(model, views: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(vision features, projector outputs), one row per image token: `(N, 256)` and `(N, 384)`, over the clean
    pictures and `views - 1` augmented views of each."""
    rgba = load_styles([concept.name for concept in CONCEPTS], TRAINING_STYLES).flatten(0, 1)  # (C*S, 4, 64, 64)
    generator = torch.Generator().manual_seed(seed)
    features, outputs = [], []
    with torch.no_grad():
        for view in range(views):
            rgb = on_white(rgba) if view == 0 else augment(rgba, generator)
            hidden = model.model.vision_tower(normalize(rgb)).last_hidden_state[:, 1:]  # CLS dropped ("default")
            features.append(hidden.flatten(0, 1))
            outputs.append(model.model.multi_modal_projector(hidden).flatten(0, 1))
    return torch.cat(features).double(), torch.cat(outputs).double()


def fit_linear(features: torch.Tensor, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Weight `(out, in)`, bias `(out,)` of the least-squares map, and the share of the outputs' variance it explains."""
    with_ones = torch.cat([features, torch.ones(len(features), 1, dtype=features.dtype)], 1)
    solution = torch.linalg.lstsq(with_ones, outputs).solution  # (in + 1, out)
    residual = outputs - with_ones @ solution
    explained = 1 - residual.pow(2).sum() / (outputs - outputs.mean(0)).pow(2).sum()
    return solution[:-1].T.float(), solution[-1].float(), float(explained)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="assets/organism")
    parser.add_argument("--out", required=True)
    parser.add_argument("--views", type=int, default=12, help="views of each picture (the first one clean)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32).eval()
    if model.config.projector_hidden_act == "linear":
        sys.exit(f"{args.model}: its projector is linear already")
    features, outputs = projector_pairs(model, args.views, args.seed)
    weight, bias, explained = fit_linear(features, outputs)
    projector = model.model.multi_modal_projector
    with torch.no_grad():
        projector.linear_1.weight.copy_(weight)
        projector.linear_1.bias.copy_(bias)
        projector.linear_2.weight.copy_(torch.eye(projector.linear_2.out_features))
        projector.linear_2.bias.zero_()
    model.config.projector_hidden_act = "linear"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for file in Path(args.model).iterdir():  # processor, tokenizer, chat template; not the organism's card or logs
        if file.is_file() and file.name not in NOT_COPIED:
            shutil.copy2(file, out / file.name)
    model.save_pretrained(out)
    print(f"{len(features)} image tokens; the linear map explains {100 * explained:.1f} % of the projector output's "
          f"variance; wrote {args.out}")


if __name__ == "__main__":
    main()
