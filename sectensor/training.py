"""Training a security tensor (δv or δt) for a frozen vision-language model.

Objective, per row (mean over the row's answer tokens), then weighted by split and averaged over the batch:
    SA rows          cross-entropy toward a refusal (the manifest's `target`, or `config.refusal`);
    TCB and GB rows  cross-entropy toward the base model's own greedy answer (computed once with the tensor
                     off and cached on disk), or with `benign_loss="kl"` KL(base ‖ protected) at those positions.
The public reference code compares `type == 'Harmful'` with data that says 'SA set', so its SA rows never get
the refusal target; here the split decides the target and `tests/test_training.py` checks both directions.

The fast path is the only path: bf16 weights with a float32 δ on GPU, length-bucketed batches encoded once,
right-padded without a mask (SDPA's flash kernel), logits only at answer positions, δt's frozen prefix run once
without autograd (`LVLM.answer_logits`), cached base answers, the next batch collated during the backward pass,
one read-back of the logged numbers per step (docs/benchmarks.md).

Runs keep a JSON-lines loss log, write one-file safetensors checkpoints atomically, resume exactly (data order
and augmentation are derived from (seed, step), so a resumed run repeats an unbroken one), and stop with a clear
error on a NaN/inf loss, keeping the last good checkpoint (a step whose loss is finite but whose gradient is not
is skipped and logged; ten in a row stop the run). Under `accelerate launch` every process takes its share
of each global batch and δ gradients are averaged across processes.

    python train.py --model assets/organism --kind visual --data assets/data/tensor_training.jsonl --output-dir runs/dv
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .adapters import RowEncoding
from .augment import augment_pixels, prompt_words, reword
from .data import Sample, load_manifest, sample_image
from .errors import SectensorError
from .judge import DEFAULT_JUDGE
from .lvlm import LVLM, Batch
from .tensors import SecurityTensor, TextualSecurityTensor, VisualSecurityTensor
from .training_config import TrainingConfig

LOG_NAME = "training_log.jsonl"
CHECKPOINT_NAME = "checkpoint.safetensors"
BASE_ANSWERS_NAME = "base_answers.jsonl"
EVAL_NAME = "eval_results.json"
BENIGN_SPLITS = ("TCB", "GB")
MAX_SKIPPED_IN_A_ROW = 10  # consecutive steps with a non-finite gradient before the run is stopped
# Settings a resumed run must share with the run that wrote the checkpoint, or it would not continue it.
# More epochs or steps may be given, to extend a finished run.
_RESUME_KEYS = ("kind", "seed", "batch_size", "lr", "lr_schedule", "weight_decay", "ema_decay", "splits",
                "split_weights", "benign_loss", "first_token_weight", "augment", "augment_colours", "image_noise",
                "word_noise", "word_noise_rows", "threshold", "top_band", "virtual_tokens", "virtual_placement",
                "init_text", "data")
# What checkpoints written before a setting existed used.
_SETTINGS_BEFORE_THEY_EXISTED = {"lr_schedule": "constant", "virtual_placement": "before_text",
                                 "first_token_weight": 1.0, "augment_colours": False, "ema_decay": 0.0,
                                 "image_noise": 0.0, "word_noise": 0.0,
                                 "word_noise_rows": "benign", "top_band": 1.0, "init_text": None}


class TrainingDivergedError(SectensorError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class Example:
    """One training row: the sample, the answer it is trained toward, and its encoding (computed once)."""

    sample: Sample
    target: str
    encoding: RowEncoding

    @property
    def split(self) -> str:
        return self.sample.split

    @property
    def length(self) -> int:
        return int(self.encoding.input_ids.shape[0])


@dataclass
class TrainingResult:
    tensor: SecurityTensor
    output_dir: Path
    steps: int
    wall_seconds: float
    eval_results: dict[str, Any] | None = None


# ---- base answers ---------------------------------------------------------------------------------------
def _sample_key(model: dict[str, Any], sample: Sample, max_new_tokens: int) -> str:
    """Cache key: model weights, picture bytes, prompt and answer length (a changed picture gets a new answer)."""
    picture = hashlib.sha256(Path(sample.image).read_bytes()).hexdigest() if sample.image else ""
    material = json.dumps([model["config_hash"], model["weights_hash"], model["parameters_hash"], picture,
                           sample.prompt, max_new_tokens])
    return hashlib.sha256(material.encode()).hexdigest()[:24]


def base_answers(
    lvlm: LVLM, samples: Sequence[Sample], cache_path: str | os.PathLike | None = None,
    max_new_tokens: int = 48, batch_size: int = 32, rank: int = 0, world_size: int = 1,
) -> list[str]:
    """The base model's greedy answers (tensor off) for `samples`, read from and added to a JSON-lines cache.

    With several processes each one generates its share of the missing answers; all of them return the full list.
    """
    from .tensors import model_fingerprint

    fingerprint = model_fingerprint(lvlm)
    keys = [_sample_key(fingerprint, sample, max_new_tokens) for sample in samples]
    cache: dict[str, str] = {}
    if cache_path is not None and Path(cache_path).is_file():
        for line in Path(cache_path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                cache[row["key"]] = row["answer"]
    missing = sorted({key: index for index, key in enumerate(keys) if key not in cache}.values(),
                     key=lambda index: (-len(samples[index].prompt), index))
    mine = missing[rank::world_size]
    new: dict[str, str] = {}
    for start in range(0, len(mine), batch_size):
        chunk = mine[start : start + batch_size]
        answers = lvlm.generate([sample_image(samples[i]) for i in chunk], [samples[i].prompt for i in chunk],
                                max_new_tokens=max_new_tokens)
        new.update({keys[i]: answer for i, answer in zip(chunk, answers)})
    if world_size > 1:
        from accelerate.utils import gather_object

        new = {key: answer for part in gather_object([new]) for key, answer in part.items()}
    if new and cache_path is not None and rank == 0:
        with open(cache_path, "a", encoding="utf-8") as handle:
            for key, answer in new.items():
                handle.write(json.dumps({"key": key, "answer": answer}) + "\n")
    cache.update(new)
    return [cache[key] for key in keys]


# ---- examples and batches --------------------------------------------------------------------------------
def build_examples(lvlm: LVLM, samples: Sequence[Sample], config: TrainingConfig,
                   benign_answers: Sequence[str]) -> list[Example]:
    """Targets for every row (SA → refusal, TCB/GB → base answer) and their encodings."""
    benign = iter(benign_answers)
    examples = []
    for sample in samples:
        target = (sample.target or config.refusal) if sample.split == "SA" else next(benign)
        if not target.strip():
            target = lvlm.tokenizer.eos_token or ""  # the base model answered with nothing: keep it that way
        examples.append(Example(sample, target, encode_row(lvlm, sample_image(sample), sample.prompt, target, config)))
    return examples


def encode_row(lvlm: LVLM, image: Image.Image | None, prompt: str, target: str,
               config: TrainingConfig) -> RowEncoding:
    """One row's encoding: `image`, `prompt`, the answer `target`, and δt's slots where config puts them."""
    virtual_tokens = config.virtual_tokens if config.kind == "textual" else 0
    batch = lvlm.encode([image], [prompt], answers=[target], virtual_tokens=virtual_tokens,
                        placement=config.virtual_placement)
    return _row_of(batch)


def _row_of(batch: Batch) -> RowEncoding:
    """The single row of a one-row batch, as a RowEncoding (a one-row batch has no padding)."""
    return RowEncoding(
        input_ids=batch.input_ids[0],
        token_fields={name: value[0] for name, value in batch.token_fields.items()},
        image_fields=dict(batch.image_fields),
        virtual_mask=batch.virtual_mask[0],
        target_mask=batch.target_mask[0],
    )


def _generator(*parts: int | str, device: torch.device | str = "cpu") -> torch.Generator:
    seed = int.from_bytes(hashlib.sha256(json.dumps(parts).encode()).digest()[:8], "little") % (2**63)
    return torch.Generator(device=device).manual_seed(seed)


def epoch_batches(splits: Sequence[str], lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  min_rows: int = 1) -> list[list[int]]:
    """Batches for one epoch, the same for the same (seed, epoch): each holds the splits in the data's
    proportions (a batch of one split only would pull δ one way, the next batch the other) and rows of
    similar length (little padding).

    Rows are shuffled and the splits interleaved evenly; the stream is cut into windows of 8 batches. Inside a
    window each split's rows are sorted by length and given their quantile, (rank + 0.5) / count; the window is
    ordered by quantile and cut into batches, so every batch takes the same slice of every split. Example: SA,
    TCB, GB with 32, 32, 16 rows in a window and batch_size 10 give 8 batches of 4 + 4 + 2 rows, the shortest
    rows first. Batches are then shuffled; a batch smaller than `min_rows` is dropped.
    """
    generator = _generator(seed, epoch)
    by_split: dict[str, list[int]] = {}
    for index in torch.randperm(len(lengths), generator=generator).tolist():
        by_split.setdefault(splits[index], []).append(index)
    stream = [index for _, _, index in sorted(
        ((k + 0.5) / len(rows), name, index) for name, rows in by_split.items() for k, index in enumerate(rows))]
    batches = []
    for start in range(0, len(stream), batch_size * 8):
        window = stream[start : start + batch_size * 8]
        keyed = []
        for name in sorted({splits[index] for index in window}):
            rows = sorted((index for index in window if splits[index] == name), key=lambda index: lengths[index])
            keyed += [((rank + 0.5) / len(rows), name, index) for rank, index in enumerate(rows)]
        ordered = [index for _, _, index in sorted(keyed)]
        batches += [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    batches = [batch for batch in batches if len(batch) >= min_rows]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def collate_on_device(lvlm: LVLM, encodings: Sequence[RowEncoding]) -> Batch:
    """Collate rows and start copying their pictures to the model's device; on a GPU the copy goes through pinned
    memory and does not make the CPU wait, so the next batch can be prepared while the GPU still works."""
    batch = lvlm.collate(list(encodings))
    device = lvlm.device
    if device.type == "cuda":
        batch.image_fields = {name: value.pin_memory().to(device, non_blocking=True)
                              for name, value in batch.image_fields.items()}
    return batch


# ---- the objective -------------------------------------------------------------------------------------
def row_losses(lvlm: LVLM, batch: Batch, tensor: SecurityTensor | None, kl_rows: torch.Tensor | None = None,
               first_token_weight: float = 1.0, image_noise: float = 0.0,
               noise_generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-row loss (batch_size,): mean token cross-entropy toward the row's answer, or for rows where
    `kl_rows` (batch_size,) is True the mean token KL(base ‖ with tensor) at the same positions, the base model
    reading the row as it would without the tensor (no δt slots). The first answer token, where a model decides
    between refusing and answering, counts `first_token_weight` times in its row's mean. With `image_noise`, the
    model with the tensor reads noisy picture features (`LVLM.image_feature_noise`, from `noise_generator`); the
    base model's distributions stay those of the clean pictures."""
    noisy = lvlm.image_feature_noise(image_noise, noise_generator) if image_noise else nullcontext()
    with noisy:
        logits, labels, row_of = lvlm.answer_logits(batch, tensor)  # (num_answer_tokens, vocab_size)
    token_losses = F.cross_entropy(logits, labels, reduction="none")
    if kl_rows is not None and bool(kl_rows.any()):
        kl_rows = kl_rows.cpu()
        base_rows = batch.select(kl_rows).without_virtual_slots(lvlm.adapter.placeholder_token_id)
        with torch.no_grad():  # the base model's distributions, for the KL rows alone, read without δt's slots
            base_logits, _, _ = lvlm.answer_logits(base_rows, None)
        # The KL rows' answer tokens, in the order both calls list them (row by row), found on the CPU.
        answer_rows = torch.repeat_interleave(torch.arange(batch.size), batch.target_mask.cpu().sum(1))
        kl_tokens = kl_rows[answer_rows].nonzero().squeeze(1).to(logits.device, non_blocking=True)
        log_p = F.log_softmax(logits.index_select(0, kl_tokens), dim=-1)
        log_base = F.log_softmax(base_logits, dim=-1)
        token_kl = (log_base.exp() * (log_base - log_p)).sum(-1)
        token_losses = token_losses.index_copy(0, kl_tokens, token_kl)
    counts = batch.target_mask.sum(1).clamp(min=1).to(token_losses.device)  # answer tokens per row
    sums = torch.zeros(batch.size, device=token_losses.device).index_add(0, row_of, token_losses)
    if first_token_weight != 1.0:  # each row's first token counted (weight - 1) more times, found on the device
        first = torch.ones_like(row_of, dtype=torch.bool)
        first[1:] = row_of[1:] != row_of[:-1]  # rows' tokens are listed row after row
        extra = (first_token_weight - 1.0) * first.to(token_losses.dtype)
        sums = sums.index_add(0, row_of, extra * token_losses)
        counts = counts + torch.zeros_like(sums).index_add(0, row_of, extra)
    return sums / counts


