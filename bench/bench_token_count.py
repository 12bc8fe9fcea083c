"""Speed of a Llama-7B block's training products against the number of tokens in the batch (M).

    python bench/bench_token_count.py                      # on a GPU; prints a line per M, then JSON
    python bench/bench_token_count.py --first 8064 --last 8560 --step 16

Why: a δv training step is bound by its matrix products (docs/benchmarks.md), and cuBLAS runs some M faster than
others. If a slightly larger M were much faster, padding batches to it would pay. Per M: the block's seven
products (q, k, v, o: 4096 × 4096; gate, up: 11008 × 4096; down: 4096 × 11008), each forward and input-gradient
(the weights are frozen, so no weight gradient), as plain `torch.mm` in bfloat16, captured in a CUDA graph and
replayed five times per measurement; median of seven measurements.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cuda_timing import graph_seconds  # noqa: E402

PRODUCTS = [((4096, 4096), 4), ((11008, 4096), 2), ((4096, 11008), 1)]  # (weight shape, how many per block)
FLOP_PER_TOKEN = 2 * 2 * sum(n * k * count for (n, k), count in PRODUCTS)  # forward and input-gradient


def block_milliseconds(m: int, weights: dict, inputs: dict) -> float:
    def block() -> None:
        for (n, k), count in PRODUCTS:
            weight = weights[n, k]
            for _ in range(count):
                torch.mm(inputs[k], weight.t())  # forward: (m, k) @ (k, n)
                torch.mm(inputs[n], weight)  # input gradient: (m, n) @ (n, k)

    return graph_seconds(block, warmups=3, replays=5, measurements=7) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--first", type=int, default=8064, help="smallest M (batch 12 of ≈ 684 tokens: 8208)")
    parser.add_argument("--last", type=int, default=8560)
    parser.add_argument("--step", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    weights = {shape: torch.randn(*shape, device="cuda", dtype=torch.bfloat16) for shape, _ in PRODUCTS}
    results = {"device": torch.cuda.get_device_name(), "by_m": {}}
    for m in range(args.first, args.last + 1, args.step):
        inputs = {width: torch.randn(m, width, device="cuda", dtype=torch.bfloat16) for width in (4096, 11008)}
        ms = block_milliseconds(m, weights, inputs)
        entry = {"ms": round(ms, 4), "tflops": round(FLOP_PER_TOKEN * m / ms / 1e9, 1),
                 "us_per_token": round(ms * 1000 / m, 5)}
        results["by_m"][m] = entry
        print(m, entry, flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
