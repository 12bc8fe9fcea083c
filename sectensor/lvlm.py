"""Loading an LVLM and running it with or without a security tensor, in one batch.

`LVLM` holds the frozen model, its processor and its family adapter. Everything that runs the model
(training, evaluation, generation, analysis, the app) goes through `encode` and `model_inputs`, so a
single batch can mix rows with and without the tensor.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from PIL import Image

from .adapters import FamilyAdapter, RowEncoding, adapter_class_for
from .errors import HubUnreachableError, PromptError, SectensorError
from .tensors import virtual_slots


@dataclass
class Batch:
    """Encoded rows, left-padded to one length.

    input_ids:      (batch_size, sequence_length)
    attention_mask: (batch_size, sequence_length)
    token_fields:   extra inputs aligned with input_ids, each (batch_size, sequence_length, ...)
    image_fields:   per-image inputs, each (num_images, ...), in row order
    image_rows:     (num_images,) the row each image belongs to
    virtual_mask:   (batch_size, sequence_length) True at δt slots
    target_mask:    (batch_size, sequence_length) True on answer tokens to be predicted
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_fields: dict[str, torch.Tensor] = field(default_factory=dict)
    image_fields: dict[str, torch.Tensor] = field(default_factory=dict)
    image_rows: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    virtual_mask: torch.Tensor | None = None
    target_mask: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        def move(value):
            if isinstance(value, dict):
                return {name: tensor.to(device) for name, tensor in value.items()}
            return value.to(device) if isinstance(value, torch.Tensor) else value

        return Batch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def row(self, index: int) -> "Batch":
        """Row `index` alone (a batch of one), with its own images."""
        keep = torch.zeros(self.size, dtype=torch.bool)
        keep[index] = True
        return self.select(keep)

    def select(self, keep: torch.Tensor) -> "Batch":
        """The rows where `keep` (batch_size,) is True, in order, with their own images; the same columns.
        Indices are found on the CPU, so that a GPU need not finish its queued work first."""
        keep, image_rows = keep.cpu(), self.image_rows.cpu()
        rows, images = keep.nonzero().squeeze(1), keep[image_rows].nonzero().squeeze(1)

        def pick(value: torch.Tensor, index: torch.Tensor = rows) -> torch.Tensor:
            return value.index_select(0, index.to(value.device, non_blocking=True))

        return Batch(
            input_ids=pick(self.input_ids), attention_mask=pick(self.attention_mask),
            token_fields={name: pick(value) for name, value in self.token_fields.items()},
            image_fields={name: pick(value, images) for name, value in self.image_fields.items()},
            image_rows=(keep.cumsum(0) - 1)[image_rows[images]].to(self.image_rows.device),
            virtual_mask=None if self.virtual_mask is None else pick(self.virtual_mask),
            target_mask=None if self.target_mask is None else pick(self.target_mask),
        )

    def without_virtual_slots(self, pad_id: int) -> "Batch":
        """The same rows with their δt slots taken out, left-padded again with `pad_id`: the rows as the base
        model reads them (slots left in would hold the padding token's embedding, which changes its answers)."""
        if self.virtual_mask is None or not bool(self.virtual_mask.any()):
            return self
        real = self.attention_mask.cpu().bool() & ~self.virtual_mask.cpu()  # (batch_size, sequence_length)
        counts = real.sum(1)
        width = int(counts.max())
        rows, columns = real.nonzero(as_tuple=True)  # row by row, left to right
        placed = real.cumsum(1)[rows, columns] - 1 + (width - counts)[rows]  # each token's column, right-aligned

        def moved(value: torch.Tensor, pad) -> torch.Tensor:
            out = value.new_full((self.size, width, *value.shape[2:]), pad)
            device = value.device
            out[rows.to(device), placed.to(device)] = value[rows.to(device), columns.to(device)]
            return out

        return Batch(
            input_ids=moved(self.input_ids, pad_id), attention_mask=moved(self.attention_mask, 0),
            token_fields={name: moved(value, 0) for name, value in self.token_fields.items()},
            image_fields=self.image_fields, image_rows=self.image_rows, virtual_mask=None,
            target_mask=None if self.target_mask is None else moved(self.target_mask, False),
        )

    def columns(self, start: int, stop: int | None, with_images: bool = True) -> "Batch":
        """Token positions start:stop of every row; the images come along unless `with_images` is False."""
        def cut(value):
            return None if value is None else value[:, start:stop]

        return Batch(
            input_ids=cut(self.input_ids), attention_mask=cut(self.attention_mask),
            token_fields={name: cut(value) for name, value in self.token_fields.items()},
            image_fields=dict(self.image_fields) if with_images else {},
            image_rows=self.image_rows if with_images else self.image_rows[:0],
            virtual_mask=cut(self.virtual_mask), target_mask=cut(self.target_mask),
        )


