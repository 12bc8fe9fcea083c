"""Train a security tensor for a frozen vision-language model.

    # δv for the embedded organism (paper defaults: AdamW, lr 16e-4, clamp ±1), evaluated on the test sets
    python train.py --model assets/organism --kind visual --data assets/data/tensor_training.jsonl \\
        --output-dir runs/organism-visual --eval-data assets/data/tensor_tests.jsonl

    # δt with 100 virtual tokens, KL to the base model on benign rows
    python train.py --model assets/organism --kind textual --benign-loss kl \\
        --data assets/data/tensor_training.jsonl --output-dir runs/organism-textual

    # continue a killed run; on several GPUs
    python train.py ... --resume
    accelerate launch --num_processes 2 train.py ...

    # publish after training and evaluation
    python train.py ... --push-to-hub USER/REPO --private
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sectensor.training_config import TrainingConfig, add_config_arguments, config_from_args


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train.py", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--push-to-hub", metavar="USER/REPO", help="after saving (and evaluating), upload the tensor folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo as private")
    return parser


def main(config: TrainingConfig, push_to_hub: str | None = None, private: bool = False) -> int:
    from sectensor.errors import SectensorError
    from sectensor.training import train

    try:
        result = train(config)
    except SectensorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"saved the {config.kind} tensor to {result.output_dir} ({result.steps} steps, {result.wall_seconds:.0f} s)")
    if push_to_hub:
        from sectensor.hub import push_to_hub as push

        try:
            url = push(result.output_dir, push_to_hub, private=private,
                       commit_message=f"{config.kind} security tensor for {config.model} ({result.steps} steps)")
        except SectensorError as error:  # the message says the files are kept and how to push them later
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"pushed to {url}")
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from sectensor.errors import SectensorError

    try:
        config = config_from_args(args)
    except SectensorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return main(config, args.push_to_hub, args.private)


if __name__ == "__main__":
    raise SystemExit(cli())
