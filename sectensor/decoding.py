"""Decoding a batch token by token: a small loop around one language-model step, on GPUs a CUDA graph.

Why not `model.generate`: at batch 1–2 a 7B model's decoding step is bound by reading its weights once
(≈ 4 ms on an H100), and the Python work around each step (input preparation, logits processors, stopping
checks, guard checks of a compiled function) costs milliseconds more. Here the prompt is prefilled by the full
model (image inputs and δt's hook apply as usual), then every new token is one call of the language model alone:

    prefill   model(prompt, images)            → key-value cache, logits of the first new token
    step      decoder(token, position, cache)  → logits of the next token

Where the rows begin alike (the app's base row and its δt-protected twin), the prefill runs their shared tokens
once: the longest row whole, then each other row's rest on its own, unpadded, reading the shared tokens' keys and
values from the longest row's (`_shared_prefix_length`). The pictures lie in the shared part (δt after them) or
each in its own row's rest (δt before them).

On GPUs the step is compiled once and captured in a CUDA graph per (batch size, cache size) with its own input
buffers; the graph also advances the positions, so a step costs the CPU one token copy and one replay, and the
next step is queued before the previous token is read back, so the GPU does not wait for Python. The step's
linear layers run `sectensor.kernels`, which reads each weight once for all rows, so a side-by-side pair costs
little more than one answer. On CPUs the step runs eagerly; for Llama language models it is written out
(`_LlamaStep`), bit-identical to transformers' step, without most of its per-step Python. Families whose
decoding needs more than the language model (Qwen2-VL's multimodal positions, Mllama's cross-attention) set
`FamilyAdapter.decodes_with_language_model = False` and use `generate`.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import torch

from . import kernels
from .lvlm import LVLM, Batch

# A new static cache is sized to the next multiple of 64 tokens: every step's attention reads the whole cache, so a
# coarser size costs time on every token (a 7B δt pair needing 830 tokens read 1024 when sizes were multiples of 256).
# A kept step of the same batch size up to 256 tokens larger is reused instead, so prompts a little shorter than the
# last one do not capture a new graph.
_CACHE_GRANULARITY, _CACHE_REUSE_SLACK = 64, 256
# Static caches (and graphs) kept alive: always the 2 most recently used, older ones while all caches together fit
# this share of the device's memory, at most 8. A 7B model's cache takes 17 GB for 64 rows of 512 tokens, 0.8 GB for
# 2 rows of 768: an evaluation keeps two large ones, and a process taking turns between a few small shapes (one
# answer, side by side) keeps them all instead of capturing each one again on its turn (docs/benchmarks.md).
_KEPT_STATIC_STEPS, _MAX_STATIC_STEPS, _STATIC_CACHE_SHARE = 2, 8, 0.05
_MAX_SHARING_ROWS = 4  # each row's rest is a pass of its own: past a few rows, their fixed costs outweigh the savings


class _StaticStep:
    """One decoding step over a static cache (so one batch size), with its own input buffers; on GPUs captured
    as a CUDA graph.

    Buffers: input_ids (B, 1), position_ids (B, 1), cache_position (1,), attention_mask (B, cache_size), logits
    (B, vocab_size). A call computes the logits and advances both positions by one.
    """

    def __init__(self, step, cache, batch_size: int, cache_size: int, device: torch.device, eager_step=None) -> None:
        self.step, self.cache, self.eager_step = step, cache, eager_step or step
        self.input_ids = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.position_ids = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.cache_position = torch.zeros(1, dtype=torch.long, device=device)
        self.attention_mask = torch.ones(batch_size, cache_size, dtype=torch.long, device=device)
        self.graph = None
        if device.type == "cuda":
            self._capture()

    def _arguments(self) -> tuple:
        return self.input_ids, self.position_ids, self.cache_position, self.attention_mask, self.cache

    def _advance(self) -> torch.Tensor:
        logits = self.step(*self._arguments())
        self.position_ids += 1
        self.cache_position += 1
        return logits

    def _capture(self) -> None:
        # Warm-up off the main stream, as CUDA graph capture requires: one eager step allocates the cache's
        # tensors outside the compiled code (they must outlive it), then the compiled step compiles and sets up
        # its library workspaces. The writes go into the still empty cache, which is emptied again before use.
        device = self.input_ids.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            self.eager_step(*self._arguments())
            for _ in range(2):
                self.step(*self._arguments())
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._advance()
        # Self-check: the replayed graph must give the eager step's logits for the same inputs.
        expected = self.eager_step(*self._arguments()).clone()
        self.graph.replay()
        self.position_ids.zero_()
        self.cache_position.zero_()
        error = float((self.logits - expected).abs().max())
        if not error <= 0.05 * float(expected.abs().max()) + 1e-3:
            raise RuntimeError(f"the captured step's logits differ from the eager step's by up to {error:.3g}")

    def start(self, attention_mask: torch.Tensor, position_ids: torch.Tensor, cache_position: int) -> None:
        width = attention_mask.shape[1]
        self.attention_mask[:, :width].copy_(attention_mask)
        self.attention_mask[:, width:] = 1
        self.position_ids.copy_(position_ids)
        self.cache_position.fill_(cache_position)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        self.input_ids.copy_(tokens[:, None])
        if self.graph is None:
            return self._advance()
        self.graph.replay()
        return self.logits


class _DynamicStep:
    """One decoding step over a dynamic cache (CPUs, or where a graph cannot be captured): the attention mask
    (batch_size, prompt_length + steps so far) grows with the cache."""

    def __init__(self, step, cache, prompt_mask: torch.Tensor, max_new_tokens: int) -> None:
        self.step, self.cache = step, cache
        self.attention_mask = torch.cat([prompt_mask, prompt_mask.new_ones(prompt_mask.shape[0], max_new_tokens)], 1)
        self.prompt_length = prompt_mask.shape[1]
        self.next_position = prompt_mask.sum(-1, keepdim=True)  # (batch_size, 1)
        self.done = 0

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        position = self.prompt_length + self.done  # of the token fed in
        logits = self.step(tokens[:, None], self.next_position + self.done,
                           torch.tensor([position], device=tokens.device), self.attention_mask[:, : position + 1],
                           self.cache)
        self.done += 1
        return logits


def _joined_weight(linears) -> torch.Tensor | None:
    """The (in_features, sum of out_features) tensor whose column blocks are these layers' weights, transposed, if
    they are stored side by side that way (`sectensor.lvlm.load_lvlm` on CPUs); else None."""
    first = linears[0].weight
    total = sum(linear.out_features for linear in linears)
    offset = first.storage_offset()
    for linear in linears:
        weight = linear.weight
        if (linear.bias is not None or weight.stride() != (1, total) or weight.storage_offset() != offset
                or weight.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()):
            return None
        offset += linear.out_features
    return first.as_strided((first.shape[1], total), (total, 1), first.storage_offset())


def _projections(hidden: torch.Tensor, linears, joined: torch.Tensor | None) -> list[torch.Tensor]:
    """Each linear layer applied to `hidden`: one product over the joined weight where there is one."""
    if joined is None:
        return [linear(hidden) for linear in linears]
    return list((hidden @ joined).split([linear.out_features for linear in linears], -1))


class _LlamaStep:
    """One decoding step of a Llama language model (LLaVA's, SmolVLM's) written out over key-value buffers sized
    for the whole answer; used where the step is not a CUDA graph, as on CPUs.

    Why: on a CPU, much of transformers' step for a small model (the organism: 4 layers × 384) that is not matrix
    products is Python around them: module wrappers, a mask built and the outputs captured every step, a cache
    joined anew every step. This step runs the same operations on the same values in the same order, and the same
    attention function, so its logits are bit-identical to transformers' (tests/test_generation.py); q, k and v
    (and gate and up) are one product where `load_lvlm` stored their weights side by side, and queries and keys
    are rotated together. Timings: docs/benchmarks.md. Rows keep their own positions and padding, as in
    `_DynamicStep`.
    """

    def __init__(self, language_model, lm_head, cache, prompt_mask: torch.Tensor, max_new_tokens: int) -> None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.models.llama.modeling_llama import rotate_half

        self.model, self.lm_head = language_model, lm_head
        self.attend, self.rotate_half = sdpa_attention_forward, rotate_half
        self.layers = language_model.layers[: language_model.config.num_hidden_layers]
        self.joined = [(_joined_weight([layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]),
                        _joined_weight([layer.mlp.gate_proj, layer.mlp.up_proj])) for layer in self.layers]
        batch_size, self.length = prompt_mask.shape
        self.done = 0
        # Every step's rotation, computed at once: (batch_size, max_new_tokens, head_dim) each. Each angle is one
        # product (position × frequency), so the values are those of one step at a time.
        positions = prompt_mask.sum(-1, keepdim=True) + torch.arange(max_new_tokens, device=prompt_mask.device)
        self.cos, self.sin = language_model.rotary_emb(language_model.embed_tokens.weight[:1], positions)
        self.keys, self.values = [], []
        for layer in cache.layers:  # the prefill's keys and values: (batch_size, kv_heads, prompt_length, head_dim)
            for prompt, buffers in ((layer.keys, self.keys), (layer.values, self.values)):
                buffer = prompt.new_empty(*prompt.shape[:2], self.length + max_new_tokens, prompt.shape[-1])
                buffer[:, :, : self.length] = prompt
                buffers.append(buffer)
        # As transformers masks a one-token query: no mask without padding, else True where a row may attend.
        self.mask = None
        if not bool(prompt_mask.all()):
            self.mask = torch.ones(batch_size, 1, 1, self.length + max_new_tokens, dtype=torch.bool,
                                   device=prompt_mask.device)
            self.mask[:, 0, 0, : self.length] = prompt_mask.bool()

    @staticmethod
    def fits(language_model) -> bool:
        from transformers.models.llama.modeling_llama import LlamaModel

        # Rotations whose frequencies follow the longest position so far (dynamic, longrope) cannot be computed
        # for the whole answer at once, as the step does.
        rope_type = getattr(language_model.rotary_emb, "rope_type", "default")
        return (type(language_model) is LlamaModel and language_model.config._attn_implementation == "sdpa"
                and "dynamic" not in rope_type and rope_type != "longrope")

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        model, at = self.model, self.length + self.done  # `at`: the cache slot of the token fed in
        hidden = model.embed_tokens(tokens[:, None])  # (batch_size, 1, hidden_size)
        cos, sin = self.cos[:, None, self.done : self.done + 1], self.sin[:, None, self.done : self.done + 1]
        mask = self.mask[..., : at + 1] if self.mask is not None else None
        for layer, keys, values, (qkv, gate_up) in zip(self.layers, self.keys, self.values, self.joined):
            attention, mlp = layer.self_attn, layer.mlp
            normed = layer.input_layernorm(hidden)
            query, key, value = _projections(normed, (attention.q_proj, attention.k_proj, attention.v_proj), qkv)
            heads = query.shape[-1] // attention.head_dim
            # Queries and keys rotated together: (batch_size, heads + kv_heads, 1, head_dim).
            rotating = torch.cat((query, key), -1).view(*normed.shape[:-1], -1, attention.head_dim).transpose(1, 2)
            rotated = rotating * cos + self.rotate_half(rotating) * sin
            keys[:, :, at] = rotated[:, heads:, 0]
            values[:, :, at] = value.view(*normed.shape[:-1], -1, attention.head_dim)[:, 0]
            attended, _ = self.attend(attention, rotated[:, :heads], keys[:, :, : at + 1], values[:, :, : at + 1],
                                      mask, dropout=0.0, scaling=attention.scaling)
            hidden = hidden + attention.o_proj(attended.reshape(*normed.shape[:-1], -1))
            gate, up = _projections(layer.post_attention_layernorm(hidden), (mlp.gate_proj, mlp.up_proj), gate_up)
            hidden = hidden + mlp.down_proj(mlp.act_fn(gate) * up)
        self.done += 1
        return self.lm_head(model.norm(hidden)[:, -1]).float()


def _shared_prefix_length(lvlm: LVLM, batch: Batch, tensor, protect) -> int:
    """How many leading tokens (padding aside) all rows have in common before anything a tensor changes; 0 for
    batches of more than `_MAX_SHARING_ROWS` rows, or where prefilling the shared tokens once and each row's rest
    unpadded would not save at least a quarter of the prefill's work. Pictures must lie wholly in the shared part
    (then the same in every row, and no δv) or wholly in the rows' rests (each row's rest is prefilled with its own).

    The app's side-by-side rows with δt are one: the base row and the protected row share the chat prefix and, with
    δt after the picture, the picture's tokens (66 of the organism's 71 and 175 tokens); with δt before the picture
    they share the chat prefix only, and the base row's rest runs without the δt row's 100 tokens of padding.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    size, length = batch.input_ids.shape
    if not 2 <= size <= _MAX_SHARING_ROWS or not lvlm.adapter.supports_prefix_cache:
        return 0
    if any(type(layer) is not DynamicLayer for layer in DynamicCache(config=lvlm.model.config).layers):
        return 0  # a sliding-window layer keeps only the last keys: its cache cannot be copied into the batch's
    lengths = batch.attention_mask.sum(1).tolist()

    def aligned(value: torch.Tensor, width: int) -> torch.Tensor:  # each row's first `width` real columns
        return torch.stack([value[row, length - count : length - count + width] for row, count in enumerate(lengths)])

    width = min(lengths) - 1  # every row keeps at least its last token for its own pass
    tokens = aligned(batch.input_ids, width)
    differing = (tokens != tokens[:1]).any(0).nonzero()
    shared = int(differing[0]) if len(differing) else width
    if batch.virtual_mask is not None:
        slots = aligned(batch.virtual_mask, width).any(0).nonzero()
        shared = min(shared, int(slots[0])) if len(slots) else shared
    if shared == 0:
        return 0
    if batch.image_rows.numel():
        image_tokens = lvlm.adapter.image_token_mask(batch.input_ids)
        if image_tokens is None:
            return 0
        in_shared = int(aligned(image_tokens, shared).sum(1)[0])  # the same in every row: their tokens agree there
        if in_shared:  # the pictures lie wholly in the shared part, are the same, and no δv changes them
            if int(image_tokens.sum()) != size * in_shared or (tensor is not None and tensor.kind == "visual"):
                return 0
            first = batch.row(0).image_fields
            if not all(torch.equal(first[name], value) for row in range(1, size)
                       for name, value in batch.row(row).image_fields.items()):
                return 0
    separately = shared + sum(count - shared for count in lengths)
    return shared if separately <= 0.75 * size * length else 0


