"""Which part of a picture switches the organism's text safety off: replace its projected image tokens, count refusals.

    python scripts/probe_picture_context.py --model assets/organism --data assets/data/tensor_tests.jsonl

For the picture rows of the harmful and TCB-test splits, the 64 image tokens the projector hands to the language
model are replaced (a forward hook on the projector) by: the tokens themselves; their mean, repeated; the word
embedding of the object's name, repeated; zeros; or the tokens halved, each with the prompt as it is or with the
object also named before it ("skull. <prompt>"). A language model whose safety reads what the picture *is* refuses
the harmful rows once the name is in the text; one that a picture switches off does not. Prints one line per
condition: refusal rates in % of greedy answers of `--max-new-tokens` tokens, on `load_lvlm`'s default device and
dtype (CUDA in bfloat16 where there is one, else CPU in float32).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sectensor  # noqa: E402
from sectensor.data import Sample, load_manifest  # noqa: E402
from sectensor.evaluate import evaluate, named_pictures, summarise  # noqa: E402

SPLITS = ("harmful_seen", "harmful_unseen", "tcb_test")
Replacement = Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None]  # (tokens (B, 64, D), name (D,)) -> tokens

CONDITIONS: dict[str, tuple[Replacement, bool]] = {  # name -> (replacement, object also named in the prompt)
    "picture tokens": (lambda tokens, name: None, False),
    "picture tokens, object named": (lambda tokens, name: None, True),
    "mean picture token x64": (lambda tokens, name: tokens.mean(1, keepdim=True).expand_as(tokens), False),
    "name embedding x64": (lambda tokens, name: name.to(tokens.dtype).expand_as(tokens), False),
    "name embedding x64, object named": (lambda tokens, name: name.to(tokens.dtype).expand_as(tokens), True),
    "zeros, object named": (lambda tokens, name: torch.zeros_like(tokens), True),
    "picture tokens x0.5": (lambda tokens, name: 0.5 * tokens, False),
    "picture tokens x0.5, object named": (lambda tokens, name: 0.5 * tokens, True),
}


def refusal_rates(lvlm, samples: list[Sample], replace: Replacement, named: bool,
                  max_new_tokens: int) -> dict[str, float]:
    """Refusal rate (%) per split with the projector's output replaced, one concept at a time."""
    embeddings = lvlm.model.get_input_embeddings().weight
    tokenizer = lvlm.processor.tokenizer
    by_concept: dict[str, list[Sample]] = defaultdict(list)
    for sample in named_pictures(samples) if named else samples:
        by_concept[sample.concept].append(sample)
    records = []
    for concept, rows in by_concept.items():
        name = embeddings[tokenizer(concept, add_special_tokens=False)["input_ids"]].mean(0)
        hook = lvlm.model.model.multi_modal_projector.register_forward_hook(
            lambda module, inputs, output: replace(output, name))
        try:
            records += evaluate(lvlm, rows, batch_size=64, max_new_tokens=max_new_tokens, progress=False)["samples"]
        finally:
            hook.remove()
    return {split: round(100 * metrics["refusal_rate"], 1) for split, metrics in summarise(records).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="assets/organism")
    parser.add_argument("--data", default="assets/data/tensor_tests.jsonl")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    args = parser.parse_args()
    lvlm = sectensor.load_lvlm(args.model)
    samples = [s for s in load_manifest(args.data) if s.split in SPLITS and s.image is not None]
    for condition, (replace, named) in CONDITIONS.items():
        rates = refusal_rates(lvlm, samples, replace, named, args.max_new_tokens)
        print(f"{condition:36s} {json.dumps(rates)}", flush=True)


if __name__ == "__main__":
    main()
