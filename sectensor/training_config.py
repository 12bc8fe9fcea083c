"""Settings for training a security tensor: one dataclass, one field per `train.py` flag.

Defaults follow the paper (arXiv 2507.20994, appendix Table 3): AdamW, lr 16e-4 for δv and 8e-4 for δt,
clamp threshold 1 on normalized pixels, 100 virtual tokens; unlike the paper's batch 1, batches are the
default because they are several times faster per sample on the same hardware.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from .adapters.base import PLACEMENTS, check_placement
from .data import TRAINING_SPLITS
from .errors import SectensorError

PAPER_LEARNING_RATES = {"visual": 16e-4, "textual": 8e-4}
BENIGN_LOSSES = ("ce", "kl")
LR_SCHEDULES = ("constant", "cosine")
WORD_NOISE_ROWS = ("benign", "benign-pictures")


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class TrainingConfig:
    """Everything that decides a training run. `__post_init__` checks values and fills kind-dependent defaults."""

    # ---- model and data -------------------------------------------------------------------------------
    model: str = field(metadata=_help("base model: a local folder or a Hugging Face Hub id"))
    data: str = field(metadata=_help("training manifest (.jsonl, reference .json, or a folder of .jsonl) with SA/TCB/GB rows"))
    output_dir: str = field(metadata=_help("folder for the tensor, checkpoints, the loss log and the base-answer cache"))
    kind: str = field(default="visual", metadata=_help("tensor kind: visual (δv, added to pixels) or textual (δt, virtual tokens)", choices=("visual", "textual")))
    splits: tuple[str, ...] = field(default=TRAINING_SPLITS, metadata=_help("training splits to use; leave out TCB for the no-TCB ablation", nargs="+"))
    eval_data: str | None = field(default=None, metadata=_help("test manifest to evaluate the finished tensor on (results go into eval_results.json and the model card)"))
    # ---- the tensor -----------------------------------------------------------------------------------
    threshold: float = field(default=1.0, metadata=_help("δv clamp: every value stays within ±threshold (normalized pixel units)"))
    top_band: float = field(default=1.0, metadata=_help("δv only: train the top fraction of the picture's rows and keep the rest zero, a band whose image tokens come before the object's in the language model's sequence (1 = the whole picture, the paper)"))
    virtual_tokens: int = field(default=100, metadata=_help("δt length n: virtual tokens inserted into the prompt at --virtual-placement"))
    virtual_placement: str = field(default="before_text", metadata=_help("where δt goes: before_text = just before the user's text, after the picture (the paper); before_image = just before the picture, so the image tokens attend to δt (measured on the organism in docs/placement.md: more unseen harmful pictures refused, and more benign ones)", choices=PLACEMENTS))
    init_from: str | None = field(default=None, metadata=_help("start from this saved tensor instead of zeros (δv) / vocabulary embeddings (δt)"))
    init_text: str | None = field(default=None, metadata=_help("δt only: start from the embeddings of this phrase's tokens, repeated to fill --virtual-tokens, instead of random vocabulary tokens drawn by --seed (every seed then starts alike; on the organism random tokens did better: docs/training-levers.md)"))
    # ---- objective ------------------------------------------------------------------------------------
    benign_loss: str = field(default="ce", metadata=_help("TCB/GB loss: ce = cross-entropy to the base model's greedy answer; kl = KL to its token distributions", choices=BENIGN_LOSSES))
    split_weights: dict[str, float] = field(default_factory=lambda: {"SA": 1.0, "TCB": 1.0, "GB": 1.0}, metadata=_help("loss weight per split, e.g. SA=1 TCB=1 GB=1", nargs="+"))
    first_token_weight: float = field(default=1.0, metadata=_help("weight of each row's first answer token in its mean loss: the token where the model refuses or starts to answer (1 = every token alike, the paper; 8 on the organism refused more harmful pictures, and more benign ones: docs/training-levers.md)"))
    refusal: str = field(default="i'm sorry, but i can't help with that.", metadata=_help("SA target for rows whose manifest gives none"))
    augment: bool = field(default=False, metadata=_help("random shift/scale/flip of the pictures at every step (δv and δt), so the tensor cannot memorise the training pictures"))
    augment_colours: bool = field(default=False, metadata=_help("random colour jitter of the pictures at every step (brightness, contrast, saturation, hue, grey, a light gradient), so the tensor cannot key on the training drawings' colours (no gain on the organism: docs/training-levers.md); needs pixels laid out as (images, 3, H, W)"))
    image_noise: float = field(default=0.0, metadata=_help("Gaussian noise of this many times each picture feature's RMS, added where the language model reads the picture, at every step (the base model's KL targets stay clean), so the tensor cannot key on the exact features of the training drawings (0 = off, the paper; on the organism it cost harmful refusals and gave no benign answers back: docs/training-levers.md)"))
    word_noise: float = field(default=0.0, metadata=_help("at every step, each word of a TCB or GB row's prompt is with this probability dropped, swapped for a word of another training prompt, or followed by one, and the row kept close to the base model reading the same words (needs --benign-loss kl), so keeping benign answers is learnt beyond the training wording (0 = off, the paper; docs/training-levers.md)"))
    word_noise_rows: str = field(default="benign", metadata=_help("rows --word-noise rewords: benign = every TCB and GB row; benign-pictures = those whose picture no SA row shows (questions about harmful pictures keep their wording: whether to refuse them hangs on it)", choices=WORD_NOISE_ROWS))
    max_new_tokens: int = field(default=48, metadata=_help("length limit of the cached base answers (TCB/GB targets) and of evaluation answers"))
    # ---- optimisation ---------------------------------------------------------------------------------
    epochs: int = field(default=10, metadata=_help("passes over the training data"))
    max_steps: int | None = field(default=None, metadata=_help("stop after this many optimizer steps (overrides --epochs)"))
    batch_size: int = field(default=16, metadata=_help("rows per optimizer step, summed over all processes"))
    lr: float | None = field(default=None, metadata=_help("AdamW learning rate (default: the paper's 16e-4 for visual, 8e-4 for textual)"))
    lr_schedule: str = field(default="constant", metadata=_help("constant: --lr at every step (the paper); cosine: from --lr down to 0 over the run's steps (a run extended with more steps follows the longer curve from where it resumes)", choices=LR_SCHEDULES))
    weight_decay: float = field(default=0.01, metadata=_help("AdamW weight decay (pulls δ toward zero)"))
    ema_decay: float = field(default=0.0, metadata=_help("save an exponential moving average of δ over the steps, with this decay per step (e.g. 0.995 averages about the last 200 steps), instead of δ after the last step; with a constant learning rate the last steps leave δ wherever their noise put it (0 = off, the paper)"))
    seed: int = field(default=0, metadata=_help("seed for data order, augmentation and δt initialisation"))
    device: str | None = field(default=None, metadata=_help("cpu, cuda, ... (default: cuda if available; ignored under accelerate launch)"))
    dtype: str | None = field(default=None, metadata=_help("model weight dtype (default: bfloat16 on GPU, float32 on CPU); δ is always float32"))
    compile: bool = field(default=True, metadata=_help("on GPUs, compile every transformer block with torch.compile for the training loop (faster steps after a one-off compilation; generation runs uncompiled)"))
    # ---- runs -----------------------------------------------------------------------------------------
    save_every: int = field(default=50, metadata=_help("write a checkpoint every N steps (atomically)"))
    resume: bool = field(default=False, metadata=_help("continue from the checkpoint in --output-dir"))
    progress: bool = field(default=True, metadata=_help("show a progress bar with per-split losses"))

    def __post_init__(self) -> None:
        if self.kind not in PAPER_LEARNING_RATES:
            raise SectensorError(f"unknown tensor kind {self.kind!r}; use visual or textual")
        if self.lr_schedule not in LR_SCHEDULES:
            raise SectensorError(f"unknown learning-rate schedule {self.lr_schedule!r}; use constant or cosine")
        check_placement(self.virtual_placement)
        if self.benign_loss not in BENIGN_LOSSES:
            raise SectensorError(f"unknown benign loss {self.benign_loss!r}; use ce or kl")
        self.splits = tuple(self.splits)
        unknown = set(self.splits) - set(TRAINING_SPLITS)
        if unknown or not self.splits:
            raise SectensorError(f"training splits must be among {', '.join(TRAINING_SPLITS)}; got {list(self.splits)}")
        if "SA" not in self.splits:
            raise SectensorError("training needs the SA split: it is what teaches the tensor to refuse")
        unknown_weights = set(self.split_weights) - set(TRAINING_SPLITS)
        if unknown_weights or any(w < 0 for w in self.split_weights.values()):
            raise SectensorError(f"split weights must be ≥ 0 and name {', '.join(TRAINING_SPLITS)}; got {self.split_weights}")
        self.split_weights = {name: float(self.split_weights.get(name, 1.0)) for name in TRAINING_SPLITS}
        for name in ("epochs", "batch_size", "save_every", "virtual_tokens", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise SectensorError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise SectensorError(f"--max-steps must be at least 1, got {self.max_steps}")
        if not self.first_token_weight > 0:
            raise SectensorError(f"--first-token-weight must be positive, got {self.first_token_weight}")
        if not 0.0 <= self.image_noise < float("inf"):
            raise SectensorError(f"--image-noise must be a finite number ≥ 0, got {self.image_noise}")
        if not 0.0 <= self.word_noise < 1.0:
            raise SectensorError(f"--word-noise must be in [0, 1), got {self.word_noise}")
        if self.word_noise_rows not in WORD_NOISE_ROWS:
            raise SectensorError(f"unknown --word-noise-rows {self.word_noise_rows!r}; use benign or benign-pictures")
        if self.word_noise and self.benign_loss != "kl":
            raise SectensorError("--word-noise needs --benign-loss kl: the cross-entropy targets are the base model's "
                                 "answers to the training wording, not to the reworded prompts")
        if not 0.0 <= self.ema_decay < 1.0:
            raise SectensorError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.threshold <= 0:
            raise SectensorError(f"--threshold must be positive, got {self.threshold}")
        if not 0.0 < self.top_band <= 1.0:
            raise SectensorError(f"--top-band must be in (0, 1], got {self.top_band}")
        if self.top_band < 1.0 and self.kind != "visual":
            raise SectensorError("--top-band shapes δv; a textual tensor has no picture rows")
        if self.init_text is not None:
            if self.kind != "textual":
                raise SectensorError("--init-text starts δt's virtual tokens; a visual tensor starts at zero")
            if self.init_from:
                raise SectensorError("give --init-text or --init-from, not both: each sets where δt starts")
            if not self.init_text.strip():
                raise SectensorError("--init-text is empty; give a phrase in words the model knows")
        if self.lr is None:
            self.lr = PAPER_LEARNING_RATES[self.kind]
        if not self.lr > 0:
            raise SectensorError(f"--lr must be positive, got {self.lr}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


def _parse_weights(items: list[str]) -> dict[str, float]:
    weights = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            raise SectensorError(f"--split-weights: {item!r} is not SPLIT=NUMBER (e.g. TCB=0.5)") from None
    return weights


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per `TrainingConfig` field, help text taken from the field's metadata."""
    for f in fields(TrainingConfig):
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"help": f.metadata["help"], "dest": f.name}
        required = f.default is MISSING and f.default_factory is MISSING
        if f.type == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["default"] = f.default
        else:
            if required:
                kwargs["required"] = True
            else:
                kwargs["default"] = f.default if f.default is not MISSING else None
            kwargs["type"] = {"int": int, "float": float, "float | None": float, "int | None": int}.get(f.type, str)
            for key in ("choices", "nargs"):
                if key in f.metadata:
                    kwargs[key] = f.metadata[key]
        if f.name == "split_weights":
            kwargs.pop("type")
            kwargs["metavar"] = "SPLIT=W"
        if f.default is not MISSING and f.default is not None and not isinstance(f.default, bool):
            kwargs["help"] += f" (default: {' '.join(f.default) if isinstance(f.default, tuple) else f.default})"
        parser.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace) -> TrainingConfig:
    values = {f.name: getattr(args, f.name) for f in fields(TrainingConfig)}
    values["split_weights"] = _parse_weights(values["split_weights"]) if values["split_weights"] else {}
    return TrainingConfig(**values)
