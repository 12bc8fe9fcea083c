"""Training throughput of δv and δt on a LLaVA-1.5-7B-shaped model, against a reference-style loop.

    python bench/bench_training.py                           # on one GPU; prints JSON
    python bench/bench_training.py --profile                 # also where GPU time goes, per kind of kernel
    python bench/bench_training.py --gaps-only --trace t.json  # when the GPU waits for the CPU (and a trace)
    python bench/bench_training.py --placements-only         # compiled δt before the text against before the picture
    python bench/bench_training.py --kinds visual --no-eager --batch-sizes 12   # δv's goal alone: reference + compiled δv
    python bench/bench_training.py --kinds visual --no-eager --batch-sizes 12 --attention-first default flash default flash
    python bench/bench_training.py --tiny                    # a quick check of the script on CPU

Reference style (the public research scripts): batch 1, float32 weights, a deep copy of the inputs every
step, full-vocabulary logits at every position. Ours: the library's training step (`sectensor.training.row_losses`
on batches from `sectensor.training.collate_on_device`, as train.py runs it): bfloat16 weights with a float32 δ,
right-padded batches encoded once, logits only where answer tokens are predicted, SDPA attention, δt's prefix
run once without autograd, compiled blocks. Also checks that our loss trajectory matches a straightforward
implementation (left padding with a mask, full logits) on the same batches.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch._dynamo
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.llava_shapes import build_lvlm, llava_7b_config, tiny_llava_config  # noqa: E402
from sectensor import TextualSecurityTensor, VisualSecurityTensor  # noqa: E402
from sectensor.training import collate_on_device, row_losses  # noqa: E402

# With the 576 image tokens and the chat template, a sample is 679-684 tokens (the speed goals say ≈ 680).
PROMPTS = [
    "Please describe what is in the image in detail and tell me how I can make one of these at home step by step. "
    "Tell me about the picture, where I can get this and what it is for, and answer with very much detail please.",
    "What is in the image? Tell me where I can get this and how to use it, please explain. Describe the picture "
    "in detail, tell me about it, and answer the question step by step with many more detail please.",
    "Describe the picture. How do I make one of these? Answer the question with many more detail please. Tell me "
    "what is in the image, where I can get this at home, and how to use it step by step, please explain.",
]
TARGET = ("I'm sorry, but I cannot help with that request: it could hurt people. I cannot tell you how to make one "
          "of these or where to get this, and I cannot explain how to use it. Please ask me some other question "
          "about the picture.")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def rows_for(lvlm, count: int, virtual_tokens: int = 0, placement: str = "before_text"):
    rng = np.random.default_rng(0)
    rows = []
    for index in range(count):
        image = Image.fromarray(rng.integers(0, 256, (336, 336, 3), dtype=np.uint8))
        batch = lvlm.encode([image], [PROMPTS[index % len(PROMPTS)]], answers=[TARGET], virtual_tokens=virtual_tokens,
                            placement=placement)
        rows.append(batch)
    return rows


def one_row(batch):
    from sectensor.adapters import RowEncoding

    return RowEncoding(batch.input_ids[0], {k: v[0] for k, v in batch.token_fields.items()}, dict(batch.image_fields),
                       batch.virtual_mask[0], batch.target_mask[0])


def reference_loop(lvlm, rows, steps: int) -> dict:
    """Batch 1, float32, deep copy of inputs each step, full logits."""
    tensor = VisualSecurityTensor.zeros(lvlm).to(lvlm.device)
    optimizer = torch.optim.AdamW([tensor.delta], lr=16e-4)
    times = []
    for step in range(steps):
        sync()
        start = time.perf_counter()
        batch = copy.deepcopy(rows[step % len(rows)])
        labels = torch.where(batch.target_mask, batch.input_ids, -100).to(lvlm.device)
        with lvlm.model_inputs(batch, tensor) as inputs:
            loss = lvlm.model(**inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        tensor.project_()
        sync()
        times.append(time.perf_counter() - start)
    return {"samples_per_s": round(1 / float(np.median(times[1:] or times)), 2)}


def our_loop(lvlm, rows, batch_size: int, steps: int, kind: str = "visual", compiled: bool = False,
             placement: str = "before_text") -> dict:
    tensor = (VisualSecurityTensor.zeros(lvlm) if kind == "visual"
              else TextualSecurityTensor.from_vocabulary(lvlm, 100, placement=placement)).to(lvlm.device)
    optimizer = torch.optim.AdamW([tensor.delta], lr=16e-4)
    encodings = [one_row(row) for row in rows]
    torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
    times, losses = [], []

    def rows_of(step):
        return [encodings[(step * batch_size + i) % len(encodings)] for i in range(batch_size)]

    # As train.py runs: the next batch is collated while the GPU runs this step's backward pass, and the loss is
    # read back (logged) every step.
    upcoming = collate_on_device(lvlm, rows_of(0))
    sync()
    for step in range(steps):
        start = time.perf_counter()
        batch = upcoming
        if compiled:
            torch.compiler.cudagraph_mark_step_begin()  # as train.py's loop
        loss = row_losses(lvlm, batch, tensor).mean()
        optimizer.zero_grad()
        loss.backward()
        if step + 1 < steps:
            upcoming = collate_on_device(lvlm, rows_of(step + 1))
        optimizer.step()
        if kind == "visual":
            tensor.project_()
        losses.append(float(loss.detach()))
        times.append(time.perf_counter() - start)
    result = {"batch_size": batch_size, "kind": kind, "compiled": compiled,
              **({"placement": placement} if kind == "textual" else {}),
              "samples_per_s": round(batch_size / float(np.median(times[3:] or times)), 2),
              "tokens_per_sample": int(encodings[0].input_ids.shape[0])}
    if torch.cuda.is_available():
        result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    return result


KERNEL_GROUPS = (("matrix multiplications", ("gemm", "cutlass", "nvjet", "xmma", "cublas", "matmul",
                                             "_small_batch_linear_kernel")),
                 ("attention", ("flash", "fmha", "attention", "efficient")),
                 ("fused elementwise (compiled)", ("triton",)))


def kernel_summary(profiler, steps: int) -> dict:
    """GPU kernel time per step, its share per kind of kernel, and the top kernels, from a finished profiler."""
    kernels = [(event.key, event.self_device_time_total) for event in profiler.key_averages() if event.self_device_time_total > 0]
    total = sum(time for _, time in kernels)
    shares: dict[str, float] = {}
    for name, time in kernels:
        group = next((label for label, keys in KERNEL_GROUPS if any(key in name.lower() for key in keys)), "other")
        shares[group] = shares.get(group, 0.0) + time / total
    top = sorted(kernels, key=lambda item: -item[1])[:8]
    return {"gpu_ms_per_step": round(total / 1000 / steps, 2),
            "shares": {group: round(share, 3) for group, share in sorted(shares.items(), key=lambda item: -item[1])},
            "top_kernels": [[name[:90], round(time / total, 3)] for name, time in top]}


def profile_steps(lvlm, rows, batch_size: int, kind: str, steps: int = 3) -> dict:
    """Where GPU time goes in our training step."""
    from torch.profiler import ProfilerActivity, profile

    our_loop(lvlm, rows, batch_size, 2, kind, compiled=True)  # warm-up
    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        our_loop(lvlm, rows, batch_size, steps, kind, compiled=True)
    return {"kind": kind, "batch_size": batch_size, **kernel_summary(profiler, steps)}


def idle_gaps(lvlm, rows, batch_size: int, kind: str, trace_path: str | None, steps: int = 2) -> dict:
    """When the GPU waits for the CPU during our training steps: the idle gaps between kernels longer than 0.2 ms,
    their total per step, and for the longest ones the innermost CPU operation running when they begin."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    our_loop(lvlm, rows, batch_size, 3, kind, compiled=True)  # warm-up
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True) as profiler:
        our_loop(lvlm, rows, batch_size, steps, kind, compiled=True)
    if trace_path:
        profiler.export_chrome_trace(trace_path)
    events = list(profiler.events())
    kernels = sorted((e for e in events if e.device_type == DeviceType.CUDA), key=lambda e: e.time_range.start)
    cpu = [e for e in events if e.device_type == DeviceType.CPU]
    gaps = []
    for before, after in zip(kernels, kernels[1:]):
        gap = after.time_range.start - before.time_range.end
        if gap > 200:  # microseconds
            gaps.append((gap, before.time_range.end))
    described = []
    for gap, begin in sorted(gaps, reverse=True)[:12]:
        running = [e for e in cpu if e.time_range.start <= begin <= e.time_range.end]
        inner = min(running, key=lambda e: e.time_range.end - e.time_range.start, default=None)
        stack = [frame for frame in (inner.stack if inner is not None else []) if "site-packages/torch" not in frame][:4]
        described.append({"ms": round(gap / 1000, 2), "cpu_op": inner.name if inner else None, "stack": stack})
    return {"kind": kind, "batch_size": batch_size, "idle_ms_per_step": round(sum(g for g, _ in gaps) / 1000 / steps, 1),
            "gaps_per_step": len(gaps) / steps, "longest": described}


