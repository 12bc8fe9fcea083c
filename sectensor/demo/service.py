"""The app's work without its user interface: the loaded model and tensors, input checks, answers and views.

The model is loaded once. Every tensor is loaded at start and checked against the model; one that is missing or
made for another model is reported (and left out), never fatal. Input problems raise `SectensorError` with a
message meant for the user; soft problems (a huge picture downscaled, a prompt cut) become notices.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..data import MAX_IMAGE_SIDE, open_image
from ..errors import ImageError, PromptError, SectensorError
from ..generation import fit_prompt, stream_answers, stream_side_by_side
from ..judge import is_refusal
from ..lvlm import LVLM, load_lvlm
from ..tensors import SecurityTensor, virtual_slots
from ..visualization import VisualViews, delta_amplified, delta_heatmap, textual_numbers, visual_numbers, visual_views
from .settings import DEFAULT_TENSORS, PROJECT_ROOT

MAX_PROMPT_CHARACTERS = 4000  # longer prompts are cut before tokenizing
MAX_NEW_TOKENS = 256
MAX_TEMPERATURE = 2.0
SMALL_MODEL_PARAMETERS = 100_000_000
KIND_SYMBOLS = {"visual": "δv", "textual": "δt"}
TEXT_ONLY_NOTICE = {
    "visual": "δv acts on pictures only: without a picture both columns get the same input.",
    "textual": "δt is applied to requests with a picture only: without a picture both columns get the same input "
               "and the model's own text safety answers.",
}


@dataclass
class Answers:
    """What the two columns show at one moment of a side-by-side answer."""

    base: str
    protected: str | None  # None when no tensor is loaded
    done: bool = False
    notices: list[str] = field(default_factory=list)

    @property
    def base_refused(self) -> bool:
        return is_refusal(self.base)

    @property
    def protected_refused(self) -> bool:
        return self.protected is not None and is_refusal(self.protected)


@dataclass
class TensorViews:
    """What the "what the tensor looks like" panel shows for one tensor (and picture)."""

    kind: str | None  # visual | textual | None (no tensor)
    pictures: VisualViews | None = None  # the current picture without and with δv
    amplified: Image.Image | None = None
    heatmap: Image.Image | None = None
    numbers: dict = field(default_factory=dict)
    notice: str = ""


def cpu_threads(lvlm: LVLM, requested: int | None = None) -> int:
    """`requested`, or by default one thread for a model under SMALL_MODEL_PARAMETERS, else PyTorch's own count.

    A small model's matrix products are too small to share out, and threads that wait for each other on busy cores
    make decoding several times slower (bench/bench_app_cpu.py, docs/benchmarks.md).
    """
    if requested is not None:
        return requested
    parameters = sum(parameter.numel() for parameter in lvlm.model.parameters())
    return 1 if parameters < SMALL_MODEL_PARAMETERS else torch.get_num_threads()


def _display_source(source: str) -> str:
    path = Path(source)
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return source


class DemoService:
    """One model, its usable tensors by label, and what went wrong while loading the others."""

    def __init__(self, lvlm: LVLM, tensors: dict[str, SecurityTensor], problems: Sequence[str] = ()) -> None:
        self.lvlm = lvlm
        self.tensors = tensors
        self.problems = list(problems)
        self._numbers_cache: dict[str, dict] = {}
        self._delta_pictures_cache: dict[str, tuple[Image.Image, Image.Image]] = {}

    @classmethod
    def load(
        cls, model: str, tensor_sources: Sequence[str], device: str | None = None, threads: int | None = None
    ) -> "DemoService":
        """Load the model (errors propagate: without a model there is nothing to serve) and every usable tensor.

        On the CPU, `threads` sets PyTorch's thread count for this process (see `cpu_threads` for the default).
        """
        lvlm = load_lvlm(model, device=device)
        if lvlm.device.type == "cpu":
            torch.set_num_threads(cpu_threads(lvlm, threads))
        tensors: dict[str, SecurityTensor] = {}
        problems = []
        for source in tensor_sources:
            shown = _display_source(source)
            shipped = os.path.abspath(source) in {os.path.abspath(path) for path in DEFAULT_TENSORS}
            try:
                tensor = SecurityTensor.from_pretrained(source)
                tensor.check_compatible(lvlm)
            except SectensorError as error:
                what = "The shipped tensor" if shipped else "The tensor"
                reason = "is missing" if shipped and not Path(source).exists() else "cannot be used"
                problems.append(f"{what} `{shown}` {reason}: {error}")
                continue
            label = f"{KIND_SYMBOLS.get(tensor.kind, tensor.kind)} · {Path(shown).name or shown}"
            while label in tensors:
                label += "′"
            tensors[label] = tensor
        if not tensors:
            problems.append("No security tensor is loaded: the Protected column is empty. Start the app with "
                            "`--tensor FOLDER_OR_HUB_ID`.")
        return cls(lvlm, tensors, problems)

    def status(self) -> dict:
        """The model, the usable tensors (label → kind) and what could not be loaded."""
        return {
            "model": _display_source(self.lvlm.name_or_path), "architecture": self.lvlm.architecture,
            "tensors": {label: tensor.kind for label, tensor in self.tensors.items()}, "problems": self.problems,
        }

    # ---- inputs -----------------------------------------------------------------------------------
    def tensor(self, label: str | None) -> SecurityTensor | None:
        if not self.tensors:
            return None
        if label not in self.tensors:
            raise SectensorError(f"unknown tensor {label!r}; choose one of: {', '.join(self.tensors)}")
        return self.tensors[label]

    @staticmethod
    def read_image(path: str | os.PathLike | None) -> tuple[Image.Image | None, list[str]]:
        """Open an uploaded picture safely; a picture larger than the app works with is downscaled, with a notice."""
        if path is None:
            return None, []
        try:
            image = open_image(path)
        except ImageError as error:  # name the upload, not where the server keeps it
            raise ImageError("The upload " + str(error).replace(str(path), Path(path).name)) from None
        notices = []
        with Image.open(path) as probe:
            width, height = probe.size
        if max(width, height) > MAX_IMAGE_SIDE:
            notices.append(f"The picture is {width}×{height} pixels; it was downscaled to "
                           f"{image.width}×{image.height} "
                           f"(at most {MAX_IMAGE_SIDE} on the longer side) before the model's own preprocessing.")
        return image, notices

    def prepare(
        self, image: Image.Image | None, prompt: str | None, tensor: SecurityTensor | None, max_new_tokens: int
    ) -> tuple[str, int, list[str]]:
        """The prompt and answer length that fit the model, and notices about anything cut."""
        prompt = (prompt or "").strip()
        if not prompt:
            raise PromptError("The prompt is empty: write a question or an instruction.")
        if not 1 <= int(max_new_tokens) <= MAX_NEW_TOKENS:
            raise SectensorError(f"max new tokens must be between 1 and {MAX_NEW_TOKENS}, not {max_new_tokens}")
        notices = []
        if len(prompt) > MAX_PROMPT_CHARACTERS:
            notices.append(f"The prompt had {len(prompt)} characters; only the first {MAX_PROMPT_CHARACTERS} "
                           "were kept.")
            prompt = prompt[:MAX_PROMPT_CHARACTERS]
        fitted = fit_prompt(self.lvlm, image, prompt, max_new_tokens=int(max_new_tokens), **virtual_slots(tensor))
        if fitted.dropped_tokens:
            notices.append(f"The prompt was too long for this model: its last {fitted.dropped_tokens} tokens were cut.")
        if fitted.reduced_new_tokens:
            notices.append(f"Answers are limited to {fitted.max_new_tokens} new tokens to fit the model's context.")
        return fitted.prompt, fitted.max_new_tokens, notices

    # ---- what the tensor looks like ----------------------------------------------------------------
    def views(self, image_path: str | None, tensor_label: str | None) -> TensorViews:
        """Pictures and numbers of the chosen tensor; δv is also shown on the current picture, if there is one."""
        tensor = self.tensor(tensor_label)
        if tensor is None:
            return TensorViews(None, notice=self.problems[-1])
        if tensor.kind == "textual":
            return TensorViews("textual", numbers=self._numbers(tensor_label))
        image, _ = self.read_image(image_path)
        amplified, heatmap = self._delta_pictures(tensor_label)
        result = TensorViews("visual", amplified=amplified, heatmap=heatmap, numbers=self._numbers(tensor_label))
        if image is None:
            result.notice = "Add a picture to see it as the model sees it, without and with δv."
        else:
            result.pictures = visual_views(self.lvlm, image, tensor)
        return result

    def _delta_pictures(self, tensor_label: str) -> tuple[Image.Image, Image.Image]:
        """δv amplified and its |δv| heat map: drawn once per tensor, they do not depend on the picture."""
        if tensor_label not in self._delta_pictures_cache:
            tensor = self.tensors[tensor_label]
            self._delta_pictures_cache[tensor_label] = (delta_amplified(tensor), delta_heatmap(tensor))
        return self._delta_pictures_cache[tensor_label]

    def _numbers(self, tensor_label: str) -> dict:
        if tensor_label not in self._numbers_cache:
            tensor = self.tensors[tensor_label]
            numbers = visual_numbers if tensor.kind == "visual" else textual_numbers
            self._numbers_cache[tensor_label] = numbers(tensor, self.lvlm)
        return self._numbers_cache[tensor_label]

    # ---- answering --------------------------------------------------------------------------------
    def answer(
        self, image_path: str | None, prompt: str | None, tensor_label: str | None, max_new_tokens: int = 48,
        temperature: float = 0.0,
    ) -> Iterator[Answers]:
        """Base and protected answers as they grow, from one batch; the last item has `done` set.

        Greedy unless `temperature` > 0; sampled rows differ by chance too, which the notices say."""
        if not 0 <= float(temperature) <= MAX_TEMPERATURE:
            raise SectensorError(f"the temperature must be between 0 and {MAX_TEMPERATURE}, not {temperature}")
        image, notices = self.read_image(image_path)
        tensor = self.tensor(tensor_label)
        if tensor is not None and image is None:
            # A security tensor guards picture requests; text-only ones are left to the model's own text safety.
            # δv has nothing to act on there, and δt can change text-only answers (docs/results.md, "text-only"),
            # so neither is applied.
            notices.append(TEXT_ONLY_NOTICE[tensor.kind])
            side_by_side_tensor = None
        else:
            side_by_side_tensor = tensor
        prompt, max_new_tokens, more = self.prepare(image, prompt, side_by_side_tensor, max_new_tokens)
        notices += more
        if temperature > 0:
            notices.append(f"Sampling at temperature {temperature:g}: the columns may also differ by chance; "
                           "set it to 0 for greedy answers.")
        if tensor is None:
            alone = stream_answers(self.lvlm, [image], [prompt], None, None, max_new_tokens, temperature=temperature)
            stream = ((texts[0], None) for texts in alone)
        else:
            stream = stream_side_by_side(self.lvlm, image, prompt, side_by_side_tensor, max_new_tokens,
                                         temperature=temperature)
        current = Answers("", None if tensor is None else "", notices=notices)
        for base, protected in stream:
            current = Answers(base, protected, notices=notices)
            yield current
        current.done = True
        yield current

