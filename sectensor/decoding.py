"""Decoding a batch token by token: a small loop around one (on GPUs compiled) language-model step.

Why not `model.generate`: at batch 1–2 a 7B model's decoding step is bound by reading its weights once
(≈ 4 ms on an H100), and `generate`'s per-token Python work (input preparation, logits processors, a stopping
check that waits for the GPU) costs about as much again. Here the prompt is prefilled by the full model (image
inputs and δt's hook apply as usual), then every new token is one call of the language model alone:

    prefill   model(prompt, images)           → key-value cache, first token
    step t    decoder(token, position, cache)  → next token     (CUDA graph on GPUs, static cache)

The next step is queued before the previous token is read back, so the GPU never waits for Python. Families
whose decoding needs more than the language model (Qwen2-VL's multimodal positions, Mllama's cross-attention)
set `FamilyAdapter.decodes_with_language_model = False` and use `generate`.
"""

from __future__ import annotations

import torch

from .lvlm import LVLM, Batch

_CACHE_GRANULARITY = 256  # static caches are sized in multiples of this, so new prompt lengths rarely recompile


class Decoder:
    """The per-model state of fast decoding: compiled step and static caches, reused across calls."""

    # Inductor options of the compiled step: CUDA graphs (what mode="reduce-overhead" sets).
    COMPILE_OPTIONS = {"triton.cudagraphs": True}

    def __init__(self, lvlm: LVLM, compile_options: dict | None = None) -> None:
        self.lvlm = lvlm
        self.compiled = lvlm.device.type == "cuda" and lvlm.adapter.supports_static_cache
        self._caches: dict[tuple[int, int], object] = {}
        options = self.COMPILE_OPTIONS if compile_options is None else compile_options
        self._step = torch.compile(self._forward_step, options=options, dynamic=False) if self.compiled else self._forward_step

    def _forward_step(self, input_ids, position_ids, cache_position, attention_mask, cache) -> torch.Tensor:
        """Logits (batch_size, vocab_size) of the token after `input_ids` (batch_size, 1)."""
        hidden = self.lvlm.model.get_decoder()(
            input_ids=input_ids, position_ids=position_ids, cache_position=cache_position,
            attention_mask=attention_mask, use_cache=True, **{self.lvlm._cache_argument: cache},
        ).last_hidden_state
        return self.lvlm.model.get_output_embeddings()(hidden[:, -1]).float()

    def _cache(self, batch_size: int, length: int):
        from transformers import DynamicCache, StaticCache

        config = self.lvlm.model.config
        if not self.compiled:
            return DynamicCache(config=config)
        size = -(-length // _CACHE_GRANULARITY) * _CACHE_GRANULARITY
        key = (batch_size, size)
        if key not in self._caches:  # one cache per shape: the CUDA graph keeps its memory addresses
            self._caches[key] = StaticCache(config=config, max_cache_len=size)
        cache = self._caches[key]
        cache.reset()
        return cache

    @torch.no_grad()
    def decode(self, batch: Batch, tensor=None, protect=None, max_new_tokens: int = 48, streamer=None,
               temperature: float = 0.0, eos_token_id: int | None = None) -> list[list[int]]:
        """New token ids of every row, up to and without its end-of-sequence token.

        `streamer.put` receives the prompt ids first, then each step's tokens (batch_size,), as with `generate`.
        Greedy unless `temperature` > 0, which samples from the full distribution.
        """
        lvlm = self.lvlm
        batch_size, prompt_length = batch.input_ids.shape
        cache = self._cache(batch_size, prompt_length + max_new_tokens)
        device = lvlm.device
        if streamer is not None:
            streamer.put(batch.input_ids)
        with lvlm.model_inputs(batch, tensor, protect) as inputs:
            prompt_mask = inputs["attention_mask"]
            positions = (prompt_mask.cumsum(-1) - 1).masked_fill(prompt_mask == 0, 1)  # as generate numbers rows
            logits = lvlm.model(
                **inputs, position_ids=positions, cache_position=torch.arange(prompt_length, device=device),
                use_cache=True, logits_to_keep=1, **{lvlm._cache_argument: cache},
            ).logits[:, -1].float()
        full_length = getattr(cache, "max_cache_len", prompt_length + max_new_tokens)
        attention_mask = torch.cat([prompt_mask, prompt_mask.new_ones(batch_size, full_length - prompt_length)], dim=1)
        next_position = prompt_mask.sum(-1, keepdim=True)  # (batch_size, 1)
        cache_positions = torch.arange(prompt_length, prompt_length + max_new_tokens, device=device)

        def choose(step_logits: torch.Tensor) -> torch.Tensor:
            if temperature > 0:
                return torch.multinomial(torch.softmax(step_logits / temperature, dim=-1), 1)[:, 0]
            return step_logits.argmax(-1)

        tokens = choose(logits)
        rows: list[list[int]] = [[] for _ in range(batch_size)]
        finished = torch.zeros(batch_size, dtype=torch.bool)
        for step in range(max_new_tokens):
            upcoming = None
            if step + 1 < max_new_tokens:  # queue the next step before reading this token back
                length = prompt_length + step + 1
                mask = attention_mask if self.compiled else attention_mask[:, :length]
                if self.compiled:
                    torch.compiler.cudagraph_mark_step_begin()
                step_logits = self._step(tokens[:, None], next_position + step, cache_positions[step : step + 1],
                                         mask, cache)
                upcoming = choose(step_logits.clone() if self.compiled else step_logits)
            host = tokens.cpu()
            if streamer is not None:
                streamer.put(host)
            for row, token_id in enumerate(host.tolist()):
                if not finished[row]:
                    if token_id == eos_token_id:
                        finished[row] = True
                    else:
                        rows[row].append(token_id)
            if bool(finished.all()) or upcoming is None:
                break
            tokens = upcoming
        if streamer is not None:
            streamer.end()
        return rows
