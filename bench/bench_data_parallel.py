"""Data-parallel δv training: the library's trainer (`sectensor.training.train`, what train.py runs) on a
LLaVA-1.5-7B-shaped model, on one GPU and under `accelerate launch` on several.

    python bench/bench_data_parallel.py --batch-size 8 --out runs/dp-1gpu-b8
    python bench/bench_data_parallel.py --batch-size 16 --out runs/dp-1gpu-b16
    accelerate launch --num_processes 2 bench/bench_data_parallel.py --batch-size 16 --out runs/dp-2gpu-b16
    python bench/bench_data_parallel.py --compare runs/dp-1gpu-b8 runs/dp-1gpu-b16 runs/dp-2gpu-b16

`--batch-size` is the global batch: two processes take 8 rows each of a 16-row batch, so a 2-GPU run and a
1-GPU run at the same global batch follow the same optimisation and should end at the same tensor.
Every process builds the same random weights (seed 0). The rows are SA rows: random 336×336 pictures, three
prompts, a refusal target. samples/s = global batch / median step time after the first 5 steps (compilation),
read from the run's training log. `--compare` prints one JSON object: throughput per run, ratios, final losses
and how far the final tensors are apart.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_training import PROMPTS, TARGET  # noqa: E402
from bench.llava_shapes import build_lvlm, llava_7b_config, tiny_llava_config  # noqa: E402

WARM_UP_STEPS = 5


def _state():
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())  # as the trainer creates it


def write_manifest(folder: Path, rows: int) -> Path:
    """`rows` SA rows over 32 random pictures; written by the main process only."""
    manifest = folder / "data" / "train.jsonl"
    if _state().is_main_process:
        (folder / "data").mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for index in range(32):
            Image.fromarray(rng.integers(0, 256, (336, 336, 3), dtype=np.uint8)).save(folder / "data" / f"{index}.png")
        lines = [json.dumps({"image": f"{index % 32}.png", "prompt": PROMPTS[index % len(PROMPTS)], "split": "SA",
                             "target": TARGET}) for index in range(rows)]
        manifest.write_text("\n".join(lines) + "\n")
    _state().wait_for_everyone()
    return manifest


def run(batch_size: int, steps: int, out: Path, tiny: bool = False) -> None:
    from sectensor.training import train
    from sectensor.training_config import TrainingConfig

    state = _state()
    manifest = write_manifest(out, rows=batch_size * steps)
    dtype = torch.float32 if state.device.type == "cpu" else torch.bfloat16
    lvlm = build_lvlm(dtype, str(state.device), tiny_llava_config() if tiny else llava_7b_config())
    config = TrainingConfig(model="llava-1.5-7b-shape", kind="visual", data=str(manifest), output_dir=str(out / "run"),
                            batch_size=batch_size, max_steps=steps, seed=0, splits=("SA",), progress=False)
    result = train(config, lvlm=lvlm)
    if state.is_main_process:
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        summary = {"processes": state.num_processes, "global_batch": batch_size, "steps": result.steps,
                   "wall_seconds": round(result.wall_seconds, 1), "peak_gib_process_0": peak and round(peak, 1)}
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps(summary))


def describe(folder: Path) -> dict:
    from safetensors.torch import load_file

    summary = json.loads((folder / "summary.json").read_text())
    log = [json.loads(line) for line in (folder / "run" / "training_log.jsonl").read_text().splitlines() if line]
    step_seconds = [b["seconds"] - a["seconds"] for a, b in zip(log, log[1:])][WARM_UP_STEPS:]
    summary["samples_per_s"] = round(summary["global_batch"] / statistics.median(step_seconds), 2)
    summary["losses_first_last"] = [round(log[0]["loss"], 4), round(log[-1]["loss"], 4)]
    summary["delta"] = load_file(str(folder / "run" / "checkpoint.safetensors"))["delta"]
    return summary


def compare(folders: list[Path]) -> None:
    runs = {str(folder): describe(folder) for folder in folders}
    deltas = {name: run.pop("delta") for name, run in runs.items()}
    one_gpu = {name: run for name, run in runs.items() if run["processes"] == 1}
    for name, run in runs.items():
        if run["processes"] == 1:
            continue
        run["speedup_vs_1_gpu"] = {f"batch {other['global_batch']}": round(run["samples_per_s"] / other["samples_per_s"], 2)
                                   for other in one_gpu.values()}
        for other_name, other in one_gpu.items():
            if other["global_batch"] == run["global_batch"]:
                difference = deltas[name] - deltas[other_name]
                run["final_delta_vs_1_gpu_same_batch"] = {
                    "max_abs_difference": round(float(difference.abs().max()), 5),
                    "cosine": round(float(torch.nn.functional.cosine_similarity(
                        deltas[name].flatten(), deltas[other_name].flatten(), dim=0)), 5)}
    print(json.dumps(runs, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=16, help="global batch (split across processes)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path, help="folder for the run (data, log, checkpoint, summary.json)")
    parser.add_argument("--tiny", action="store_true", help="a small model (on CPU without a GPU), to check the script")
    parser.add_argument("--compare", type=Path, nargs="+", help="run folders to compare instead of training")
    args = parser.parse_args()
    if args.compare:
        compare(args.compare)
    else:
        run(args.batch_size, args.steps, args.out, args.tiny)


if __name__ == "__main__":
    main()
