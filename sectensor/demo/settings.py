"""What the app serves and where: command-line flags, each with an environment variable for Spaces.

Flags win over environment variables, which win over the defaults (the embedded organism and its shipped tensors,
on 127.0.0.1:7860).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ASSETS = PROJECT_ROOT / "assets"
DEFAULT_MODEL = str(ASSETS / "organism")
DEFAULT_TENSORS = (str(ASSETS / "tensors" / "organism-visual"), str(ASSETS / "tensors" / "organism-textual"))


@dataclass
class DemoSettings:
    # model
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "model folder or Hub id", "env": "SECTENSOR_MODEL"})
    tensors: list[str] = field(
        default_factory=lambda: list(DEFAULT_TENSORS),
        metadata={"help": "security tensor folder or Hub id; repeat the flag or separate with commas; 'none' for "
                          "no tensor", "env": "SECTENSOR_TENSORS"},
    )
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, ... (default: cuda if available)",
                                                       "env": "SECTENSOR_DEVICE"})
    threads: int | None = field(default=None, metadata={
        "help": "CPU threads for the model (default: 1 for models under 100 M parameters, else PyTorch's choice)",
        "env": "SECTENSOR_THREADS"})
    # serving
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on (0.0.0.0 for every interface)",
                                                     "env": "GRADIO_SERVER_NAME"})
    port: int = field(default=7860, metadata={"help": "port to listen on", "env": "GRADIO_SERVER_PORT"})
    queue_size: int = field(default=32, metadata={"help": "requests that may wait in the queue; more are turned away",
                                                  "env": "SECTENSOR_QUEUE_SIZE"})
    max_file_size: str = field(default="20mb", metadata={"help": "largest upload accepted",
                                                         "env": "SECTENSOR_MAX_FILE_SIZE"})
    gpu_duration: int = field(default=60, metadata={"help": "seconds of GPU asked for per request on ZeroGPU Spaces",
                                                    "env": "SECTENSOR_GPU_DURATION"})

    def __post_init__(self) -> None:
        self.tensors = split_sources(self.tensors)
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} is not between 1 and 65535")
        if self.queue_size < 1 or self.gpu_duration < 1 or (self.threads is not None and self.threads < 1):
            raise ValueError("queue size, GPU duration and threads must be positive")


def split_sources(values: Sequence[str]) -> list[str]:
    """Flatten repeated and comma-separated tensor sources; 'none' alone means no tensor."""
    sources = [item.strip() for value in values for item in value.split(",") if item.strip()]
    return [] if [source.lower() for source in sources] == ["none"] else sources


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="app.py",
        description="Base model and protected model side by side, and what a security tensor looks like.",
    )
    for name, info in DemoSettings.__dataclass_fields__.items():
        flag = "--" + ("tensor" if name == "tensors" else name.replace("_", "-"))
        extra = {"action": "append"} if name == "tensors" else {"type": int if "int" in info.type else str}
        parser.add_argument(flag, dest=name, default=None, help=f"{info.metadata['help']} [env {info.metadata['env']}]",
                            **extra)
    return parser


def settings_from(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> DemoSettings:
    """Settings from flags, then environment variables, then defaults."""
    environ = os.environ if environ is None else environ
    args = vars(make_parser().parse_args(argv))
    values = {}
    for name, info in DemoSettings.__dataclass_fields__.items():
        value = args[name]
        variable = info.metadata["env"]
        if value is None and environ.get(variable):
            value = environ[variable]
            if name == "tensors":
                value = [value]
            elif "int" in info.type:
                if not value.strip().isdigit():
                    raise ValueError(f"{variable}={value!r} is not a whole number")
                value = int(value)
        if value is not None:
            values[name] = value
    return DemoSettings(**values)