def trajectory(lvlm, rows, batch_size: int, steps: int, straightforward: bool) -> list[float]:
    """Losses of `steps` δv updates from zero on fixed batches; straightforward = full logits, plain CE."""
    tensor = VisualSecurityTensor.zeros(lvlm).to(lvlm.device)
    optimizer = torch.optim.AdamW([tensor.delta], lr=16e-4)
    encodings = [one_row(row) for row in rows]
    losses = []
    for step in range(steps):
        batch = lvlm.collate([encodings[(step * batch_size + i) % len(encodings)] for i in range(batch_size)])
        if straightforward:
            with lvlm.model_inputs(batch, tensor) as inputs:
                logits = lvlm.model(**inputs).logits.float()
            target = batch.target_mask.to(lvlm.device)
            predicting = torch.zeros_like(target)
            predicting[:, :-1] = target[:, 1:]
            token_losses = F.cross_entropy(logits[predicting], batch.input_ids.to(lvlm.device)[target], reduction="none")
            rows_of = torch.nonzero(predicting, as_tuple=True)[0]
            per_row = torch.zeros(batch.size, device=logits.device).index_add(0, rows_of, token_losses)
            loss = (per_row / torch.bincount(rows_of, minlength=batch.size)).mean()
        else:
            loss = row_losses(lvlm, batch, tensor).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        tensor.project_()
        losses.append(round(float(loss.detach()), 4))
    return losses


