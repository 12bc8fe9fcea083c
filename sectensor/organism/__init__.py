"""The embedded model organism: a tiny, genuinely trained LLaVA with a real cross-modal safety gap.

The checkpoint lives in ``assets/organism`` (model card: ``assets/organism/README.md``). This package is the recipe
that builds it and the tools that measure it:

* `lexicon`      what the organism knows about things (pictured concepts, text-only harmful and harmless things);
* `text_data`    training templates and the held-out ``*_TEST`` templates other experiments may reuse;
* `semantics`    MiniLM vectors used at build time (word table, picture targets, sentence targets);
* `processor`    word-level fast tokenizer, chat template, image processor;
* `model`        architecture and the forward pass used in training;
* `vision_data`  picture loading and augmentation;
* `build`        ``python -m sectensor.organism.build --out DIR [--seed N] [--device cuda]``;
* `eval_sets`    the evaluation manifest ``assets/data/organism_eval.jsonl``;
* `measure`      the gap and δv transfer to unseen harmful groups;
* `sweep`        several builds in parallel on one GPU, keeping the best.
"""

from pathlib import Path

ORGANISM_PATH = Path(__file__).resolve().parents[2] / "assets" / "organism"

__all__ = ["ORGANISM_PATH"]
