"""Safety-layer analysis of a model, with and without a security tensor, on a manifest.

    python -m sectensor.analyze --model assets/organism --tensor assets/tensors/organism-visual \
        --data assets/data/organism_eval.jsonl --out results/analysis

Writes analysis.json and analysis.png into --out. The manifest's `harmful` flag makes a row malicious (M) or
normal (N). Rows with an image are the image queries (run without and with the tensor). Rows without an image are
the text-only queries; if the manifest has none, each image row that names its `concept` gets a text-only version
in which the first reference to the picture ("one of these", "this", ...) is replaced by the object's name
("how do i make one of these?" -> "how do i make a bomb?"). Malicious rows are also compared per `category`
(or per `split` with --group-by split).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .analysis import Query, analyze, format_summary, name_the_object, write_results
from .data import Sample, sample_image
from .errors import ManifestError, SectensorError


def queries_from_samples(
    samples: Sequence[Sample], max_per_side: int | None = None, group_by: str = "category"
) -> tuple[list[Query], list[Query], str]:
    """Text and image queries from manifest rows, and how the text queries were obtained ("manifest", "derived"
    or "none"). `max_per_side` keeps at most that many normal and that many malicious rows per condition, evenly
    spread over the manifest's order. Malicious rows are grouped by `group_by` ("category" or "split")."""
    if group_by not in ("category", "split"):
        raise SectensorError(f"group_by must be 'category' or 'split', got {group_by!r}")

    def group(sample: Sample) -> str:
        return (sample.category if group_by == "category" else None) or sample.split

    image_rows = [sample for sample in samples if sample.image]
    text_rows = [sample for sample in samples if not sample.image]
    if not image_rows:
        raise ManifestError("the manifest has no rows with an image; the analysis compares text with pictures")
    image_queries = [
        Query(sample.prompt, sample.harmful, sample_image(sample), group(sample), sample.concept or sample.image)
        for sample in _balanced(image_rows, max_per_side)
    ]
    if text_rows:
        source = "manifest"
        text_queries = [
            Query(sample.prompt, sample.harmful, None, group(sample), sample.concept or "")
            for sample in _balanced(text_rows, max_per_side)
        ]
    elif any(sample.concept for sample in image_rows):
        source = "derived"
        named = [sample for sample in image_rows if sample.concept]
        text_queries = [
            Query(name_the_object(sample.prompt, sample.concept), sample.harmful, None, group(sample), sample.concept)
            for sample in _balanced(named, max_per_side)
        ]
    else:
        source = "none"
        text_queries = []
    return text_queries, image_queries, source


def _balanced(samples: Sequence[Sample], limit: int | None) -> list[Sample]:
    """At most `limit` normal and `limit` malicious rows, evenly spaced (manifests are often sorted by concept)."""
    if limit is None:
        return list(samples)
    kept = []
    for side in ([sample for sample in samples if not sample.harmful], [sample for sample in samples if sample.harmful]):
        if len(side) <= limit:
            kept += side
        else:  # first and last included
            kept += [side[round(index * (len(side) - 1) / max(1, limit - 1))] for index in range(limit)]
    return kept


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sectensor.analyze", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder or Hugging Face Hub id")
    parser.add_argument("--tensor", default="none", help="security tensor folder or Hub id, or 'none' (no third condition)")
    parser.add_argument("--data", required=True, help="manifest (.jsonl, reference .json, or a folder of .jsonl)")
    parser.add_argument("--splits", nargs="*", help="use only these splits")
    parser.add_argument("--max-per-side", type=int, default=None,
                        help="use at most this many normal and this many malicious rows per condition")
    parser.add_argument("--group-by", choices=("category", "split"), default="category",
                        help="label of malicious rows for the per-group N–M curves")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--out", required=True, help="folder for analysis.json and analysis.png")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .data import load_manifest
    from .lvlm import load_lvlm
    from .tensors import SecurityTensor

    try:
        if args.max_per_side is not None and args.max_per_side < 2:
            raise SectensorError("--max-per-side must be at least 2 (N–N pairs need two normal queries)")
        samples = load_manifest(args.data, args.splits)
        text_queries, image_queries, text_source = queries_from_samples(samples, args.max_per_side, args.group_by)
        lvlm = load_lvlm(args.model, device=args.device)
        tensor = None if args.tensor.lower() == "none" else SecurityTensor.from_pretrained(args.tensor)
        result = analyze(lvlm, text_queries, image_queries, tensor, batch_size=args.batch_size)
    except SectensorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result.update({"model": args.model, "tensor_source": None if tensor is None else args.tensor,
                   "data": str(args.data), "text_queries_from": text_source})
    if text_source == "none":
        print("note: no text-only rows and no image row names its concept; the text condition is left out", file=sys.stderr)
    json_path, png_path = write_results(result, args.out)
    print(format_summary(result))
    print(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