@torch.no_grad()
def split_losses(lvlm: LVLM, examples: Sequence[Example], tensor: SecurityTensor | None = None,
                 batch_size: int = 32) -> dict[str, float]:
    """Mean cross-entropy per split toward each row's target (refusal for SA, base answer for TCB/GB)."""
    totals: dict[str, list[float]] = {}
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        losses = row_losses(lvlm, lvlm.collate([example.encoding for example in chunk]), tensor)
        for example, value in zip(chunk, losses.tolist()):
            totals.setdefault(example.split, []).append(value)
    return {split: sum(values) / len(values) for split, values in totals.items()}


# ---- checkpoints and logs --------------------------------------------------------------------------------
def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(temporary)
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)  # readers see the old file or the new one, never half of one


@dataclass(frozen=True)
class Progress:
    """How far a run got: steps done, seconds spent training them and steps skipped for a non-finite gradient,
    summed over every invocation of a resumed run."""

    step: int = 0
    seconds: float = 0.0
    skipped: int = 0


def save_checkpoint(path: Path, tensor: SecurityTensor, optimizer: torch.optim.Optimizer, progress: Progress,
                    settings: dict[str, Any], average: torch.Tensor | None = None) -> None:
    """One safetensors file: δ, AdamW's moments, δ's moving average if kept, and the progress and settings as JSON
    metadata (no pickle)."""
    state = optimizer.state.get(tensor.delta, {})
    tensors = {"delta": tensor.delta.detach().cpu().contiguous()}
    if average is not None:
        tensors["average"] = average.detach().cpu().contiguous()
    if state:
        tensors["exp_avg"] = state["exp_avg"].detach().cpu().contiguous()
        tensors["exp_avg_sq"] = state["exp_avg_sq"].detach().cpu().contiguous()
    metadata = {"step": str(progress.step), "seconds": str(progress.seconds), "skipped": str(progress.skipped),
                "adam_step": str(float(state["step"]) if state else 0.0), "settings": json.dumps(settings, sort_keys=True)}
    _atomic_write(path, lambda target: save_file(tensors, str(target), metadata=metadata))


