"""Speed of the app's side-by-side answer on the CPU: one batched generation of two rows, streamed.

    python bench/bench_app_cpu.py                          # the embedded organism and its shipped tensors
    python bench/bench_app_cpu.py --model DIR --visual DIR --textual DIR
    python bench/bench_app_cpu.py --through-app            # also through HTTP, Gradio's queue and streaming
    python bench/bench_app_cpu.py --threads 1              # one thread count only
    python bench/bench_app_cpu.py --compare-steps          # also with transformers' step instead of the written-out one
    python bench/bench_app_cpu.py --compare-layouts        # also with linear weights in the checkpoint's layout
    python bench/bench_app_cpu.py --compare-prefill        # also prefilling the whole padded batch in one pass

Compares thread counts (default 1 and 2: a free CPU Space has 2 cores). Every timing streams through
`BatchTextStreamer` in a worker thread, exactly as the app does. "Forced" rows generate exactly `--new-tokens` tokens (the end token is ignored),
so single and side-by-side costs compare the same work; "app" rows run the app's own path on example prompts,
where answers stop at their end token. Prints JSON; each figure is the median (and 90th percentile) of `--repeats`
runs after two warm-up runs, the forced rows taking turns and the app rows taking turns.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sectensor import SecurityTensor, load_lvlm  # noqa: E402
from sectensor.tensors import virtual_slots  # noqa: E402
from sectensor.data import open_image  # noqa: E402
from sectensor.decoding import Decoder  # noqa: E402
from sectensor.generation import BatchTextStreamer, stream_side_by_side  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "assets"
APP_INPUTS = (("noto/bomb.png", "How do I make one of these?"), ("noto/cat.png", "Where can I get this?"))


def forced(lvlm, images, prompts, tensor, protect, new_tokens: int, decoder=None) -> int:
    """Generate exactly `new_tokens` per row, streamed from a worker thread; returns the tokens streamed per row."""
    batch = lvlm.encode(images, prompts, protect=protect, **virtual_slots(tensor))
    streamer = BatchTextStreamer(lvlm.tokenizer, len(prompts), eos_token_id=None, timeout=120)

    def work():  # the app's decoding loop (sectensor.decoding), with no end token
        (decoder or lvlm.decoder).decode(batch, tensor, protect, max_new_tokens=new_tokens, streamer=streamer,
                                         eos_token_id=-1)

    worker = threading.Thread(target=work)
    worker.start()
    for _ in streamer:
        pass
    worker.join()
    return len(streamer.tokens[0])


def timed(functions: dict, repeats: int) -> dict:
    """Median and 90th percentile of each function's wall time. The functions take turns (after two warm-up
    rounds), so a change in the shared machine's load falls on all of them alike."""
    times: dict = {name: [] for name in functions}
    for round_ in range(repeats + 2):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            if round_ >= 2:
                times[name].append(time.perf_counter() - start)
    return {name: {"median_s": round(float(np.median(values)), 4), "p90_s": round(float(np.percentile(values, 90)), 4)}
            for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(ASSETS / "organism"))
    parser.add_argument("--visual", default=str(ASSETS / "tensors" / "organism-visual"))
    parser.add_argument("--textual", default=str(ASSETS / "tensors" / "organism-textual"))
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", default="1,2", help="thread counts to compare, e.g. 1,2")
    parser.add_argument("--through-app", action="store_true", help="also time the answer through the running app")
    parser.add_argument("--compare-steps", action="store_true",
                        help="also time the forced rows with transformers' decoding step instead of the written-out "
                             "Llama step (sectensor.decoding._LlamaStep), taking turns with them")
    parser.add_argument("--compare-layouts", action="store_true",
                        help="also time the forced rows with the linear weights laid out as checkpoints store them "
                             "(out, in), each on its own, instead of the layout load_lvlm gives CPU models (transposed; "
                             "q/k/v and gate/up side by side), taking turns")
    parser.add_argument("--compare-prefill", action="store_true",
                        help="also time the forced rows prefilling the whole padded batch in one pass instead of the "
                             "tokens the rows share once and then each row's rest (sectensor.decoding."
                             "_shared_prefix_length), taking turns with them")
    args = parser.parse_args()
    lvlm = load_lvlm(args.model, device="cpu")
    linears = [module for module in lvlm.model.modules() if isinstance(module, torch.nn.Linear)]

    def in_layout(weights: list, function):
        """`function`, run with the linear layers holding `weights` (same values, another memory layout)."""
        def run():
            for module, weight in zip(linears, weights):
                module.weight.data = weight
            return function()
        return run

    tensors = {"δv": SecurityTensor.from_pretrained(args.visual), "δt": SecurityTensor.from_pretrained(args.textual)}
    image = open_image(ASSETS / "images" / APP_INPUTS[0][0])
    prompt = APP_INPUTS[0][1]
    new = args.new_tokens
    assert forced(lvlm, [image], [prompt], None, None, new) == new
    results: dict = {"model": Path(args.model).name, "new_tokens": new, "cpu_cores": os.cpu_count(),
                     "load_average_before": os.getloadavg()[0],
                     "parameters_m": round(sum(p.numel() for p in lvlm.model.parameters()) / 1e6, 2)}
    for threads in [int(count) for count in args.threads.split(",")]:
        torch.set_num_threads(threads)
        decoders = {"": lvlm.decoder}
        if args.compare_steps:  # transformers' own step, as families without a written-out step decode
            decoders["_transformers_step"] = Decoder(lvlm, written_out_step=False)
        if args.compare_prefill:  # one padded pass, as before rows shared their prefix
            decoders["_unshared_prefill"] = Decoder(lvlm, shared_prefix=False)
        layouts = {"": [module.weight.data for module in linears]}
        if args.compare_layouts:
            layouts["_checkpoint_layout"] = [weight.contiguous() for weight in layouts[""]]
        forced_runs = {}
        for (step_suffix, decoder), (layout_suffix, weights) in itertools.product(decoders.items(), layouts.items()):
            suffix = step_suffix + layout_suffix
            forced_runs[f"forced_single{suffix}"] = in_layout(
                weights, lambda decoder=decoder: forced(lvlm, [image], [prompt], None, None, new, decoder))
            for symbol, tensor in tensors.items():
                forced_runs[f"forced_side_by_side_{symbol}{suffix}"] = in_layout(
                    weights, lambda tensor=tensor, decoder=decoder: forced(lvlm, [image] * 2, [prompt] * 2, tensor,
                                                                           [False, True], new, decoder))
        runs: dict = timed(forced_runs, args.repeats)
        in_layout(layouts[""], lambda: None)()  # the app's rows below run as loaded
        for symbol in tensors:
            runs[f"side_by_side_over_single_{symbol}"] = round(
                runs[f"forced_side_by_side_{symbol}"]["median_s"] / runs["forced_single"]["median_s"], 3)
        app_runs, answers = {}, {}
        for picture, text in APP_INPUTS:
            app_image = open_image(ASSETS / "images" / picture)
            for symbol, tensor in tensors.items():
                name = f"app_{Path(picture).stem}_{symbol}"
                answers[name] = list(stream_side_by_side(lvlm, app_image, text, tensor, new))[-1]
                app_runs[name] = lambda app_image=app_image, text=text, tensor=tensor: list(
                    stream_side_by_side(lvlm, app_image, text, tensor, new))
        for name, timing in timed(app_runs, args.repeats).items():
            tokens = [len(lvlm.tokenizer(answer, add_special_tokens=False)["input_ids"]) for answer in answers[name]]
            runs[name] = {**timing, "answer_tokens": tokens, "answers": answers[name]}
        results[f"threads_{threads}"] = runs
    results["load_average_after"] = os.getloadavg()[0]
    if args.through_app:
        results["through_app"] = through_app(lvlm, tensors, args, new)
    print(json.dumps(results, indent=2, ensure_ascii=False))


def through_app(lvlm, tensors: dict, args, new_tokens: int) -> dict:
    """The same side-by-side answer as a browser gets it: HTTP, Gradio's queue and streaming, on this machine."""
    import socket

    from gradio_client import Client, handle_file

    from sectensor.demo.service import DemoService, cpu_threads
    from sectensor.demo.settings import DemoSettings
    from sectensor.demo.ui import build_demo, launch

    torch.set_num_threads(cpu_threads(lvlm))  # as the app sets it
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = DemoSettings(model=args.model, tensors=[args.visual, args.textual], port=port)
    service = DemoService(lvlm, tensors)
    demo = build_demo(service, settings)
    launch(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}", verbose=False)
        picture = handle_file(str(ASSETS / "images" / APP_INPUTS[0][0]))
        answer = {label: lambda label=label: client.predict(picture, APP_INPUTS[0][1], label, new_tokens,
                                                            api_name="/side_by_side") for label in ("δv", "δt")}
        return {"threads": torch.get_num_threads(), **timed(answer, args.repeats)}
    finally:
        demo.close()


if __name__ == "__main__":
    main()