def _dynamic_cache(config, keys: list[torch.Tensor], values: list[torch.Tensor]):
    """A dynamic key-value cache holding these keys and values, one (batch_size, kv_heads, length, head_dim) a layer;
    what the model adds later is joined to copies, so the given tensors stay as they are."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    for index, (key, value) in enumerate(zip(keys, values)):
        cache.update(key, value, index)
    return cache


class Decoder:
    """The per-model state of fast decoding: the compiled step, static caches and their graphs, reused across calls."""

    def __init__(self, lvlm: LVLM, compile_options: dict | None = None, static: bool | None = None,
                 small_batch_kernels: bool = True, written_out_step: bool = True, shared_prefix: bool = True) -> None:
        """`static` (default: on GPUs, where the family allows it) decodes over a static cache, on GPUs compiled
        and captured in a CUDA graph; otherwise eagerly (faster on CPUs), through `_LlamaStep` for Llama language
        models and over transformers' dynamic cache for the others.
        `small_batch_kernels`: the step's linear layers run `sectensor.kernels` where it applies (GPUs, Triton).
        `written_out_step`: eager steps of a Llama language model run `_LlamaStep` (off: transformers' own step).
        `shared_prefix`: outside static caches, the tokens all rows begin with are prefilled once
        (`_shared_prefix_length`; off: the whole padded batch in one pass). Not with static caches (GPUs): there the
        eager prefill is bound by launching kernels, and sharing runs three passes instead of one (measured on an
        H100, 7B δt pair: 0.199 s against 0.089 s; docs/benchmarks.md)."""
        self.lvlm = lvlm
        on_gpu = lvlm.device.type == "cuda"
        self.small_batch_kernels = small_batch_kernels and on_gpu and kernels.available()  # decided once, not per step
        self.written_out_step = written_out_step and _LlamaStep.fits(lvlm.model.get_decoder())
        self.shared_prefix = shared_prefix
        self.static = (on_gpu and lvlm.adapter.supports_static_cache) if static is None else static
        self._static_steps: OrderedDict[tuple[int, int], _StaticStep] = OrderedDict()  # most recently used last
        self.captures = 0  # static steps made so far (on GPUs, each a compilation and a CUDA graph capture)
        # Compiled for static shapes (a new batch or cache size recompiles, as it captures a new graph anyway).
        compiled = self.static and on_gpu
        self._step = torch.compile(self._forward_step, options=compile_options or {}, dynamic=False) if compiled \
            else self._forward_step

    def _forward_step(self, input_ids, position_ids, cache_position, attention_mask, cache) -> torch.Tensor:
        """Logits (batch_size, vocab_size) of the token after `input_ids` (batch_size, 1)."""
        with kernels.small_batch_linears(self.small_batch_kernels):
            hidden = self.lvlm.model.get_decoder()(
                input_ids=input_ids, position_ids=position_ids, cache_position=cache_position,
                attention_mask=attention_mask, use_cache=True, **{self.lvlm.cache_keyword: cache},
            ).last_hidden_state
            return self.lvlm.model.get_output_embeddings()(hidden[:, -1]).float()

    def _static_step(self, batch_size: int, length: int) -> _StaticStep | None:
        """The step (with its emptied static cache) for this shape; None if capturing its CUDA graph fails."""
        from transformers import StaticCache

        reusable = [size for rows, size in self._static_steps if rows == batch_size
                    and length <= size <= length + _CACHE_REUSE_SLACK]
        size = min(reusable, default=-(-length // _CACHE_GRANULARITY) * _CACHE_GRANULARITY)
        key = (batch_size, size)
        if key not in self._static_steps:
            self._make_room_for_static_step(batch_size * size)
            cache = StaticCache(config=self.lvlm.model.config, max_cache_len=size)
            try:
                self._static_steps[key] = _StaticStep(self._step, cache, batch_size, size, self.lvlm.device,
                                                      eager_step=self._forward_step)
                self.captures += 1
            except RuntimeError as error:  # an operation that cannot run inside a CUDA graph, or a failed self-check
                warnings.warn(f"decoding over a dynamic cache: capturing the step failed ({error})")
                self.static, self._step = False, self._forward_step
                return None
        self._static_steps.move_to_end(key)
        step = self._static_steps[key]
        step.cache.reset()
        return step

    def release(self) -> None:
        """Drop the static steps: their caches and captured graphs. After a batch of base answers a 7B model's two
        kept caches can hold tens of GB (48 rows of 768 tokens: 19 GB each) that training needs; the next decode
        makes its step again."""
        self._static_steps.clear()

    def _make_room_for_static_step(self, slots: int) -> None:
        """Before a new step's cache of `slots` (rows × tokens) is made: drop the least recently used steps past
        the newest one while the kept caches and the new one would exceed their share of the device's memory, or
        the steps would be more than 8."""

        def cache_bytes(step: _StaticStep) -> int:
            return sum(tensor.numel() * tensor.element_size() for layer in step.cache.layers
                       for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None))
                       if isinstance(tensor, torch.Tensor))

        device = self.lvlm.device
        memory = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 2**33  # CPU: tests
        budget = _STATIC_CACHE_SHARE * memory
        sizes = {key: cache_bytes(step) for key, step in self._static_steps.items()}
        per_slot = max((size / (rows * tokens) for (rows, tokens), size in sizes.items()), default=0.0)
        kept = sum(sizes.values()) + per_slot * slots
        while len(self._static_steps) >= _KEPT_STATIC_STEPS and (
                kept > budget or len(self._static_steps) >= _MAX_STATIC_STEPS):
            key, _ = self._static_steps.popitem(last=False)
            kept -= sizes[key]

    def _prefill_sharing(self, batch: Batch, tensor, protect, shared: int) -> tuple[torch.Tensor, object, torch.Tensor]:
        """Prefill the longest row whole, with its pictures, then each other row's rest on its own, unpadded (with
        its pictures if they lie there), reading a copy of the longest row's first `shared` keys and values: the
        shared tokens run once, in one pass a row. Returns the first new token's logits (batch_size, vocab_size),
        the batch's cache and its mask (batch_size, shared + longest rest), each row's rest left-padded after the
        shared part: [shared tokens | padding | rest of the row]."""
        from transformers import DynamicCache

        lvlm, config = self.lvlm, self.lvlm.model.config
        size, length = batch.input_ids.shape
        lengths = batch.attention_mask.sum(1).tolist()
        rest = max(lengths) - shared

        def prefilled(part: Batch, cache, tensor=None, protect=None) -> torch.Tensor:
            """The logits (1, vocab_size) after one row's `part`, whose keys and values join `cache`."""
            with lvlm.model_inputs(part, tensor, protect) as inputs:
                inputs.pop("attention_mask")  # no padding in a single row's part
                start = cache.get_seq_length()
                positions = torch.arange(start, start + part.input_ids.shape[1], device=lvlm.device)
                return lvlm.model(**inputs, cache_position=positions, use_cache=True, logits_to_keep=1,
                                  **{lvlm.cache_keyword: cache}).logits[:, -1].float()

        def protected(row: int) -> list[bool] | None:
            return None if protect is None else [protect[row]]

        image_tokens = lvlm.adapter.image_token_mask(batch.input_ids)  # (batch_size, length), or None
        # The longest row whole, with its pictures: its first `shared` keys and values are every row's.
        lead = max(range(size), key=lambda row: lengths[row])
        lead_cache = DynamicCache(config=config)
        lead_logits = prefilled(batch.row(lead).columns(length - lengths[lead], None), lead_cache, tensor,
                                protected(lead))
        keys = [layer.keys.new_zeros(size, layer.keys.shape[1], shared + rest, layer.keys.shape[-1])
                for layer in lead_cache.layers]
        values = [torch.zeros_like(buffer) for buffer in keys]
        logits = []
        for row, count in enumerate(lengths):
            if row == lead:
                cache = lead_cache
                logits.append(lead_logits)
            else:
                cache = _dynamic_cache(config, [layer.keys[:, :, :shared] for layer in lead_cache.layers],
                                       [layer.values[:, :, :shared] for layer in lead_cache.layers])
                # The row's pictures come along if they lie in its rest (a text-only row has none to bring).
                with_images = image_tokens is not None and bool(image_tokens[row, length - count + shared:].any())
                rest_of_row = batch.row(row).columns(length - count + shared, None, with_images=with_images)
                logits.append(prefilled(rest_of_row, cache, tensor, protected(row)))
            start = shared + rest - (count - shared)  # where this row's rest begins in the batch's cache
            for layer, key_buffer, value_buffer in zip(cache.layers, keys, values):
                for buffer, computed in ((key_buffer, layer.keys), (value_buffer, layer.values)):
                    buffer[row, :, :shared] = computed[0, :, :shared]
                    buffer[row, :, start:] = computed[0, :, shared:]
        cache = _dynamic_cache(config, keys, values)
        padding = rest - (torch.tensor(lengths, device=lvlm.device)[:, None] - shared)  # (batch_size, 1)
        columns = torch.arange(-shared, rest, device=lvlm.device)  # negative in the shared part
        mask = (columns < 0) | (columns >= padding)  # (batch_size, shared + rest)
        return torch.cat(logits), cache, mask.to(batch.attention_mask.dtype)

    @torch.no_grad()
    def decode(self, batch: Batch, tensor=None, protect=None, max_new_tokens: int = 48, streamer=None,
               temperature: float = 0.0, eos_token_id: int | None = None) -> list[list[int]]:
        """New token ids of every row, up to and without its end-of-sequence token.

        `streamer.put` receives the prompt ids first, then each step's tokens (batch_size,), as with `generate`.
        Greedy unless `temperature` > 0, which samples from the full distribution.
        """
        from transformers import DynamicCache

        lvlm = self.lvlm
        device = lvlm.device
        batch_size, prompt_length = batch.input_ids.shape
        static = self._static_step(batch_size, prompt_length + max_new_tokens) if self.static else None
        cache = static.cache if static is not None else DynamicCache(config=lvlm.model.config)
        if streamer is not None:
            streamer.put(batch.input_ids)
        sharing = self.shared_prefix and static is None
        shared = _shared_prefix_length(lvlm, batch, tensor, protect) if sharing else 0
        if shared:
            logits, cache, prompt_mask = self._prefill_sharing(batch, tensor, protect, shared)
        else:
            with lvlm.model_inputs(batch, tensor, protect) as inputs:
                prompt_mask = inputs["attention_mask"]
                positions = (prompt_mask.cumsum(-1) - 1).masked_fill(prompt_mask == 0, 1)  # as generate numbers rows
                logits = lvlm.model(
                    **inputs, position_ids=positions, cache_position=torch.arange(prompt_length, device=device),
                    use_cache=True, logits_to_keep=1, **{lvlm.cache_keyword: cache},
                ).logits[:, -1].float()
        if static is not None:
            static.start(prompt_mask, prompt_mask.sum(-1, keepdim=True), prompt_length)
            step = static
        elif self.written_out_step:
            step = _LlamaStep(lvlm.model.get_decoder(), lvlm.model.get_output_embeddings(), cache, prompt_mask,
                              max_new_tokens)
        else:
            step = _DynamicStep(self._step, cache, prompt_mask, max_new_tokens)
        # On a GPU the next step is queued before this token is read back, so the GPU does not wait for Python
        # (at the price of one step computed in vain at the end); on a CPU that would only cost time.
        ahead = device.type == "cuda"

        def choose(step_logits: torch.Tensor) -> torch.Tensor:
            if temperature > 0:
                return torch.multinomial(torch.softmax(step_logits / temperature, dim=-1), 1)[:, 0]
            return step_logits.argmax(-1)

        tokens = choose(logits)
        rows: list[list[int]] = [[] for _ in range(batch_size)]
        finished = torch.zeros(batch_size, dtype=torch.bool)
        for index in range(max_new_tokens):
            more = index + 1 < max_new_tokens
            upcoming = choose(step(tokens)) if ahead and more else None
            host = tokens.cpu()
            if streamer is not None:
                streamer.put(host)
            for row, token_id in enumerate(host.tolist()):
                if not finished[row]:
                    if token_id == eos_token_id:
                        finished[row] = True
                    else:
                        rows[row].append(token_id)
            if bool(finished.all()) or not more:
                break
            tokens = upcoming if ahead else choose(step(tokens))
        if streamer is not None:
            streamer.end()
        return rows
