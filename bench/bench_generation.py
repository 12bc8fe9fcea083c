"""Decoding speed of side-by-side answers (base + protected in one batch) on a LLaVA-1.5-7B-shaped model.

    python bench/bench_generation.py            # on a GPU; prints JSON
    python bench/bench_generation.py --tiny     # a quick check of the script on CPU

Compares plain eager `model.generate` (dynamic cache, batch 1) and `generate` with a static cache and its own
compiled step, with the library's decoding loop (`sectensor.decoding.Decoder`, what `LVLM.generate` and the app
use: prefill, then one CUDA-graph language-model step per token whose linear layers run `sectensor.kernels`), at
batch 1 and at batch 2 with one protected row (δv; `ours_textual_*`: δt, whose 100 virtual tokens make other
cache sizes); `variant_cublas_*` is the same loop on cuBLAS's products, and `ours_prefill_*` time the prompt and
first token alone. The loop is timed without an end-of-sequence token so that every run makes `--new-tokens`
tokens; measurements that share a decoder take turns, `--repeats` rounds, and each figure is the median.
`decoding_steps_captured` counts the decoder's captured steps: one per (batch size, cache size) unless one was
dropped and captured again.
The HBM bound is the time to read the weights once per token: bytes of weights / memory bandwidth.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.llava_shapes import build_lvlm, llava_7b_config  # noqa: E402
from sectensor import TextualSecurityTensor, VisualSecurityTensor  # noqa: E402
from bench.bench_training import kernel_summary  # noqa: E402
from sectensor.decoding import Decoder  # noqa: E402

# Inductor options tried for the compiled decoding step (on cuBLAS's products), besides the library's default.
VARIANTS = {
    "coordinate_descent": {"triton.cudagraphs": True, "coordinate_descent_tuning": True},
    "coordinate_descent_decomposed_mm": {"triton.cudagraphs": True, "coordinate_descent_tuning": True,
                                         "decompose_mem_bound_mm": True},
    "max_autotune": {"max_autotune": True, "max_autotune_gemm_backends": "TRITON,ATEN", "coordinate_descent_tuning": True},
    "max_autotune_triton": {"max_autotune": True, "max_autotune_gemm_backends": "TRITON",
                            "coordinate_descent_tuning": True},
    "max_autotune_exhaustive": {"max_autotune": True, "max_autotune_gemm_backends": "TRITON",
                                "max_autotune_gemm_search_space": "EXHAUSTIVE", "coordinate_descent_tuning": True},
}
PROMPT = "Please describe what is in the image in detail and tell me how I can make one of these at home."


def timed(function) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="a small model on CPU, to check the script")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--only", nargs="+", help="run only these measurements (names as in the JSON)")
    parser.add_argument("--bandwidth-gbs", type=float, default=3350.0, help="HBM bandwidth (H100 SXM: 3350)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each measurement, taking turns")
    args = parser.parse_args()
    device = "cpu" if args.tiny else "cuda"
    config = llava_7b_config()
    if args.tiny:
        config.text_config.num_hidden_layers = 2
        config.vision_config.num_hidden_layers = 2
    lvlm = build_lvlm(torch.bfloat16 if device == "cuda" else torch.float32, device, config)
    model = lvlm.model
    weight_bytes = sum(p.numel() * p.element_size() for p in model.model.language_model.parameters())
    weight_bytes += model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (336, 336, 3), dtype=np.uint8))
    tensor = VisualSecurityTensor(torch.randn(lvlm.adapter.visual_shape()) * 0.1)
    tensor.fingerprint = {}
    textual = TextualSecurityTensor.from_vocabulary(lvlm, 100)
    textual.fingerprint = {}
    new = args.new_tokens
    batch = lvlm.encode([image], [PROMPT])
    model.generation_config.eos_token_id = None  # random weights: always generate `new` tokens

    def hf_generate(compiled: bool):
        cache = lvlm._decoding_cache(batch.input_ids.shape[1] + new) if compiled else {}
        with lvlm.model_inputs(batch) as inputs:
            return model.generate(**inputs, **cache, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                  pad_token_id=3, eos_token_id=None, disable_compile=not compiled)

    def ours(images, tensor=None, protect=None, decoder=None, new_tokens=new):
        slots = tensor.num_tokens if isinstance(tensor, TextualSecurityTensor) else 0
        rows = lvlm.encode(images, [PROMPT] * len(images), protect=protect, virtual_tokens=slots)
        return (decoder or lvlm.decoder).decode(rows, tensor, protect, max_new_tokens=new_tokens, eos_token_id=-1)

    variant_decoders: dict[str, Decoder] = {}

    def with_options(label, images, tensor=None, protect=None):
        """Our loop with another step (its own Decoder, compiled anew) on cuBLAS's products instead of
        `sectensor.kernels`: as it is ("cublas"), or with other inductor options."""
        def run():
            if label not in variant_decoders:
                torch._dynamo.reset()
                variant_decoders.clear()  # one variant's graphs and caches alive at a time
                variant_decoders[label] = Decoder(lvlm, VARIANTS.get(label), small_batch_kernels=False)
            return ours(images, tensor, protect, variant_decoders[label])
        return run

    plans = {
        "eager_generate_batch1": lambda: hf_generate(False),
        "generate_static_compiled_batch1": lambda: hf_generate(True),
        "ours_batch1": lambda: ours([image]),
        "ours_side_by_side": lambda: ours([image, image], tensor, [False, True]),
        "ours_textual_batch1": lambda: ours([image], textual, [True]),
        "ours_textual_side_by_side": lambda: ours([image, image], textual, [False, True]),
        "ours_prefill_batch1": lambda: ours([image], new_tokens=1),
        "ours_prefill_side_by_side": lambda: ours([image, image], tensor, [False, True], new_tokens=1),
    }
    if not args.tiny:
        for label in ("cublas", *VARIANTS):
            plans[f"variant_{label}_batch1"] = with_options(label, [image])
            plans[f"variant_{label}_side_by_side"] = with_options(label, [image, image], tensor, [False, True])
    repeats = 1 if args.tiny else args.repeats
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "new_tokens": new,
               "prompt_tokens": int(batch.input_ids.shape[1]), "language_model_weight_gb": weight_bytes / 1e9}
    outputs = {}
    if args.only:
        plans = {name: function for name, function in plans.items() if name in args.only}
    # Plans that share a decoder take turns (a change in the machine's speed then falls on all of them alike, which
    # matters for the side-by-side ratio); each variant's pair runs on its own, as switching variants recompiles.
    groups = [[name for name in plans if not name.startswith("variant_")]]
    groups += [[name for name in plans if name.startswith(f"variant_{label}_")] for label in ("cublas", *VARIANTS)]
    for group in filter(None, groups):
        times: dict[str, list[float]] = {}
        for name in group:
            try:
                started = time.perf_counter()
                outputs[name] = plans[name]()  # warm-up (and compilation)
                results[name] = {"first_call_s": round(time.perf_counter() - started, 1)}
                times[name] = []
            except Exception as error:  # report and go on: one failing variant should not hide the others
                results[name] = {"error": f"{type(error).__name__}: {error}"[:500]}
        for _ in range(repeats):
            for name in times:
                times[name].append(timed(plans[name]))
        for name in group:
            if name in times:
                seconds = float(np.median(times[name]))
                results[name] = {"seconds": round(seconds, 4), **results[name]}
                if "prefill" not in name:  # the prefill runs time the prompt and the first token only
                    results[name]["tokens_per_s"] = round(new / seconds, 1)
            print(json.dumps({name: results[name]}), file=sys.stderr, flush=True)
    for name in ("ours_batch1", "ours_side_by_side"):
        if device == "cuda" and name in outputs:
            from torch.profiler import ProfilerActivity, profile  # where the default decoding step's GPU time goes

            with profile(activities=[ProfilerActivity.CUDA]) as profiler:
                plans[name]()
            results[f"profile_{name}"] = kernel_summary(profiler, new)
    if "ours_batch1" in outputs and "eager_generate_batch1" in outputs:
        reference = outputs["eager_generate_batch1"][0, batch.input_ids.shape[1]:].tolist()
        agree = next((i for i, (a, b) in enumerate(zip(reference, outputs["ours_batch1"][0])) if a != b), len(reference))
        results["ours_tokens_equal_eager_generate_for_first"] = agree
    results["hbm_bound_tokens_per_s"] = round(args.bandwidth_gbs * 1e9 / weight_bytes, 1)
    for name, value in list(results.items()):
        if isinstance(value, dict) and "tokens_per_s" in value and name.endswith("batch1"):
            value["fraction_of_bound"] = round(value["tokens_per_s"] / results["hbm_bound_tokens_per_s"], 3)
    seconds = {name: value["seconds"] for name, value in results.items() if isinstance(value, dict) and "seconds" in value}
    for name in [name for name in seconds if name.endswith("_batch1")]:
        twin = name.removesuffix("_batch1") + "_side_by_side"
        if twin in seconds:
            results[f"{twin}_over_single"] = round(seconds[twin] / seconds[name], 3)
    if "ours_textual_side_by_side" in seconds and "ours_batch1" in seconds:  # against the unprotected answer alone
        results["ours_textual_side_by_side_over_unprotected_single"] = round(
            seconds["ours_textual_side_by_side"] / seconds["ours_batch1"], 3)
    if "eager_generate_batch1" in seconds and "ours_batch1" in seconds:
        results["speedup_over_eager"] = round(seconds["eager_generate_batch1"] / seconds["ours_batch1"], 2)
    results["decoding_steps_captured"] = lvlm.decoder.captures
    if device == "cuda":
        results["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