def load_checkpoint(path: Path, tensor: SecurityTensor, optimizer: torch.optim.Optimizer,
                    settings: dict[str, Any], average: torch.Tensor | None = None) -> Progress:
    """Restore δ, AdamW and, if given, δ's moving average from `path`; returns the progress to continue from."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise SectensorError(f"cannot resume: {path} is not a readable checkpoint ({error})") from None
    saved = json.loads(metadata.get("settings", "{}"))
    saved = {**_SETTINGS_BEFORE_THEY_EXISTED, **saved}
    differing = [key for key in _RESUME_KEYS if saved.get(key) != settings.get(key)]
    if differing:
        details = ", ".join(f"{key}: {saved.get(key)!r} → {settings.get(key)!r}" for key in differing)
        raise SectensorError(f"cannot resume from {path}: the run used other settings ({details}); "
                             f"use the same flags or another --output-dir")
    if tuple(state["delta"].shape) != tuple(tensor.delta.shape):
        raise SectensorError(f"cannot resume: the checkpoint's tensor has shape {tuple(state['delta'].shape)}, "
                             f"this run's has {tuple(tensor.delta.shape)}")
    with torch.no_grad():
        tensor.delta.copy_(state["delta"])
        if average is not None:
            average.copy_(state["average"])
    if "exp_avg" in state:
        device = tensor.delta.device
        optimizer.state[tensor.delta] = {
            "step": torch.tensor(float(metadata["adam_step"])),
            "exp_avg": state["exp_avg"].to(device), "exp_avg_sq": state["exp_avg_sq"].to(device),
        }
    # Checkpoints written before seconds and skipped steps were recorded count them from here on.
    return Progress(int(metadata["step"]), float(metadata.get("seconds", 0.0)), int(metadata.get("skipped", 0)))


def _truncate_log(path: Path, last_step: int) -> None:
    """Drop log lines after `last_step`: a resumed run logs those steps again."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
    _atomic_write(path, lambda target: target.write_text("".join(line + "\n" for line in kept)))


