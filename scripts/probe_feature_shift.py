"""What δv can reach: a shift added where the language model reads the picture, against δv's own shift there.

    python scripts/probe_feature_shift.py train --out runs/feature-shift-s0 --seed 0
    python scripts/probe_feature_shift.py train --out runs/shift-at-embeddings-s0 --seed 0 \
        --at vision_tower.embeddings --lr 2.3e-2
    python scripts/probe_feature_shift.py measure --tensors assets/tensors/organism-visual runs/feature-shift-s0
    python scripts/probe_feature_shift.py reach --shift runs/feature-shift-s0

δv is added to the pixels, and the vision tower and projector decide what reaches the language model. Three
measurements (for families whose projector gives (pictures, image tokens, features) with a fixed number of
tokens, as LLaVA's does) separate the language model's part from the vision side's (docs/training-levers.md):
1. `train`: a shift Δ (image tokens × features) added to every picture's features at `LVLM.image_feature_module`,
   the same for every picture, trained with `train.py`'s objective (SA rows toward their refusal, TCB/GB rows by
   KL toward the base model, the first answer token weighted, geometric augmentation, Δ's moving average), then
   evaluated like a tensor on the test manifest. It is what a tensor that shifts every picture alike can do with
   this language model: a bound for δv from the language model's side, not an artifact (no adapter applies it).
   With `--at` the shift is added earlier on the vision side instead (`hook`): at the patch embeddings' output,
   where δv's own change arrives (the patch projection is linear), after a vision layer, or at the projector's
   input; where it stops generalizing to unseen groups is where the vision side turns one shift into a
   picture-dependent one.
2. `measure`: for δv tensors (and saved shifts), over the training manifest's pictures, the RMS of the feature
   shift they cause relative to the features' RMS, and the part of it shared by every picture (the mean shift's
   energy over the shift's): a shift the pictures share acts like a prompt, one that depends on the picture can
   only act on pictures like those it was trained on. `--at` measures at another place instead (what share of the
   clean values is above zero there, and which ones the shift takes above zero in some pictures and in nearly all:
   before an activation, the units it turns on, for every picture alike or picture by picture). For a shift of the
   patch embeddings it also says how much of it any pixel change could make (`pixel_reach`).
3. `reach`: δv trained to shift every training picture's features by a saved shift (squared error relative to
   the shift's energy, on augmented views): whether the vision tower lets pixels carry it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sectensor  # noqa: E402
from sectensor import training  # noqa: E402
from sectensor.augment import augment_pixels  # noqa: E402
from sectensor.data import load_manifest, sample_image  # noqa: E402
from sectensor.evaluate import evaluate, format_table  # noqa: E402
from sectensor.tensors import SecurityTensor, VisualSecurityTensor  # noqa: E402
from sectensor.training_config import TrainingConfig  # noqa: E402

SHIFT_NAME = "feature_shift.safetensors"


def model_module(lvlm: sectensor.LVLM, name: str) -> torch.nn.Module:
    """A module inside the model, named as `named_modules` spells it (as `LVLM.image_feature_module` finds its own)."""
    return getattr(lvlm.model, "model", lvlm.model).get_submodule(name)


def training_pictures(lvlm: sectensor.LVLM, data: str) -> sectensor.Batch:
    """Every distinct picture of the manifest `data`, each with one neutral question, in one batch."""
    pictures = {sample.image: sample for sample in load_manifest(data) if sample.image}
    return lvlm.encode([sample_image(sample) for sample in pictures.values()], ["what is this?"] * len(pictures))


def hook(lvlm: sectensor.LVLM, place: str | None, change: Callable[[torch.Tensor], torch.Tensor | None]):
    """Hooks `change` on the features at `place`: the output of a module inside the model (as `named_modules`
    spells it, e.g. `vision_tower.embeddings`), its first input with `:input` after the name (the vision tower's
    last hidden state is `multi_modal_projector:input`: hidden states are recorded before a hook on the layer could
    change them), or by default where the language model reads the pictures. Returns the hook's handle."""
    if place is None:
        return lvlm.image_feature_module.register_forward_hook(lambda module, args, output: change(output))
    name, _, side = place.partition(":")
    module = model_module(lvlm, name)
    if side == "input":
        def on_input(module, args):
            changed = change(args[0])
            return None if changed is None else (changed, *args[1:])
        return module.register_forward_pre_hook(on_input)
    return module.register_forward_hook(
        lambda module, args, output: change(output[0] if isinstance(output, tuple) else output))


