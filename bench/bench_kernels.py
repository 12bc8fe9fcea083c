"""Weight-read bandwidth of the decoding step's linear layers: cuBLAS (`F.linear`) against `sectensor.kernels`.

    python bench/bench_kernels.py        # on a GPU; prints JSON

Shapes are Llama-2-7B's (the language model of LLaVA-1.5-7B), bfloat16, at 1 and 2 rows (one answer; base +
protected side by side) and 3–16 (small batches). Products are captured in a CUDA graph and replayed, so launch
overhead does not count, and cycle through copies of the weight matrix larger together than the GPU's L2 cache, so
that every product reads its weights from memory, as in a decoding step; bandwidth = bytes of one weight matrix /
time of one product.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402

from bench.cuda_timing import graph_seconds  # noqa: E402
from sectensor.kernels import _configs, _launch, _small_batch_linear_kernel, small_batch_linear  # noqa: E402

# The kernel as it was before tensor cores were among its tiles, for comparison: CUDA cores only.
_cuda_cores_only = triton.autotune(configs=[config for config in _configs() if not config.kwargs["ON_TENSOR_CORES"]],
                                   key=["N", "K", "ROWS"])(_small_batch_linear_kernel.fn)

SHAPES = {"q/k/v/o": (4096, 4096), "gate/up": (11008, 4096), "down": (4096, 11008), "lm_head": (32064, 4096)}
ROWS = (1, 2, 3, 4, 8, 16)
CALLS = 32
COPIES_BYTES = 512 * 2**20  # ten times an H100's L2 cache


def seconds_per_call(function, weights) -> float:
    def calls() -> None:  # cycling through the copies, so that every product reads its weights from memory
        for call in range(CALLS):
            function(weights[call % len(weights)])

    return graph_seconds(calls) / CALLS


def main() -> None:
    torch.manual_seed(0)
    results = {"device": torch.cuda.get_device_name()}
    for name, (n, k) in SHAPES.items():
        copies = max(2, COPIES_BYTES // (n * k * 2))
        weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5 for _ in range(copies)]
        weight = weights[0]
        for rows in ROWS:
            x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            error = float((small_batch_linear(x, weight) - F.linear(x, weight)).abs().max())
            entry = {"max_abs_difference": round(error, 4)}
            functions = {"cublas": lambda w: F.linear(x, w), "ours": lambda w: small_batch_linear(x, w)}
            if rows <= 4:  # past that, partial sums for every row no longer fit in registers
                functions["ours_cuda_cores_only"] = lambda w: _launch(_cuda_cores_only, x, w, None)
            for label, function in functions.items():
                seconds = seconds_per_call(function, weights)
                bandwidth = weight.numel() * weight.element_size() / seconds / 1e12
                entry[label] = {"us": round(seconds * 1e6, 1), "tb_per_s": round(bandwidth, 2)}
            entry["ours"]["config"] = str(_small_batch_linear_kernel.cache.get(next(
                (key for key in _small_batch_linear_kernel.cache if n in key and k in key and rows in key), None)))
            results[f"{name}_rows{rows}"] = entry
            print(json.dumps({f"{name}_rows{rows}": entry}), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
