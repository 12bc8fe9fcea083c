"""Streaming answers from one batched generation, and fitting prompts into the model's context.

`TextIteratorStreamer` from transformers handles one row only. The app shows the base model and the protected
model side by side from a *single* batched generation, `LVLM.generate` (one copy of the model, one batch with a
protected and an unprotected row), so `BatchTextStreamer` receives every row's new token at each step and hands
out the text of all rows as it grows:

    for base, protected in stream_side_by_side(lvlm, image, "What is this?", tensor):
        print(base, "|", protected)
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from transformers.generation.streamers import BaseStreamer

from .errors import PromptError
from .lvlm import LVLM

_END = object()


class BatchTextStreamer(BaseStreamer):
    """Collects the new tokens of every row of a batched generation and queues each row's decoded text.

    The decoding loop (`sectensor.decoding`) and `model.generate` call `put` first with the prompt ids
    (batch_size, sequence_length), which are skipped, then once per step with the new tokens (batch_size,).
    Tokens after a row's end-of-sequence token are padding and ignored. Iterating yields a tuple with the text
    of every row after each step, until `end` is called.
    """

    def __init__(self, tokenizer, batch_size: int, eos_token_id: int | None, timeout: float | None = None) -> None:
        self.tokenizer = tokenizer
        self.eos_token_id = eos_token_id
        self.timeout = timeout
        self.tokens: list[list[int]] = [[] for _ in range(batch_size)]
        self.finished = [False] * batch_size
        self._prompt_seen = False
        self._queue: queue.Queue = queue.Queue()

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        new = value.reshape(len(self.tokens), -1)  # (batch_size, 1)
        for row, token_ids in enumerate(new.tolist()):
            for token_id in token_ids:
                if self.finished[row]:
                    break
                if token_id == self.eos_token_id:
                    self.finished[row] = True
                else:
                    self.tokens[row].append(token_id)
        self._queue.put(self.texts())

    def texts(self) -> tuple[str, ...]:
        return tuple(self.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in self.tokens)

    def end(self) -> None:
        self._queue.put(_END)

    def __iter__(self) -> Iterator[tuple[str, ...]]:
        while True:
            item = self._queue.get(timeout=self.timeout)
            if item is _END:
                return
            # Several steps may have queued while the consumer was busy: only the newest text matters.
            while not self._queue.empty():
                newer = self._queue.get_nowait()
                if newer is _END:
                    yield item
                    return
                item = newer
            yield item


def stream_answers(
    lvlm: LVLM,
    images: Sequence[Image.Image | None],
    prompts: Sequence[str],
    tensor=None,
    protect: Sequence[bool] | None = None,
    max_new_tokens: int = 48,
    timeout: float | None = 600.0,
    temperature: float = 0.0,
) -> Iterator[tuple[str, ...]]:
    """Answers for a batch (greedy unless `temperature` > 0), as a tuple of every row's text after each step.

    `LVLM.generate` runs in a worker thread; an error there is raised here. The last tuple yielded is the final answers
    exactly as `LVLM.generate` returns them.
    """
    streamer = BatchTextStreamer(lvlm.tokenizer, len(prompts), lvlm.tokenizer.eos_token_id, timeout=timeout)
    outcome: dict[str, object] = {}

    def work() -> None:
        try:
            outcome["answers"] = lvlm.generate(
                images, prompts, tensor=tensor, protect=protect, max_new_tokens=max_new_tokens, streamer=streamer,
                temperature=temperature,
            )
        except BaseException as error:  # handed to the consumer below
            outcome["error"] = error
            streamer.end()

    worker = threading.Thread(target=work, name="sectensor-generate", daemon=True)
    worker.start()
    for texts in streamer:
        yield texts
    worker.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    yield tuple(outcome["answers"])  # type: ignore[arg-type]


def stream_side_by_side(
    lvlm: LVLM, image: Image.Image | None, prompt: str, tensor, max_new_tokens: int = 48, temperature: float = 0.0
) -> Iterator[tuple[str, str]]:
    """(base answer, protected answer) as they grow, from one batch of two rows: without and with `tensor`."""
    yield from stream_answers(lvlm, [image, image], [prompt, prompt], tensor, [False, True], max_new_tokens,
                              temperature=temperature)


@dataclass
class FittedPrompt:
    prompt: str
    max_new_tokens: int
    dropped_tokens: int = 0  # prompt tokens cut from the end
    reduced_new_tokens: bool = False  # max_new_tokens was lowered to fit


def fit_prompt(
    lvlm: LVLM, image: Image.Image | None, prompt: str, virtual_tokens: int = 0, max_new_tokens: int = 48,
    placement: str = "before_text",
) -> FittedPrompt:
    """Cut `prompt` at a token boundary so that the encoded row plus `max_new_tokens` fits the model's context.

    If even an empty answer budget does not fit, PromptError. When the prompt fits but the answer would overflow,
    `max_new_tokens` is lowered instead.
    """
    limit = getattr(lvlm.model.config.get_text_config(), "max_position_embeddings", None)
    if not prompt.strip():
        raise PromptError("the prompt is empty; write a question or instruction")

    def row_length(text: str) -> int:
        return int(lvlm.adapter.encode(image, text, virtual_tokens, placement).input_ids.shape[0])

    if limit is None:
        return FittedPrompt(prompt, max_new_tokens)
    length = row_length(prompt)
    if length + max_new_tokens <= limit:
        return FittedPrompt(prompt, max_new_tokens)
    minimum_answer = min(max_new_tokens, 16)
    if length + minimum_answer <= limit:
        return FittedPrompt(prompt, limit - length, reduced_new_tokens=True)
    encoding = lvlm.tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoding["offset_mapping"]
    keep = len(offsets) - (length + max_new_tokens - limit)
    while keep > 0:
        cut = prompt[: offsets[keep - 1][1]]
        if cut.strip() and row_length(cut) + max_new_tokens <= limit:
            return FittedPrompt(cut, max_new_tokens, dropped_tokens=len(offsets) - keep)
        keep -= 1  # tokenization at the cut can differ by a token; step back until it fits
    raise PromptError(
        f"the picture and the chat template alone take {row_length('x') - 1} of this model's {limit} tokens; "
        f"no room is left for a prompt and {max_new_tokens} new tokens"
    )