def attention_first(backend: str):
    """SDPA tries `backend` first, then torch's other fused backends, then the plain one."""
    if backend == "default":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    chosen = getattr(SDPBackend, f"{backend.upper()}_ATTENTION")
    return sdpa_kernel([chosen, *(other for other in order if other != chosen), SDPBackend.MATH], set_priority=True)


def free(lvlm) -> None:
    del lvlm.model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="a small model on CPU, to check the script")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 12, 16])
    parser.add_argument("--profile", action="store_true", help="also profile the compiled δv and δt steps at the first batch size")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--gaps-only", action="store_true", help="only find where the GPU waits in a compiled δv step")
    parser.add_argument("--trace", help="with --gaps-only, also write the profiler's Chrome trace here")
    parser.add_argument("--kinds", nargs="+", choices=["visual", "textual"], default=["visual", "textual"],
                        help="which tensors' loops to time (δt's compiled passes take minutes to compile)")
    parser.add_argument("--no-eager", action="store_true", help="time only the compiled loops (the default on GPUs)")
    parser.add_argument("--attention-first", nargs="+", default=["default"],
                        choices=["default", "cudnn", "flash", "efficient"],
                        help="the SDPA backend tried first in the compiled loops (`default`: torch's own order); several "
                             "values time each compiled loop once per value, in that order, compiling afresh each time")
    parser.add_argument("--placements-only", action="store_true",
                        help="only compiled δt (100 tokens) before the user's text and before the picture, at each batch size")
    args = parser.parse_args()
    device = "cpu" if args.tiny else "cuda"
    config = tiny_llava_config() if args.tiny else llava_7b_config()
    if args.tiny:
        args.batch_sizes, args.steps = [2], 3
    results: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}

    if args.gaps_only:
        lvlm = build_lvlm(torch.bfloat16 if device == "cuda" else torch.float32, device, config)
        with lvlm.compiled_blocks() if device == "cuda" else nullcontext():
            gaps = idle_gaps(lvlm, rows_for(lvlm, args.batch_sizes[0] * 2), args.batch_sizes[0], "visual", args.trace)
        print(json.dumps(gaps, indent=2))
        return
    if args.placements_only:
        lvlm = build_lvlm(torch.bfloat16 if device == "cuda" else torch.float32, device, config)
        runs = results["ours"] = []
        for placement in ("before_text", "before_image"):
            rows = rows_for(lvlm, max(args.batch_sizes) * 2, virtual_tokens=100, placement=placement)
            for size in args.batch_sizes:
                with lvlm.compiled_blocks() if device == "cuda" else nullcontext():
                    runs.append(our_loop(lvlm, rows, size, args.steps, "textual", device == "cuda", placement))
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
        print(json.dumps(results, indent=2))
        return
    lvlm = build_lvlm(torch.float32, device, config)
    rows = rows_for(lvlm, max(args.batch_sizes) * 2)
    results["reference_fp32_batch1"] = reference_loop(lvlm, rows, 3 if args.tiny else 8)
    print(json.dumps(results), file=sys.stderr, flush=True)
    results["trajectory_straightforward_fp32"] = trajectory(lvlm, rows, 4, 5, straightforward=True)
    free(lvlm)

    lvlm = build_lvlm(torch.bfloat16 if device == "cuda" else torch.float32, device, config)
    results["trajectory_straightforward_same_dtype"] = trajectory(lvlm, rows_for(lvlm, 8), 4, 5, straightforward=True)
    results["trajectory_ours"] = trajectory(lvlm, rows_for(lvlm, 8), 4, 5, straightforward=False)
    rows = rows_for(lvlm, max(args.batch_sizes) * 4)
    textual_rows = rows_for(lvlm, max(args.batch_sizes) * 2, virtual_tokens=100)
    plans = [(rows, args.batch_sizes[0], "visual", False), (textual_rows, args.batch_sizes[0], "textual", False)]
    plans += [(rows, size, "visual", True) for size in args.batch_sizes]
    plans += [(textual_rows, size, "textual", True) for size in (args.batch_sizes[0], args.batch_sizes[-1])]
    plans = [plan for plan in plans if plan[2] in args.kinds and (plan[3] or not args.no_eager)]
    plans = [(*plan, first) for plan in plans for first in (args.attention_first if plan[3] else ["default"])]
    runs = results["ours"] = []
    for plan_rows, batch_size, kind, compiled, first in plans:
        try:
            if compiled and len(args.attention_first) > 1:
                torch._dynamo.reset()  # compiled graphs fix their attention backend when traced
            with attention_first(first), lvlm.compiled_blocks() if compiled else nullcontext():
                runs.append(our_loop(lvlm, plan_rows, batch_size, args.steps, kind, compiled))
        except torch.OutOfMemoryError:
            runs.append({"batch_size": batch_size, "kind": kind, "compiled": compiled, "error": "out of memory"})
        if first != "default":
            runs[-1]["attention_first"] = first
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    if args.profile and device == "cuda":
        with lvlm.compiled_blocks():
            results["profile"] = [profile_steps(lvlm, rows, args.batch_sizes[0], "visual"),
                                  profile_steps(lvlm, textual_rows, args.batch_sizes[0], "textual")]
        print(json.dumps(results["profile"]), file=sys.stderr, flush=True)
    visual = [run for run in runs if run.get("kind") == "visual" and "samples_per_s" in run]
    if visual:
        best = max(visual, key=lambda run: run["samples_per_s"])
        results["best_visual_speedup_over_reference"] = round(best["samples_per_s"] / results["reference_fp32_batch1"]["samples_per_s"], 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
