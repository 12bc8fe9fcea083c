"""Whether δv carries further through a linear projector: the organism with its projector made linear.

    python scripts/probe_linear_projector.py --out runs/linear-projector-organism
    python scripts/probe_linear_projector.py --out runs/linear-projector-distilled --distill-steps 300
    python train.py --model runs/linear-projector-organism --kind visual ...   # then any tensor recipe on it

The organism's projector (LLaVA's MLP, 256 -> 384 -> GELU -> 384) is a sparse gate: 0.5 % of its hidden values are
above zero, and δv's change, mostly shared by every picture up to the projector, comes out of it picture by picture
(docs/training-levers.md, "Where on the vision side one shift stops carrying"). This writes a copy of the model whose
projector is the least-squares linear map from the vision features to the old projector's output, fitted over
augmented views of every concept in the training styles (`projector_hidden_act="linear"`, the map in `linear_1`,
`linear_2` the identity). With `--distill-steps` the map is then trained, alone, toward the organism's own
next-token distributions on its own picture training rows (`text_data.picture_pool`: training wording, training
styles, augmented), since a least-squares fit of the features follows the old projector's answers only so far. The
vision tower and the language model are the same weights, so the copy differs from the organism in the projector
alone: measure the copy's base first, then train tensors on it as on any model. `linear_projector.json` in the
output folder records the fit and the distillation's losses. What it found (docs/training-levers.md, "δv on the
distilled linear copy"): δv carries twice as far through the least-squares copy, and through the distilled one no
further than through the organism.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sectensor.concepts import CONCEPTS, TRAINING_STYLES  # noqa: E402
from sectensor.organism.build import encode_rows  # noqa: E402
from sectensor.organism.model import forward  # noqa: E402
from sectensor.organism.text_data import picture_pool  # noqa: E402
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


def distill(student, teacher, tokenizer, steps: int, batch_size: int, lr: float, seed: int) -> list[float]:
    """Trains the student's linear projector alone toward the teacher's next-token distributions (KL at the answer
    positions) on augmented views of the organism's own picture rows; returns the loss every 50 steps."""
    samples = picture_pool(random.Random(seed))  # the organism's own picture rows, its training wording only
    ids, labels, attention = encode_rows(tokenizer, samples, picture=True)
    answer = torch.zeros_like(labels, dtype=torch.bool)
    answer[:, :-1] = labels[:, 1:] != -100  # the positions that predict answer tokens
    index_of = {concept.name: index for index, concept in enumerate(CONCEPTS)}
    device = student.device
    ids, attention, answer = ids.to(device), attention.to(device), answer.to(device)
    rgba = load_styles([concept.name for concept in CONCEPTS], TRAINING_STYLES).to(device)  # (C, S, 4, 64, 64)
    concept_of_row = torch.tensor([index_of[sample.thing] for sample in samples], device=device)
    projector = student.model.multi_modal_projector.linear_1
    for parameter in student.parameters():
        parameter.requires_grad_(False)
    projector.weight.requires_grad_(True)
    projector.bias.requires_grad_(True)
    optimizer = torch.optim.AdamW([projector.weight, projector.bias], lr=lr, weight_decay=0.0)
    generator = torch.Generator(device).manual_seed(seed)
    losses = []
    for step in range(steps):
        rows = torch.randint(len(ids), (batch_size,), generator=generator, device=device)
        styles = torch.randint(len(TRAINING_STYLES), (batch_size,), generator=generator, device=device)
        pixels = normalize(augment(rgba[concept_of_row[rows], styles], generator))
        length = int(attention[rows].sum(1).max())
        inputs = ids[rows, :length], attention[rows, :length]
        with torch.no_grad():
            target = forward(teacher, *inputs, pixels)[0][answer[rows, :length]].log_softmax(-1)
        logits = forward(student, *inputs, pixels)[0][answer[rows, :length]]
        loss = F.kl_div(logits.log_softmax(-1), target, log_target=True, reduction="batchmean")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            losses.append(round(loss.item(), 4))
            print(f"distill step {step}: KL {loss.item():.4f}", flush=True)
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="assets/organism")
    parser.add_argument("--out", required=True)
    parser.add_argument("--views", type=int, default=12, help="views of each picture (the first one clean)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--distill-steps", type=int, default=0,
                        help="then train the linear map toward the organism's answers on its own picture rows")
    parser.add_argument("--distill-batch-size", type=int, default=32)
    parser.add_argument("--distill-lr", type=float, default=2e-5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32).eval()
    if model.config.projector_hidden_act == "linear":
        sys.exit(f"{args.model}: its projector is linear already")
    teacher = copy.deepcopy(model) if args.distill_steps else None  # the organism as it was, for the distillation
    features, outputs = projector_pairs(model, args.views, args.seed)
    weight, bias, explained = fit_linear(features, outputs)
    projector = model.model.multi_modal_projector
    with torch.no_grad():
        projector.linear_1.weight.copy_(weight)
        projector.linear_1.bias.copy_(bias)
        projector.linear_2.weight.copy_(torch.eye(projector.linear_2.out_features))
        projector.linear_2.bias.zero_()
    model.config.projector_hidden_act = "linear"
    projector.act = torch.nn.Identity()  # what the saved config builds
    record = {"image_tokens": len(features), "explained_variance": round(explained, 4), "distill_steps": args.distill_steps}
    if args.distill_steps:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model.to(args.device)
        record["distill_kl_every_50_steps"] = distill(model, teacher.to(args.device), tokenizer, args.distill_steps,
                                                      args.distill_batch_size, args.distill_lr, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for file in Path(args.model).iterdir():  # processor, tokenizer, chat template; not the organism's card or logs
        if file.is_file() and file.name not in NOT_COPIED:
            shutil.copy2(file, out / file.name)
    model.to("cpu").save_pretrained(out)
    (out / "linear_projector.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"{len(features)} image tokens; the linear map explains {100 * explained:.1f} % of the projector output's "
          f"variance; wrote {args.out}")


if __name__ == "__main__":
    main()
