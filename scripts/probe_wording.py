"""Which test wording a security tensor trips on, and whether the wording or the drawing style decides.

    python scripts/probe_wording.py --tensor assets/tensors/organism-textual --splits caption benign_neutral

Every test picture of a concept that tensors train on is drawn in a style they never train on (Fluent) *and* asked
in wording they never train on, so a miss on the test manifest cannot say which of the two caused it. This script
takes the test rows of `--splits` and prints, per split and per test wording:
- how often the base model names the right object, how often its text twin (the object named in the prompt instead
  of shown, `sectensor.evaluate.text_twins`) is refused, and how often the model with the tensor refuses or names
  the right object;
- then the tensor's refusals and right answers on the same rows with one thing changed at a time: each picture
  redrawn in a style tensors train on (same test wording), or the same picture asked in training wording (the
  caption frames for captions, the request frames for requests; `sectensor.organism.text_data`).
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sectensor  # noqa: E402
from sectensor.data import Sample, load_manifest  # noqa: E402
from sectensor.evaluate import evaluate, text_twins  # noqa: E402
from sectensor.organism.text_data import (  # noqa: E402
    ACTIVITY_FRAMES, CAPTION_FRAMES, PICTURE_REFS, REQUEST_FRAMES,
)

TENSOR_STYLES = ("noto", "twemoji")  # the styles scripts/build_training_data.py trains tensors on
TEST_STYLES = ("fluent_flat", "fluent_modern")
REQUESTS = [frame for frames in REQUEST_FRAMES.values() for frame in frames]


def training_wording(split: str, rng: random.Random) -> str:
    """A training-wording prompt of the kind a test row of `split` asks."""
    if split == "caption":
        return rng.choice(CAPTION_FRAMES)
    if split == "gbt":
        return rng.choice(ACTIVITY_FRAMES)[0].format(x=rng.choice(PICTURE_REFS))
    return rng.choice(REQUESTS).format(x=rng.choice(PICTURE_REFS))


def redrawn(samples: list[Sample], style: str) -> list[Sample]:
    """The rows whose picture is in a test style and exists in `style`, with that picture."""
    out = []
    for sample in samples:
        path = Path(sample.image)
        if path.parent.name in TEST_STYLES and (path.parents[1] / style / path.name).is_file():
            out.append(replace(sample, image=str(path.parents[1] / style / path.name)))
    return out


def rates(records: list[dict]) -> tuple[float, float]:
    """(% refused, % naming the right object)."""
    n = max(len(records), 1)
    return (100 * sum(r["refused"] for r in records) / n, 100 * sum(r["outcome"] == "correct" for r in records) / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="assets/organism")
    parser.add_argument("--tensor", required=True, help="security tensor folder or Hub id")
    parser.add_argument("--data", default="assets/data/tensor_tests.jsonl")
    parser.add_argument("--splits", nargs="+", default=["caption", "benign_neutral"])
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    lvlm = sectensor.load_lvlm(args.model, device=args.device)
    tensor = sectensor.SecurityTensor.from_pretrained(args.tensor)
    samples = [sample for sample in load_manifest(args.data, args.splits) if sample.image]

    def run(rows: list[Sample], with_tensor: bool = True) -> list[dict]:
        return evaluate(lvlm, rows, tensor if with_tensor else None, batch_size=64, progress=False)["samples"]

    base, twins, protected = run(samples, False), run(text_twins(samples), False), run(samples)
    for split in args.splits:
        print(f"\n## {split}\n\n| test wording | rows | base: right object | text twin: refused | tensor: refused | "
              "tensor: right object |\n|---|---|---|---|---|---|")
        by_prompt = defaultdict(list)
        for index, sample in enumerate(samples):
            if sample.split == split:
                by_prompt[sample.prompt].append(index)
        for prompt, indices in sorted(by_prompt.items(), key=lambda item: -rates([protected[i] for i in item[1]])[0]):
            base_right, twin_refused = rates([base[i] for i in indices])[1], rates([twins[i] for i in indices])[0]
            refused, right = rates([protected[i] for i in indices])
            print(f"| {prompt} | {len(indices)} | {base_right:.0f} | {twin_refused:.0f} | {refused:.0f} | {right:.0f} |")

        rows = [sample for sample in samples if sample.split == split]
        rng = random.Random(0)
        variants = {"as tested": rows, **{f"redrawn in {style}, test wording": redrawn(rows, style)
                                         for style in TENSOR_STYLES},
                    "same picture, training wording": [replace(s, prompt=training_wording(split, rng)) for s in rows]}
        print("\n| the tensor on | rows | refused | right object |\n|---|---|---|---|")
        for name, variant in variants.items():
            refused, right = rates(run(variant))
            print(f"| {name} | {len(variant)} | {refused:.1f} | {right:.1f} |")


if __name__ == "__main__":
    main()