@contextmanager
def feature_shift(lvlm: sectensor.LVLM, shift: torch.Tensor, module: str | None = None,
                  only_with_gradients: bool = False):
    """Within: `shift` (tokens, features) is added to every picture's features at `module` (`hook`). With
    `only_with_gradients` it is added only in passes that track gradients, so the objective's base-model pass (run
    without them) reads the clean pictures."""
    def add(features: torch.Tensor) -> torch.Tensor:
        if only_with_gradients and not torch.is_grad_enabled():
            return features
        return features + shift.to(features.dtype)  # (tokens, features) broadcast over the pictures

    handle = hook(lvlm, module, add)
    try:
        yield
    finally:
        handle.remove()


def load_shift(folder: Path) -> tuple[torch.Tensor, str | None]:
    """A saved shift and the module it is added to (None: where the language model reads the pictures)."""
    with safe_open(str(folder / SHIFT_NAME), framework="pt") as saved:
        return saved.get_tensor("shift"), (saved.metadata() or {}).get("module")


def train_shift(args: argparse.Namespace) -> None:
    lvlm = sectensor.load_lvlm(args.model, dtype=torch.float32)
    config = TrainingConfig(model=args.model, data=args.data, output_dir=args.out, kind="visual", benign_loss="kl",
                            augment=True, first_token_weight=args.first_token_weight, batch_size=args.batch_size,
                            epochs=args.epochs, lr=args.lr, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samples = load_manifest(args.data, config.splits)
    benign = [sample for sample in samples if sample.split in training.BENIGN_SPLITS]
    answers = training.base_answers(lvlm, benign, out / training.BASE_ANSWERS_NAME, config.max_new_tokens,
                                    batch_size=4 * config.batch_size)
    examples = training.build_examples(lvlm, samples, config, answers)
    lengths, splits = [example.length for example in examples], [example.split for example in examples]
    kl_rows = torch.tensor([split in training.BENIGN_SPLITS for split in splits])
    first_picture = sample_image(next(sample for sample in samples if sample.image))
    tokens, width = captured_features(lvlm, lvlm.encode([first_picture], ["x"]), module=args.at).shape[1:]
    shift = torch.zeros(tokens, width, device=lvlm.device, requires_grad=True)
    average = shift.detach().clone()
    optimizer = torch.optim.AdamW([shift], lr=config.lr, weight_decay=0.0)
    started, step = time.perf_counter(), 0
    with feature_shift(lvlm, shift, args.at, only_with_gradients=True):
        for epoch in range(config.epochs):
            for rows in training.epoch_batches(splits, lengths, config.batch_size, config.seed, epoch):
                batch = training.collate_on_device(lvlm, [examples[index].encoding for index in rows])
                if batch.image_rows.numel():
                    batch.image_fields["pixel_values"] = augment_pixels(
                        batch.image_fields["pixel_values"], training._generator(config.seed, step, 0))
                losses = training.row_losses(lvlm, batch, None, kl_rows[rows], config.first_token_weight)
                optimizer.zero_grad()
                losses.mean().backward()
                optimizer.step()
                average.lerp_(shift.detach(), 1.0 - args.ema_decay)
                step += 1
            print(f"epoch {epoch + 1}: loss {losses.mean().item():.4f}, shift RMS {shift.pow(2).mean().sqrt().item():.4f}",
                  flush=True)
    wall = time.perf_counter() - started
    save_file({"shift": average.cpu()}, str(out / SHIFT_NAME), metadata={"module": args.at} if args.at else None)
    with feature_shift(lvlm, average, args.at):
        result = evaluate(lvlm, load_manifest(args.eval_data), None, batch_size=64, progress=False)
    (out / training.EVAL_NAME).write_text(json.dumps({**result, "training_seconds": round(wall, 1), "steps": step},
                                                     indent=1) + "\n")
    print(f"{step} steps in {wall:.0f} s\n{format_table(result['splits'])}")


def features_with_gradients(lvlm: sectensor.LVLM, batch: sectensor.Batch,
                            tensor: SecurityTensor | None = None, module: str | None = None) -> torch.Tensor:
    """(pictures, tokens, features) of `batch`'s pictures at `module` (`hook`; by default where the language
    model reads them). The rest of the model runs too: the features are taken from the full forward
    pass every family supports."""
    captured = []
    handle = hook(lvlm, module, lambda features: captured.append(features.float()))
    try:
        with lvlm.model_inputs(batch, tensor) as inputs:
            lvlm.model(**inputs)
    finally:
        handle.remove()
    return captured[0].reshape(batch.size, -1, captured[0].shape[-1])


def captured_features(lvlm: sectensor.LVLM, batch: sectensor.Batch, tensor: SecurityTensor | None = None,
                      module: str | None = None) -> torch.Tensor:
    with torch.no_grad():
        return features_with_gradients(lvlm, batch, tensor, module)


def measure(args: argparse.Namespace) -> None:
    lvlm = sectensor.load_lvlm(args.model, dtype=torch.float32)
    batch = training_pictures(lvlm, args.data)
    clean = captured_features(lvlm, batch, module=args.at)
    scale = clean.pow(2).mean()
    print(f"{batch.size} pictures of {args.data}, at {args.at or 'the projector'}: features' RMS "
          f"{scale.sqrt().item():.4f}, {100 * (clean > 0).float().mean().item():.1f} % of them above zero")
    for source in args.tensors:
        path = Path(source)
        if (path / SHIFT_NAME).is_file():
            saved, module = load_shift(path)
            with feature_shift(lvlm, saved.to(lvlm.device), module):
                moved = captured_features(lvlm, batch, module=args.at)
            embeddings = model_module(lvlm, module) if module is not None and ":" not in module else None
            note = pixel_reach(embeddings, saved) if hasattr(embeddings, "patch_embedding") else ""
        else:
            tensor = SecurityTensor.from_pretrained(path).to(lvlm.device)
            if not isinstance(tensor, VisualSecurityTensor):
                sys.exit(f"measure: {source} is a {tensor.kind} tensor; it measures δv tensors and saved shifts")
            moved, note = captured_features(lvlm, batch, tensor, module=args.at), ""
        shift = moved - clean
        if not shift.any():
            print(f"{source}: no change at {args.at} (the shift is added after it)")
            continue
        shared = shift.mean(0).pow(2).sum() / shift.pow(2).mean(0).sum()
        turned_on = ((moved > 0) & (clean <= 0)).float().mean(0)  # (tokens, features): share of pictures
        print(f"{source}: shift RMS {(shift.pow(2).mean() / scale).sqrt().item():.3f} of the features', "
              f"{100 * shared.item():.1f} % of its energy shared by every picture; it takes "
              f"{int((turned_on > 0).sum())} (token, feature) values above zero in some picture, "
              f"{int((turned_on >= 0.9).sum())} in at least 90 % of them" + (f"\n{note}" if note else ""))


def pixel_reach(embeddings: torch.nn.Module, shift: torch.Tensor) -> str:
    """How much of a shift of the patch embeddings (class token first, then one row a patch) a pixel change could
    make: the patch projection is linear, so the best pixels for each patch solve a least-squares problem."""
    projection = embeddings.patch_embedding.weight.detach()
    weights = projection.reshape(projection.shape[0], -1).double().cpu()  # (features, channels · patch²)
    patches = shift[1:].double()  # (patches, features): the class token comes first
    pixels = torch.linalg.lstsq(weights, patches.T).solution  # (channels · patch², patches)
    outside = (patches - (weights @ pixels).T).pow(2).sum() / patches.pow(2).sum()
    return (f"  {100 * shift[0].pow(2).sum().item() / shift.pow(2).sum().item():.1f} % of its energy on the class "
            f"token (no pixel reaches it), {100 * outside.item():.1f} % of the patches' outside what pixels can "
            f"make; the rest needs pixel changes of RMS {pixels.pow(2).mean().sqrt().item():.2f}, largest "
            f"{pixels.abs().max().item():.2f}")


def reach(args: argparse.Namespace) -> None:
    lvlm = sectensor.load_lvlm(args.model, dtype=torch.float32)
    target, module = load_shift(Path(args.shift))
    if module is not None:
        sys.exit(f"reach: {args.shift} shifts {module}; reach fits shifts where the language model reads the pictures")
    target = target.to(lvlm.device)
    batch = training_pictures(lvlm, args.data)
    tensor = VisualSecurityTensor.zeros(lvlm, threshold=args.threshold).to(lvlm.device)
    optimizer = torch.optim.AdamW([tensor.delta], lr=args.lr, weight_decay=0.0)
    energy = target.pow(2).mean()
    for step in range(args.steps):
        rows = torch.randint(batch.size, (args.batch_size,), generator=training._generator("reach", step)).tolist()
        views = batch.select(torch.isin(torch.arange(batch.size), torch.tensor(rows)))
        views.image_fields["pixel_values"] = augment_pixels(views.image_fields["pixel_values"].to(lvlm.device),
                                                            training._generator("reach-views", step))
        clean = captured_features(lvlm, views)
        moved = features_with_gradients(lvlm, views, tensor)
        loss = (moved - clean - target).pow(2).mean() / energy
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        tensor.project_()
        if step % 100 == 0 or step + 1 == args.steps:
            print(f"step {step}: residual {loss.item():.4f} of the shift's energy", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="assets/organism")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a feature shift and evaluate it")
    train.add_argument("--out", required=True)
    train.add_argument("--data", default="assets/data/tensor_training_observed.jsonl")
    train.add_argument("--eval-data", default="assets/data/tensor_tests.jsonl")
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=5e-3, help="about 5 %% of the shifted features' RMS")
    train.add_argument("--at", help="add the shift to this module's output instead (a name inside the model, e.g. "
                       "vision_tower.embeddings; NAME:input for its first input): where on the vision side a shared "
                       "shift stops carrying")
    train.add_argument("--first-token-weight", type=float, default=8.0)
    train.add_argument("--ema-decay", type=float, default=0.995)
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(run=train_shift)
    measured = commands.add_parser("measure", help="how much of each tensor's feature shift every picture shares")
    measured.add_argument("--tensors", nargs="+", required=True, help="δv tensor folders, or folders of `train`")
    measured.add_argument("--data", default="assets/data/tensor_training_observed.jsonl")
    measured.add_argument("--at", help="measure the shifts at this place (as `train --at` names it) instead of "
                          "where the language model reads the pictures: where along the vision side they stop being "
                          "shared (before an activation, values above zero are the units a picture turns on)")
    measured.set_defaults(run=measure)
    reached = commands.add_parser("reach", help="train δv to shift every picture's features by a saved shift")
    reached.add_argument("--shift", required=True, help="a folder of `train`")
    reached.add_argument("--data", default="assets/data/tensor_training_observed.jsonl")
    reached.add_argument("--threshold", type=float, default=2.0)
    reached.add_argument("--lr", type=float, default=2e-2)
    reached.add_argument("--steps", type=int, default=300)
    reached.add_argument("--batch-size", type=int, default=32)
    reached.set_defaults(run=reach)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
