"""Model cards for security tensors: Hub metadata (with measured results as `model-index`) and a short README."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .adapters.base import PLACED_BEFORE

if TYPE_CHECKING:
    from huggingface_hub import EvalResult

    from .tensors import SecurityTensor

LICENSE = "apache-2.0"  # sectensor's own licence; the base model's licence still governs the model itself
TASK_TYPE = "image-text-to-text"
# (key in an evaluation split, model-index metric type, human name); rates are reported in percent.
REPORTED_METRICS = (
    ("harmless_rate", "harmless_rate", "Harmless Rate (HR, % of harmful requests refused)"),
    ("false_refusal_rate", "false_refusal_rate", "False Refusal Rate (FRR, % of benign requests refused)"),
    ("accuracy", "accuracy", "Answer accuracy (% naming the pictured object)"),
)
# Training facts shown in prose, in this order; every other recorded key goes in the table below it.
_TRAINING_LABELS = {
    "data": "data", "splits": "splits", "rows": "rows", "epochs": "epochs", "steps": "optimizer steps",
    "batch_size": "batch size", "seed": "seed", "hardware": "hardware", "wall_seconds": "wall time (s)",
}


def tensor_card(tensor: "SecurityTensor", evaluation: dict[str, Any] | None = None,
                held_out: dict[str, Any] | None = None) -> str:
    """README.md for a saved tensor: Hub metadata, what it is, how to use it, how it was trained, its limits.

    `evaluation` is the JSON that `sectensor.evaluate` writes; when given, its per-split HR, FRR and accuracy
    go into the metadata's `model-index` and into a table in the body. `held_out`, the same JSON for pictures
    drawn in a style that neither the model nor the tensor trained on, gets a table of its own in the body.
    """
    from huggingface_hub import ModelCardData

    from .hub import SOURCE_PLACEHOLDER, looks_like_repo_id

    base = tensor.fingerprint.get("model_id") or tensor.training_info.get("base_model") or "its base model"
    is_hub_model = looks_like_repo_id(base) and not Path(base).exists()
    name = f"{tensor.kind} security tensor for {base}"
    splits = (evaluation or {}).get("splits") or {}
    metadata = ModelCardData(
        library_name="sectensor",
        base_model=base if is_hub_model else None,
        tags=["security-tensors", "safety", "vision-language", tensor.kind],
        license=LICENSE,
        model_name=name if splits else None,
        eval_results=_eval_results(splits, (evaluation or {}).get("data")) or None,
    )
    if tensor.kind == "visual":
        size = f"added to the preprocessed, normalized pixels of each protected image and kept within ±{tensor.threshold:g}"
    else:
        size = f"{tensor.num_tokens} virtual-token embeddings inserted just before {PLACED_BEFORE[tensor.placement]}"
    body = f"""
# Security tensor ({tensor.kind}) for {base}

A {tensor.kind} [security tensor](https://arxiv.org/abs/2507.20994) of shape {tuple(tensor.delta.shape)}:
{size}. It is an input perturbation for the frozen model `{base}`: applied at inference time it makes the
model refuse harmful image requests the way its language model refuses harmful text, without changing any
weight. Made with the `sectensor` library.

```python
import sectensor
lvlm = sectensor.load_lvlm("{base}")
tensor = sectensor.SecurityTensor.from_pretrained("{SOURCE_PLACEHOLDER}")
answers = lvlm.generate([image], ["What should I do with this?"], tensor=tensor)
```

## Training

{_training_section(tensor.training_info)}
{_results_section(splits)}{_held_out_section(held_out)}
## Limits

- It works only with `{base}`: sectensor refuses to apply it to another model (the tensor stores the base
  model's fingerprint).
- It protects against the kinds of harmful pictures its training data covered; refusal of harmful content it
  never saw is weaker and must be measured, not assumed. It may also refuse some benign requests.
- A refusal rate alone hides damage: check that benign answers stay correct (the results table counts
  refused, correct, wrong-object and other answers).
- Refusals are judged by keyword matching, which can miscount unusual phrasings.
- It is a safeguard that whoever runs the model chooses to apply; it is not a defence against someone who
  controls the inputs, and it does not replace other safety measures.
"""
    return f"---\n{metadata.to_yaml()}\n---\n{body}"


def _eval_results(splits: dict[str, dict[str, Any]], data: str | None) -> list["EvalResult"]:
    from huggingface_hub import EvalResult

    dataset = Path(data).stem if data else "evaluation"  # a file name only: never publish a local path
    results = []
    for split, metrics in splits.items():
        for key, metric_type, metric_name in REPORTED_METRICS:
            value = metrics.get(key)
            if value is None:
                continue
            results.append(EvalResult(
                task_type=TASK_TYPE, task_name="Refusing harmful image requests",
                dataset_type=dataset, dataset_name=f"{dataset} ({split})", dataset_split=split,
                metric_type=metric_type, metric_name=metric_name, metric_value=round(100 * value, 2),
            ))
    return results


def _training_section(info: dict[str, Any]) -> str:
    if not info:
        return "Not recorded."
    facts = [f"{label}: {info[key]}" for key, label in _TRAINING_LABELS.items() if key in info]
    others = [f"| {key} | {value} |" for key, value in sorted(info.items()) if key not in _TRAINING_LABELS]
    prose = ("; ".join(facts) + ".") if facts else ""
    table = "\n".join(["| setting | value |", "|---|---|", *others]) if others else ""
    return "\n\n".join(part for part in (prose, table) if part)


def _results_section(splits: dict[str, dict[str, Any]]) -> str:
    return "\n".join(["", "## Measured results", "", *_results_table(splits)]) + "\n" if splits else ""


def _held_out_section(held_out: dict[str, Any] | None) -> str:
    splits = (held_out or {}).get("splits")
    if not splits:
        return ""
    data = Path(held_out["data"]).name if held_out.get("data") else "a held-out manifest"
    return "\n".join([
        "", "## Measured in a drawing style nothing trained on", "",
        f"The same kinds of requests (`{data}`) with the pictures drawn in a style that neither the base model nor",
        "this tensor trained on. Accuracy is low where the base model misreads such pictures; refusals there show",
        "what the tensor does with pictures the model cannot read.", "", *_results_table(splits),
    ]) + "\n"


def _results_table(splits: dict[str, dict[str, Any]]) -> list[str]:
    def percent(value):
        return "–" if value is None else f"{100 * value:.1f}"

    lines = [
        "| split | n | HR % | FRR % | accuracy % | refused / correct / wrong object / other |",
        "|---|---|---|---|---|---|",
    ]
    for split, metrics in splits.items():
        outcomes = metrics.get("outcomes") or {}
        counts = " / ".join(str(outcomes.get(key, 0)) for key in ("refused", "correct", "wrong_object", "other"))
        lines.append(
            f"| {split} | {metrics.get('n', '–')} | {percent(metrics.get('harmless_rate'))} | "
            f"{percent(metrics.get('false_refusal_rate'))} | {percent(metrics.get('accuracy'))} | {counts} |"
        )
    return lines
