"""Attention forward and backward at a δv training step's shapes, under each SDPA backend.

    python bench/bench_attention.py            # on a GPU; prints a line per shape and backend, then JSON
    python bench/bench_attention.py --tiny     # a quick check of the script on CPU

Why: in a compiled δv step on an H100 (batch 12, ≈ 680 tokens) attention takes ≈ 31 ms of ≈ 390, at a far lower
rate than the step's matrix products (docs/benchmarks.md). SDPA picks one backend for every call; this measures
what each would give at the language model's shape (32 heads of 128, causal) and the vision tower's (16 heads of
64 over 577 tokens, no mask), in bfloat16, forward alone and forward with backward (the step needs both: δv's
gradient flows back through every layer). Rates count a causal product as half the full one; backward as 2.5
forwards. Median of `--repeats` timings after warm-up.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# (batch, heads, tokens, head_dim), causal
SHAPES = {"language model": ((12, 32, 684, 128), True), "vision tower": ((12, 16, 577, 64), False)}
TINY_SHAPES = {"language model": ((2, 4, 96, 32), True), "vision tower": ((2, 4, 65, 16), False)}
BACKENDS = ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")


def seconds(work, repeats: int, device: str) -> float:
    for _ in range(3):
        work()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        work()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def measure(shape: tuple[int, int, int, int], causal: bool, backend: str, repeats: int, device: str) -> dict:
    batch, heads, tokens, head_dim = shape
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    query, key, value = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    upstream = torch.randn(shape, device=device, dtype=dtype)
    forward_flop = 4 * batch * heads * tokens * tokens * head_dim * (0.5 if causal else 1.0)
    with sdpa_kernel([getattr(SDPBackend, backend)]):
        with torch.no_grad():
            forward = seconds(lambda: F.scaled_dot_product_attention(query, key, value, is_causal=causal), repeats,
                              device)
        both = seconds(lambda: F.scaled_dot_product_attention(query, key, value, is_causal=causal).backward(upstream),
                       repeats, device)
    return {"forward_ms": round(forward * 1e3, 3), "forward_backward_ms": round(both * 1e3, 3),
            "forward_tflops": round(forward_flop / forward / 1e12, 1),
            "forward_backward_tflops": round(3.5 * forward_flop / both / 1e12, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="small shapes on CPU, to check the script")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = "cpu" if args.tiny else "cuda"
    results: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__}
    for name, (shape, causal) in (TINY_SHAPES if args.tiny else SHAPES).items():
        for backend in BACKENDS:
            try:
                entry = measure(shape, causal, backend, args.repeats, device)
            except RuntimeError as error:  # this backend cannot run these inputs on this device
                entry = {"error": str(error).splitlines()[0][:200]}
            results[f"{name} / {backend}"] = entry
            print(name, backend, entry, flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