def _pad_and_concatenate(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-row image fields along dim 0, zero-padding the other dims to their largest size
    (e.g. rows whose images have 3 and 5 tiles give (2, 5, ...)), as processors pad a batch."""
    shape = [max(sizes) for sizes in zip(*(tensor.shape[1:] for tensor in tensors))]
    padded = []
    for tensor in tensors:
        padding = [amount for size, target in zip(reversed(tensor.shape[1:]), reversed(shape)) for amount in (0, target - size)]
        padded.append(torch.nn.functional.pad(tensor, padding) if any(padding) else tensor)
    return torch.cat(padded)


def _left_pad(rows: Sequence[torch.Tensor], length: int, value: int | bool) -> torch.Tensor:
    out = rows[0].new_full((len(rows), length, *rows[0].shape[1:]), value)
    for index, row in enumerate(rows):
        if row.shape[0]:
            out[index, length - row.shape[0] :] = row
    return out


class _AtPositions:
    """Mixed into a position-wise module (an MLP): while `positions` (rows, columns) is set, it runs only there
    on its (batch_size, sequence_length, hidden_size) input and gives zeros elsewhere. Mixing a class in, rather
    than wrapping the module, keeps its parameter names; rather than replacing its `forward` with a closure, it
    keeps the model free of reference cycles, so that a dropped model is freed at once."""

    positions: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.positions is None:
            return super().forward(hidden)
        rows, columns = self.positions
        return hidden.new_zeros(hidden.shape).index_put((rows, columns), super().forward(hidden[rows, columns]))


def _mix_in_positions(model: torch.nn.Module) -> None:
    """Make the language model's last MLP able to run only at given positions (`LVLM._last_mlp_only_at`).

    Why: in training, only the positions that predict answer tokens reach the loss (`LVLM.answer_logits`), and
    the last block's output anywhere else is thrown away; its MLP (two thirds of the block's products) there is
    ≈ 2 % of a training step's work and activation memory. Elsewhere the MLP runs unchanged.
    """
    mlp = _last_mlp_of(model)
    if mlp is not None and not isinstance(mlp, _AtPositions):
        mlp.__class__ = type(type(mlp).__name__, (_AtPositions, type(mlp)), {})
        mlp.positions = None  # an attribute of its own from the start: compiled code then never sees it appear


def _last_mlp_of(model: torch.nn.Module) -> torch.nn.Module | None:
    layers = getattr(model.get_decoder(), "layers", None)
    mlp = getattr(layers[-1], "mlp", None) if layers else None
    return mlp if isinstance(mlp, torch.nn.Module) else None


class LVLM:
    """A frozen vision-language model, its processor, and its family adapter."""

    def __init__(self, model: torch.nn.Module, processor, name_or_path: str) -> None:
        architecture = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
        self.adapter: FamilyAdapter = adapter_class_for(architecture)(model, processor)
        self.model = model
        self.processor = processor
        self.name_or_path = name_or_path
        self.architecture = architecture
        # The forwards' name for the key-value cache: `cache` in newer transformers, `past_key_values` before.
        self.cache_keyword = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        model.eval()
        model.requires_grad_(False)
        _mix_in_positions(self.model)

    @contextmanager
    def _last_mlp_only_at(self, rows: torch.Tensor, columns: torch.Tensor) -> Iterator[None]:
        """Within: the language model's last MLP runs only at (`rows`, `columns`) (`_mix_in_positions`)."""
        mlp = _last_mlp_of(self.model)
        if not isinstance(mlp, _AtPositions):
            yield
            return
        mlp.positions = (rows, columns)
        try:
            yield
        finally:
            mlp.positions = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def pixel_normalization(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The image processor's per-channel mean and std (3,): pixel_values = (colours - mean) / std."""
        image_processor = getattr(self.processor, "image_processor", None)
        mean = getattr(image_processor, "image_mean", None)
        std = getattr(image_processor, "image_std", None)
        if mean is None or std is None:
            raise SectensorError(f"{self.name_or_path}'s image processor has no image_mean/image_std")
        return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)

    @property
    def tokenizer(self):
        return self.adapter.tokenizer

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    # ---- encoding ---------------------------------------------------------------------------------
    def encode(
        self,
        images: Sequence[Image.Image | None],
        prompts: Sequence[str],
        answers: Sequence[str | None] | None = None,
        virtual_tokens: int = 0,
        protect: Sequence[bool] | None = None,
        placement: str = "before_text",
    ) -> Batch:
        """Encode rows into one left-padded batch.

        `answers` (training) are appended after the prompt and marked in `target_mask`.
        `virtual_tokens` δt slots are reserved at `placement` in the rows where `protect` is True (all by default).
        """
        if len(images) != len(prompts):
            raise SectensorError(f"got {len(images)} images for {len(prompts)} prompts; give one (or None) per prompt")
        protect = [True] * len(prompts) if protect is None else list(protect)
        answers = [None] * len(prompts) if answers is None else list(answers)
        rows: list[RowEncoding] = []
        for image, prompt, answer, protected in zip(images, prompts, answers, protect):
            if not prompt or not prompt.strip():
                raise PromptError("the prompt is empty; write a question or instruction")
            row = self.adapter.encode(
                image.convert("RGB") if image is not None else None, prompt, virtual_tokens if protected else 0,
                placement,
            )
            if answer is not None:
                row = _with_answer(row, self.adapter.encode_answer(answer))
            rows.append(row)
        return self.collate(rows)

    def collate(self, rows: list[RowEncoding]) -> Batch:
        """Left-pad encoded rows into one batch (rows can be encoded once and batched many times, as training does)."""
        length = max(row.input_ids.shape[0] for row in rows)
        limit = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        if limit is not None and length > limit:
            raise PromptError(f"the input is {length} tokens long; this model takes at most {limit}")
        pad_id = self.adapter.placeholder_token_id

        def mask_or_empty(row: RowEncoding, name: str) -> torch.Tensor:
            value = getattr(row, name)
            return value if value is not None else torch.zeros(row.input_ids.shape[0], dtype=torch.bool)

        image_fields = {}
        for name in rows[0].image_fields.keys() | {k for row in rows for k in row.image_fields}:
            present = [row.image_fields[name] for row in rows if name in row.image_fields]
            image_fields[name] = _pad_and_concatenate(present)
        image_rows = torch.tensor([index for index, row in enumerate(rows) for _ in range(row.num_images)], dtype=torch.long)
        token_names = {name for row in rows for name in row.token_fields}
        return Batch(
            input_ids=_left_pad([row.input_ids for row in rows], length, pad_id),
            attention_mask=_left_pad([torch.ones_like(row.input_ids) for row in rows], length, 0),
            token_fields={
                name: _left_pad([row.token_fields[name] for row in rows], length, 0) for name in token_names
            },
            image_fields=image_fields,
            image_rows=image_rows,
            virtual_mask=_left_pad([mask_or_empty(row, "virtual_mask") for row in rows], length, False),
            target_mask=_left_pad([mask_or_empty(row, "target_mask") for row in rows], length, False),
        )

    # ---- running ----------------------------------------------------------------------------------
    @contextmanager
    def model_inputs(self, batch: Batch, tensor=None, protect: Sequence[bool] | torch.Tensor | None = None) -> Iterator[dict]:
        """Model keyword arguments for `batch`, with `tensor` applied to the rows where `protect` is True.

        For a textual tensor the δt embeddings are written into the reserved slots by a hook on the
        input embedding layer, active only inside this context.
        """
        batch = batch.to(self.device)
        rows = torch.ones(batch.size, dtype=torch.bool) if protect is None else torch.as_tensor(protect, dtype=torch.bool)
        active = tensor is not None and bool(rows.any())
        if active:
            tensor.check_compatible(self)
        image_fields = batch.image_fields
        if active and tensor.kind == "visual" and batch.image_rows.numel():
            protected_images = rows.to(self.device)[batch.image_rows]
            image_fields = self.adapter.apply_visual(image_fields, tensor.clamped().to(self.device), protected_images)
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, **batch.token_fields}
        inputs.update(self.adapter.model_image_inputs(image_fields, batch.image_rows, batch.input_ids))
        if not (active and tensor.kind == "textual"):
            yield inputs
            return
        with self._virtual_tokens(batch, tensor, rows):
            yield inputs

    @contextmanager
    def _virtual_tokens(self, batch: Batch, tensor, rows: torch.Tensor) -> Iterator[None]:
        mask = batch.virtual_mask.to(self.device) & rows.to(self.device)[:, None]
        expected = int(rows.sum()) * tensor.num_tokens
        if int(mask.sum()) != expected:
            raise SectensorError(
                f"the batch has {int(mask.sum())} textual-tensor slots but the tensor needs {expected}; "
                f"encode it with virtual_tokens={tensor.num_tokens}"
            )

        def insert(module, args, output):
            if output.shape[:2] != mask.shape:  # decoding steps after the prompt
                return output
            values = tensor.embeddings.to(device=output.device, dtype=output.dtype).repeat(int(rows.sum()), 1)
            return output.masked_scatter(mask[..., None], values)

        handle = self.model.get_input_embeddings().register_forward_hook(insert)
        try:
            yield
        finally:
            handle.remove()

    @property
    def image_feature_module(self) -> torch.nn.Module:
        """The module whose output (..., features) is the pictures as the language model reads them."""
        return getattr(self.model, "model", self.model).get_submodule(self.adapter.image_features_module)

    @contextmanager
    def image_feature_noise(self, scale: float, generator: torch.Generator) -> Iterator[None]:
        """Within: each picture feature vector, where the language model reads it, gets Gaussian noise of `scale`
        times its own RMS, drawn from `generator` (on the model's device). Training a tensor under it stands in for
        drawing styles it never sees: pictures of one object in another style reach the language model as nearby,
        not identical, features."""
        def add_noise(module, args, features: torch.Tensor) -> torch.Tensor:
            noise = torch.randn(features.shape, generator=generator, device=features.device, dtype=torch.float32)
            rms = features.detach().float().pow(2).mean(-1, keepdim=True).sqrt()
            return features + (scale * rms * noise).to(features.dtype)

        handle = self.image_feature_module.register_forward_hook(add_noise)
        try:
            yield
        finally:
            handle.remove()

    def answer_logits(self, batch: Batch, tensor=None, protect=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits only where answer tokens are predicted (never over the whole vocabulary at every position).

        Returns logits (num_answer_tokens, vocab_size), labels (num_answer_tokens,) and the row of each.

        Two things make this the fast path for training. Rows are re-padded on the right, so causal attention
        alone keeps every real token from seeing padding: no padding mask is built and SDPA can use its fused
        flash kernel. And with a textual tensor, the tokens before the first δt slot (chat prefix, image tokens)
        cannot depend on δt: they run once without autograd, and only the rest of the sequence, reading their
        key-value cache, is back-propagated through.
        """
        batch = _right_padded(batch)
        target = batch.target_mask.cpu()
        predicting = torch.zeros_like(target)
        predicting[:, :-1] = target[:, 1:]
        split = self._frozen_prefix_length(batch, tensor, protect, predicting)
        # Positions found on the CPU and gathered with index tensors: a boolean mask on the GPU would make the
        # CPU wait for the whole forward before it could queue the rest of the step.
        rows, columns = (index.to(self.device, non_blocking=True) for index in torch.nonzero(predicting, as_tuple=True))
        if split:
            hidden = self._hidden_after_prefix(batch, tensor, split, rows, columns - split)
        else:
            with self.model_inputs(batch, tensor, protect) as inputs, self._last_mlp_only_at(rows, columns):
                inputs.pop("attention_mask")
                hidden = self.model.model(**inputs, use_cache=False).last_hidden_state
        logits = self.model.get_output_embeddings()(hidden[rows, columns - split]).float()
        labels = batch.input_ids.cpu()[target].to(self.device, non_blocking=True)
        return logits, labels, rows

    def _frozen_prefix_length(self, batch: Batch, tensor, protect, predicting: torch.Tensor) -> int:
        """How many leading tokens of every row come before any δt slot, image token excluded; 0 = no split.

        Splitting only pays when gradients flow, and needs every row to carry δt after all of its image tokens.
        """
        if tensor is None or tensor.kind != "textual" or not torch.is_grad_enabled():
            return 0
        if not self.adapter.supports_prefix_cache or (protect is not None and not all(bool(p) for p in protect)):
            return 0
        virtual = batch.virtual_mask
        if virtual is None or not bool(virtual.any(1).all()):
            return 0
        split = int(virtual.int().argmax(1).min())
        image_tokens = self.adapter.image_token_mask(batch.input_ids)
        if image_tokens is None or bool(image_tokens[:, split:].any()) or bool(predicting[:, :split].any()):
            return 0
        return split

    def _hidden_after_prefix(self, batch: Batch, tensor, split: int, rows: torch.Tensor,
                             columns: torch.Tensor) -> torch.Tensor:
        """Last hidden states (batch_size, sequence_length - split, hidden) of the tokens from `split` on, the
        first `split` tokens (no padding: rows are right-padded and longer than `split`) run without autograd;
        complete only at (`rows`, `columns`), counted from `split` (`_last_mlp_only_at`)."""
        from transformers import DynamicCache

        prefix, suffix = batch.columns(0, split), batch.columns(split, None, with_images=False)
        cache = {self.cache_keyword: DynamicCache(config=self.model.config)}
        with torch.no_grad(), self.model_inputs(prefix) as inputs:
            inputs.pop("attention_mask")
            self.model.model(**inputs, **cache, use_cache=True)
        positions = torch.arange(split, batch.input_ids.shape[1], device=self.device)
        with self.model_inputs(suffix, tensor) as inputs, self._last_mlp_only_at(rows, columns):
            inputs.pop("attention_mask")
            return self.model.model(**inputs, **cache, cache_position=positions, use_cache=True).last_hidden_state

    @torch.no_grad()
    def generate(
        self,
        images: Sequence[Image.Image | None],
        prompts: Sequence[str],
        tensor=None,
        protect: Sequence[bool] | None = None,
        max_new_tokens: int = 48,
        streamer=None,
        temperature: float = 0.0,
    ) -> list[str]:
        """Answers for a batch; `tensor` applies to rows where `protect` is True (all by default).

        Greedy unless `temperature` > 0, which samples (each row on its own, so rows may differ by chance)."""
        batch = self.encode(images, prompts, protect=protect, **virtual_slots(tensor))
        tokenizer = self.tokenizer
        if self.adapter.decodes_with_language_model:
            rows = self.decoder.decode(batch, tensor, protect, max_new_tokens, streamer, temperature,
                                       tokenizer.eos_token_id)
            return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in rows]
        sampling = dict(do_sample=True, temperature=temperature, top_k=0) if temperature > 0 else dict(do_sample=False)
        with self.model_inputs(batch, tensor, protect) as inputs:
            output = self.model.generate(
                **inputs,
                **self._decoding_cache(batch.input_ids.shape[1] + max_new_tokens),
                max_new_tokens=max_new_tokens,
                **sampling,
                num_beams=1,
                pad_token_id=self.adapter.placeholder_token_id,
                eos_token_id=tokenizer.eos_token_id,
                streamer=streamer,
            )
        new_tokens = output[:, batch.input_ids.shape[1] :]
        return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    @property
    def decoder(self):
        """The fast decoding loop (`sectensor.decoding.Decoder`), created on first use."""
        if getattr(self, "_decoder", None) is None:
            from .decoding import Decoder

            self._decoder = Decoder(self)
        return self._decoder

    @contextmanager
    def compiled_blocks(self) -> Iterator[None]:
        """Within: the model compiled for training on GPUs with `torch.compile`. Every language-model block on its
        own, with dynamic sequence lengths, so that a new batch length does not recompile and the tensor's hooks and
        the model's top-level code stay eager; the vision tower as one graph where the family allows it, replayed as
        CUDA graphs (one per number of pictures; a training loop calls `torch.compiler.cudagraph_mark_step_begin`
        every step), else block by block. Fusing each block's normalisations, activations and rotary embeddings
        saves memory traffic and activation memory; one graph for the vision tower, replayed, keeps its many small
        kernels from waiting on Python.

        All blocks share one code object, and a pass that fills or reads a key-value cache (δt's frozen prefix and
        the rest of the sequence, `answer_logits`) specialises it on the layer: one compiled version per layer and
        pass. Within, dynamo's recompile limit allows that; past its default of 8, blocks would quietly run eagerly.

        On exit the model runs its own code again, so generation (base answers, evaluation) never meets compiled
        blocks: its prefill would make them compile again, layer by layer, until dynamo's limit turns them eager.
        Compiled code is kept: entering again compiles nothing new.
        """
        import torch._dynamo
        from transformers.modeling_layers import GradientCheckpointingLayer

        name = self.adapter.whole_vision_tower
        vision = getattr(getattr(self.model, "model", self.model), name) if name else None
        whole = set(vision.modules()) if vision is not None else set()
        compiled = []
        if vision is not None and vision._compiled_call_impl is None:
            vision.compile(mode="reduce-overhead")
            compiled.append(vision)
        for module in self.model.modules():
            if isinstance(module, GradientCheckpointingLayer) and module not in whole and module._compiled_call_impl is None:
                module.compile(dynamic=True)
                compiled.append(module)
        layers = self.model.config.get_text_config().num_hidden_layers
        limit = max(torch._dynamo.config.recompile_limit, 2 * layers + 16)  # the cache passes, and the rest
        try:
            with torch._dynamo.config.patch(recompile_limit=limit):
                yield
        finally:
            for module in compiled:
                module._compiled_call_impl = None

    def _decoding_cache(self, length: int) -> dict:
        """On a GPU, a static key-value cache: `generate` then compiles the one-token decoding step (the prompt's
        prefill stays eager, so δt's hook still applies). Lengths are rounded up to a multiple of 256 so that a new
        prompt length rarely costs a new compilation. Elsewhere the default dynamic cache is faster."""
        if self.device.type != "cuda" or not self.adapter.supports_static_cache:
            return {}
        from transformers import StaticCache

        return {"past_key_values": StaticCache(config=self.model.config, max_cache_len=-(-length // 256) * 256)}


def _right_padded(batch: Batch) -> Batch:
    """The same rows with their left padding moved to the end (images and per-image fields unchanged)."""
    lengths = batch.attention_mask.sum(1)
    width = batch.input_ids.shape[1]
    if bool((lengths == width).all()):
        return batch
    index = (torch.arange(width, device=lengths.device)[None] + (width - lengths)[:, None]) % width  # (B, L)

    def roll(value):
        if value is None:
            return None
        gathered = index.view(*index.shape, *([1] * (value.dim() - 2))).expand_as(value)
        return value.gather(1, gathered)

    return Batch(
        input_ids=roll(batch.input_ids), attention_mask=roll(batch.attention_mask),
        token_fields={name: roll(value) for name, value in batch.token_fields.items()},
        image_fields=batch.image_fields, image_rows=batch.image_rows,
        virtual_mask=roll(batch.virtual_mask), target_mask=roll(batch.target_mask),
    )


def _with_answer(row: RowEncoding, answer_ids: torch.Tensor) -> RowEncoding:
    length = row.input_ids.shape[0]
    extra = answer_ids.shape[0]
    target_mask = torch.zeros(length + extra, dtype=torch.bool)
    target_mask[length:] = True
    virtual = row.virtual_mask if row.virtual_mask is not None else torch.zeros(length, dtype=torch.bool)
    return RowEncoding(
        input_ids=torch.cat([row.input_ids, answer_ids]),
        token_fields={
            name: torch.cat([value, value.new_zeros((extra, *value.shape[1:]))]) for name, value in row.token_fields.items()
        },
        image_fields=row.image_fields,
        virtual_mask=torch.cat([virtual, torch.zeros(extra, dtype=torch.bool)]),
        target_mask=target_mask,
    )


def _is_local(name_or_path: str) -> bool:
    return Path(name_or_path).exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1


_JOINED_PROJECTIONS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # siblings reading one input


def _lay_out_weights_for_cpu(model: torch.nn.Module) -> None:
    """Keep every linear layer's weight (out_features, in_features) as a view of an (in_features, out_features)
    contiguous tensor, and the weights of sibling projections that read the same input (q, k and v; gate and up)
    side by side in one (in_features, sum of out_features) tensor. The values do not change.

    Why: on CPUs, MKL multiplies one or two rows (a decoding step, the app's side-by-side pair) by a weight laid out
    this way without repacking it, ≈ 1.3× faster than by the layout checkpoints store, and the decoding step
    (`sectensor.decoding._LlamaStep`) multiplies joined siblings in one product. Larger products run as fast
    either way (docs/benchmarks.md).
    """
    joined = set()
    for module in model.modules():
        for names in _JOINED_PROJECTIONS:
            siblings = [getattr(module, name, None) for name in names]
            if not all(isinstance(linear, torch.nn.Linear) and linear.bias is None for linear in siblings):
                continue
            if len({(linear.in_features, linear.weight.dtype) for linear in siblings}) > 1:
                continue
            together = torch.cat([linear.weight.data.t() for linear in siblings], 1)
            start = 0
            for linear in siblings:
                linear.weight.data = together[:, start : start + linear.out_features].t()
                start += linear.out_features
            joined.update(siblings)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module not in joined:
            module.weight.data = module.weight.data.t().contiguous().t()


def load_lvlm(
    name_or_path: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    revision: str | None = None,
) -> LVLM:
    """Load a supported vision-language model from a local folder or a Hugging Face Hub id.

    Defaults: CUDA with bfloat16 when available, else CPU with float32. The model is frozen.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    name = str(name_or_path)
    if _is_local(name) and not Path(name).expanduser().is_dir():
        raise SectensorError(f"no model folder at {name!r}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    try:
        config = AutoConfig.from_pretrained(name, revision=revision)
        architecture = (getattr(config, "architectures", None) or [type(config).__name__])[0]
        adapter_class_for(architecture)  # fail before loading weights
        model = AutoModelForImageTextToText.from_pretrained(
            name, revision=revision, dtype=dtype, attn_implementation="sdpa"
        ).to(device)
        if device.type == "cpu":
            _lay_out_weights_for_cpu(model)
        processor = AutoProcessor.from_pretrained(name, revision=revision)
    except SectensorError:
        raise
    except ImportError as error:  # e.g. the video processors of Qwen2-VL and SmolVLM need torchvision
        raise SectensorError(f"cannot load {name!r}: {' '.join(str(error).split())}") from error
    except (OSError, ConnectionError) as error:
        if _is_local(name):
            raise SectensorError(f"cannot load the model in {name!r}: {error}") from error
        raise HubUnreachableError(
            f"cannot download {name!r}: the Hugging Face Hub is unreachable "
            f"({'HF_HUB_OFFLINE is set' if os.environ.get('HF_HUB_OFFLINE') else type(error).__name__}) "
            f"and the model is not in the local cache. Connect to the network, or pass a local folder."
        ) from error
    return LVLM(model, processor, name)