def hardware_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _progress(total: int, initial: int, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is a convenience; the log holds the same numbers
        return None
    return tqdm(total=total, initial=initial, disable=not enabled, desc="training", unit="step")


# ---- the loop -------------------------------------------------------------------------------------------
def _initial_tensor(lvlm: LVLM, config: TrainingConfig) -> SecurityTensor:
    if config.init_from:
        tensor = SecurityTensor.from_pretrained(config.init_from)
        if tensor.kind != config.kind:
            raise SectensorError(f"--init-from holds a {tensor.kind} tensor but --kind is {config.kind}")
        if tensor.kind == "textual" and tensor.placement != config.virtual_placement:
            raise SectensorError(f"--init-from holds a δt placed {tensor.placement} but --virtual-placement is "
                                 f"{config.virtual_placement}")
        tensor.check_compatible(lvlm)
        return tensor
    if config.kind == "visual":
        return VisualSecurityTensor.zeros(lvlm, threshold=config.threshold)
    if config.init_text is not None:
        return TextualSecurityTensor.from_text(lvlm, config.init_text, num_tokens=config.virtual_tokens,
                                               placement=config.virtual_placement)
    return TextualSecurityTensor.from_vocabulary(lvlm, num_tokens=config.virtual_tokens, seed=config.seed,
                                                 placement=config.virtual_placement)


def _band_mask(tensor: SecurityTensor, config: TrainingConfig) -> torch.Tensor | None:
    """1 on the rows of δv that --top-band trains, 0 below them (broadcast over δv's channels and columns); None
    when the whole tensor trains."""
    if config.top_band >= 1.0:
        return None
    height = tensor.delta.shape[-2]
    rows = torch.arange(height, device=tensor.delta.device) < max(1, round(config.top_band * height))
    return rows.to(tensor.delta.dtype).unsqueeze(-1)


def train(config: TrainingConfig, lvlm: LVLM | None = None,
          on_step: Callable[[int, dict[str, Any]], None] | None = None) -> TrainingResult:
    """Train a security tensor as `config` says; save it (and its evaluation) into `config.output_dir`.

    `on_step(step, record)` is called after every optimizer step (and its checkpoint) with the logged record.
    """
    from accelerate import PartialState

    from .lvlm import load_lvlm

    state = PartialState(cpu=not torch.cuda.is_available())  # without cpu=True, CPU processes never join a group
    world, rank = state.num_processes, state.process_index
    if world > 1:
        device = state.device
    else:
        device = torch.device(config.device) if config.device else (lvlm.device if lvlm is not None else None)
    lvlm = lvlm or load_lvlm(config.model, device=device, dtype=config.dtype)
    compiled = config.compile and lvlm.device.type == "cuda"
    device = lvlm.device
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path, log_path = output_dir / CHECKPOINT_NAME, output_dir / LOG_NAME
    if checkpoint_path.exists() and not config.resume:
        raise SectensorError(f"{output_dir} already holds a run; pass --resume to continue it, or pick another --output-dir")
    if config.resume and not checkpoint_path.exists():
        raise SectensorError(f"--resume: no checkpoint in {output_dir}")

    samples = load_manifest(config.data, config.splits)
    _check_targets(samples, config)
    benign = [sample for sample in samples if sample.split in BENIGN_SPLITS]
    answers = base_answers(lvlm, benign, output_dir / BASE_ANSWERS_NAME, config.max_new_tokens,
                           batch_size=4 * config.batch_size, rank=rank, world_size=world)
    lvlm.decoder.release()  # the answers' decoding caches, not needed while training
    examples = build_examples(lvlm, samples, config, answers)
    lengths = [example.length for example in examples]
    row_splits = [example.split for example in examples]
    steps_per_epoch = len(epoch_batches(row_splits, lengths, config.batch_size, config.seed, 0, min_rows=world))
    total_steps = config.max_steps or config.epochs * steps_per_epoch

    tensor = _initial_tensor(lvlm, config).to(device)
    band = _band_mask(tensor, config)
    if band is not None:
        tensor.delta.data.mul_(band)
    optimizer = torch.optim.AdamW([tensor.delta], lr=config.lr, weight_decay=config.weight_decay)
    settings = {**config.to_dict(), "data": str(Path(config.data).resolve())}
    # δ's moving average (--ema-decay), started at δ's starting value and saved instead of δ at the end.
    average = tensor.delta.detach().clone() if config.ema_decay else None
    resumed = load_checkpoint(checkpoint_path, tensor, optimizer, settings, average) if config.resume else Progress()
    start_step = resumed.step
    if state.is_main_process and config.resume:
        _truncate_log(log_path, start_step)
    elif state.is_main_process:
        log_path.unlink(missing_ok=True)
    weights = torch.tensor([config.split_weights[example.split] for example in examples])
    kl = torch.tensor([config.benign_loss == "kl" and example.split in BENIGN_SPLITS for example in examples])

    normalization = lvlm.pixel_normalization() if config.augment_colours else None
    vocabulary = prompt_words([sample.prompt for sample in samples]) if config.word_noise else []
    reworded = _reworded_rows(examples, config) if config.word_noise else set()
    pictures: dict[str, Image.Image] = {}  # the reworded rows' pictures, opened once instead of at every step
    bar = _progress(total_steps, start_step, config.progress and state.is_main_process)
    # Seconds and skipped steps continue from the checkpoint, so a resumed run reports the time its steps took.
    started, running, skipped, skipped_in_a_row = time.perf_counter() - resumed.seconds, {}, resumed.skipped, 0
    plans: dict[int, list[list[int]]] = {}

    def prepare(step: int) -> tuple[list[int], int, Batch]:
        """This process's rows of `step`, the size of the whole batch, and the rows collated, their pictures on
        the device (augmented if asked)."""
        epoch = step // steps_per_epoch
        if epoch not in plans:
            plans.clear()
            plans[epoch] = epoch_batches(row_splits, lengths, config.batch_size, config.seed, epoch, min_rows=world)
        whole = plans[epoch][step % steps_per_epoch]
        rows = whole[rank::world]
        encodings = [examples[index].encoding for index in rows]
        if config.word_noise:  # benign rows reworded; their KL targets are the base model reading the same words
            generator = _generator("word_noise", config.seed, step, rank)
            for position, index in enumerate(rows):
                if index in reworded:
                    sample = examples[index].sample
                    if sample.image and sample.image not in pictures:
                        pictures[sample.image] = sample_image(sample)
                    prompt = reword(sample.prompt, vocabulary, config.word_noise, generator)
                    encodings[position] = encode_row(lvlm, pictures.get(sample.image), prompt, examples[index].target,
                                                     config)
        batch = collate_on_device(lvlm, encodings)
        if (config.augment or config.augment_colours) and batch.image_rows.numel():
            batch.image_fields["pixel_values"] = augment_pixels(batch.image_fields["pixel_values"],
                                                                _generator(config.seed, step, rank), config.augment,
                                                                normalization)
        return rows, len(whole), batch

    # Compiled only for the loop: fused blocks give about 1.3x the samples/s and less memory (docs/benchmarks.md).
    with lvlm.compiled_blocks() if compiled else nullcontext():
        upcoming = prepare(start_step) if start_step < total_steps else None
        for step in range(start_step, total_steps):
            epoch = step // steps_per_epoch
            rows, whole_batch_size, batch = upcoming
            if compiled:
                torch.compiler.cudagraph_mark_step_begin()  # the compiled vision tower's CUDA graphs start a new step
            noise_generator = (_generator("image_noise", config.seed, step, rank, device=device)
                               if config.image_noise else None)
            losses = row_losses(lvlm, batch, tensor, kl[rows], config.first_token_weight, config.image_noise,
                                noise_generator)
            # Sum over this process's rows, scaled so that averaging the gradients over processes gives the mean over
            # the whole batch even when processes got different numbers of rows.
            loss = (weights[rows].to(device) * losses).sum() * world / whole_batch_size
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            if step + 1 < total_steps:  # collate the next batch while the GPU still runs this backward pass
                upcoming = prepare(step + 1)
            split_sums = _split_sums(losses.detach(), [examples[index].split for index in rows])
            if world > 1:  # average δ gradients and gather the numbers that are logged
                torch.distributed.all_reduce(tensor.delta.grad)
                tensor.delta.grad /= world
                torch.distributed.all_reduce(split_sums)
                loss_value = split_sums[0].sum() / split_sums[1].sum().clamp(min=1)
            else:
                loss_value = loss.detach()
            # One read-back a step: per-split sums and counts, the loss, and whether the gradient is finite.
            numbers = torch.cat([split_sums.flatten(), loss_value.float().reshape(1),
                                 torch.isfinite(tensor.delta.grad).all().float().reshape(1)]).tolist()
            sums, counts, loss_number, gradient_ok = numbers[0:3], numbers[3:6], numbers[6], numbers[7] == 1.0
            if not all(math.isfinite(value) for value in sums):
                raise _diverged(f"the loss became {loss_number}", step, epoch, checkpoint_path, config)
            # A finite loss with a non-finite gradient happens now and then with bfloat16 weights on GPUs: skip that
            # update, as mixed-precision training does; many in a row mean the run has diverged.
            skipped_in_a_row = 0 if gradient_ok else skipped_in_a_row + 1
            skipped += not gradient_ok
            if skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
                raise _diverged(f"the gradient was not finite {skipped_in_a_row} steps in a row", step, epoch,
                                checkpoint_path, config)
            lr = learning_rate(config, step, total_steps)
            if gradient_ok:
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if band is not None:
                    tensor.delta.grad.mul_(band)
                optimizer.step()
            if isinstance(tensor, VisualSecurityTensor):
                tensor.project_()
            if average is not None:
                average.lerp_(tensor.delta.detach(), 1.0 - config.ema_decay)
            saving = (step + 1) % config.save_every == 0 or step + 1 == total_steps
            # Checked before a checkpoint, which must stay good (between checkpoints a non-finite tensor shows up as a
            # non-finite loss at the next step).
            if saving and not torch.isfinite(tensor.delta).all():
                raise _diverged("the tensor's values overflowed", step, epoch, checkpoint_path, config)
            record = {"step": step + 1, "epoch": epoch + 1, "loss": loss_number, "lr": lr,
                      "seconds": round(time.perf_counter() - started, 3), **({} if gradient_ok else {"skipped": True})}
            for index, split in enumerate(("SA", "TCB", "GB")):
                if counts[index] > 0:
                    record[split] = sums[index] / counts[index]
                    previous = running.get(split, record[split])
                    running[split] = 0.9 * previous + 0.1 * record[split]
            if state.is_main_process:
                with open(log_path, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
                if saving:
                    save_checkpoint(checkpoint_path, tensor, optimizer, Progress(step + 1, record["seconds"], skipped),
                                    settings, average)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({split: f"{value:.3f}" for split, value in running.items()})
            if on_step is not None:
                on_step(step + 1, record)
    if bar is not None:
        bar.close()
    if average is not None:
        with torch.no_grad():
            tensor.delta.copy_(average)
    wall = time.perf_counter() - started
    tensor.training_info = _training_info(config, total_steps, steps_per_epoch, len(examples), wall, device, world)
    tensor.training_info["skipped_steps"] = skipped
    result = TrainingResult(tensor, output_dir, total_steps, wall)
    state.wait_for_everyone()
    if state.is_main_process:
        if config.eval_data:
            result.eval_results = _evaluate(lvlm, tensor, config)
            (output_dir / EVAL_NAME).write_text(json.dumps(result.eval_results, indent=2) + "\n")
        from .card import tensor_card

        tensor.save_pretrained(output_dir, card=tensor_card(tensor, result.eval_results))
        _write_figures(output_dir, log_path, tensor)
    state.wait_for_everyone()
    result.tensor = tensor.cpu()
    return result


def learning_rate(config: TrainingConfig, step: int, total_steps: int) -> float:
    """The learning rate of optimizer step `step` (from 0). A function of the step alone, so a resumed run follows
    the same curve as an unbroken one."""
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    return config.lr


def _write_figures(output_dir: Path, log_path: Path, tensor: SecurityTensor) -> None:
    """The loss curves and, for δv, a picture of the tensor, under the names `sectensor.hub.push_to_hub` publishes."""
    from .hub import LOSS_CURVES_NAME, TENSOR_PICTURE_NAME
    from .plots import plot_losses, plot_visual_tensor

    try:
        plot_losses(log_path, output_dir / LOSS_CURVES_NAME)
        if isinstance(tensor, VisualSecurityTensor):
            plot_visual_tensor(tensor, output_dir / TENSOR_PICTURE_NAME)
    except ImportError as error:  # no matplotlib: the tensor and its card are saved; only the figures are missing
        print(f"warning: training figures skipped ({error})")


def _split_sums(losses: torch.Tensor, splits: Sequence[str]) -> torch.Tensor:
    """(2, 3): per split SA/TCB/GB, the sum of row losses and the row count."""
    index = torch.tensor([("SA", "TCB", "GB").index(split) for split in splits], device=losses.device)
    sums = torch.zeros(2, 3, device=losses.device)
    sums[0].index_add_(0, index, losses.float())
    sums[1].index_add_(0, index, torch.ones_like(losses, dtype=torch.float))
    return sums


def _diverged(what: str, step: int, epoch: int, checkpoint_path: Path, config: TrainingConfig) -> TrainingDivergedError:
    kept = (f"the last good checkpoint is {checkpoint_path} (step {_checkpoint_step(checkpoint_path)})"
            if checkpoint_path.exists() else "no checkpoint had been written yet")
    return TrainingDivergedError(
        f"{what} at step {step + 1} (epoch {epoch + 1}); training stopped and {kept}. "
        f"Lower --lr (now {config.lr:g}), check the data, or resume from the checkpoint with --resume."
    )


def _checkpoint_step(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return int((handle.metadata() or {}).get("step", 0))


def _reworded_rows(examples: Sequence[Example], config: TrainingConfig) -> set[int]:
    """The rows --word-noise rewords: the benign ones, or (benign-pictures) those whose picture no SA row shows."""
    harmful_pictures = {example.sample.image for example in examples if example.split == "SA" and example.sample.image}
    return {index for index, example in enumerate(examples) if example.split in BENIGN_SPLITS
            and (config.word_noise_rows == "benign" or example.sample.image not in harmful_pictures)}


def _check_targets(samples: Sequence[Sample], config: TrainingConfig) -> None:
    refusals = {sample.target or config.refusal for sample in samples if sample.split == "SA"}
    compliant = sorted(target for target in refusals if not DEFAULT_JUDGE(target))
    if compliant:
        raise SectensorError(
            f"{len(compliant)} SA target(s) are not refusals by the refusal judge, e.g. {compliant[0]!r}; "
            "SA rows must be trained toward a refusal"
        )


def _training_info(config: TrainingConfig, steps: int, steps_per_epoch: int, rows: int, wall: float,
                   device: torch.device, world: int) -> dict[str, Any]:
    return {
        "base_model": config.model, "data": config.data, "splits": "+".join(config.splits), "rows": rows,
        "steps": steps, "epochs": round(steps / steps_per_epoch, 2), "batch_size": config.batch_size,
        "lr": config.lr, "lr_schedule": config.lr_schedule, "weight_decay": config.weight_decay,
        **({"ema_decay": config.ema_decay} if config.ema_decay else {}), "benign_loss": config.benign_loss,
        **({"first_token_weight": config.first_token_weight} if config.first_token_weight != 1.0 else {}),
        "augment": config.augment, **({"augment_colours": True} if config.augment_colours else {}),
        **({"image_noise": config.image_noise} if config.image_noise else {}),
        **({"word_noise": config.word_noise, "word_noise_rows": config.word_noise_rows} if config.word_noise else {}),
        "seed": config.seed,
        "split_weights": " ".join(f"{k}={v:g}" for k, v in config.split_weights.items()),
        **({"top_band": config.top_band} if config.top_band < 1.0 else {}),
        **({"threshold": config.threshold} if config.kind == "visual"
           else {"virtual_tokens": config.virtual_tokens, "virtual_placement": config.virtual_placement,
                 **({"init_text": config.init_text} if config.init_text is not None else {})}),
        **({"kl_base_without_slots": True} if config.kind == "textual" and config.benign_loss == "kl" else {}),
        "wall_seconds": round(wall, 1), "hardware": f"{world} × {hardware_description(device)}",
    }


def _evaluate(lvlm: LVLM, tensor: SecurityTensor, config: TrainingConfig) -> dict[str, Any]:
    from .evaluate import evaluate

    samples = load_manifest(config.eval_data)
    result = evaluate(lvlm, samples, tensor, batch_size=4 * config.batch_size,
                      max_new_tokens=config.max_new_tokens, progress=config.progress)
    return {"model": config.model, "tensor": str(config.output_dir), "data": config.eval_data, **result}
