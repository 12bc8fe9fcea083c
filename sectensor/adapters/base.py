"""The small interface every model family implements.

Families differ in four things only: how pixels are laid out, where δv is added, where δt is inserted,
and the chat template. Everything else (training, evaluation, generation, the app) goes through
`FamilyAdapter` and never looks at the family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from PIL import Image

from ..errors import SectensorError

# Marks where the user's text starts in a rendered chat prompt: δt is inserted there by default.
TEXT_START = "\u2063\u2063sectensor-text\u2063\u2063"
# Where δt's slots go: just before the user's text (the paper's place, after any picture), or just before the
# picture, where the language model reads δt before the image tokens and they can attend to it.
PLACEMENTS = ("before_text", "before_image")
PLACED_BEFORE = {"before_text": "the user's text", "before_image": "the picture"}  # for cards and the app


def check_placement(placement: str) -> str:
    """`placement` if it is one of `PLACEMENTS`, else a SectensorError naming them."""
    if placement not in PLACEMENTS:
        raise SectensorError(f"unknown δt placement {placement!r}; use one of {', '.join(PLACEMENTS)}")
    return placement


@dataclass
class RowEncoding:
    """One prompt (and its image) encoded for the model.

    input_ids:    (sequence_length,)
    token_fields: model inputs aligned with input_ids, each (sequence_length, ...), e.g. mm_token_type_ids
    image_fields: per-image inputs, each (num_images, ...), e.g. pixel_values (num_images, 3, H, W); trailing
                  dims may differ between rows (tiles, patches) and are zero-padded when rows are batched
    virtual_mask: (sequence_length,) True where a δt virtual token sits
    target_mask:  (sequence_length,) True on the tokens of the training answer (which are predicted)
    """

    input_ids: torch.Tensor
    token_fields: dict[str, torch.Tensor] = field(default_factory=dict)
    image_fields: dict[str, torch.Tensor] = field(default_factory=dict)
    virtual_mask: torch.Tensor | None = None
    target_mask: torch.Tensor | None = None

    @property
    def num_images(self) -> int:
        pixel_values = self.image_fields.get("pixel_values")
        return 0 if pixel_values is None else pixel_values.shape[0]


class FamilyAdapter:
    """Base adapter. A family subclasses it in one file and registers it with `register_adapter`.

    Subclasses set `architectures` (the `config.architectures` names they serve) and implement
    `visual_shape` and `apply_visual`; the chat formatting and text encoding below fit most families.
    """

    architectures: ClassVar[tuple[str, ...]] = ()
    # Names of processor outputs that are aligned with input_ids (padded and spliced with them).
    token_field_names: ClassVar[tuple[str, ...]] = ()
    # Names of processor outputs that describe the images (concatenated over the batch).
    image_field_names: ClassVar[tuple[str, ...]] = ("pixel_values",)
    # Whether generation may use a static (compilable) key-value cache on GPUs.
    supports_static_cache: ClassVar[bool] = True
    # Attribute of the inner model holding the vision tower, when it takes pictures of one fixed shape and can
    # be compiled as one graph for training (per-block compilation leaves a CPU-bound vision tower on GPUs).
    whole_vision_tower: ClassVar[str | None] = None
    # Whether decoding after the prompt needs the language model only (see sectensor/decoding.py).
    decodes_with_language_model: ClassVar[bool] = True
    # Whether training δt may run the tokens before δt once without autograd and reuse their key-value cache.
    supports_prefix_cache: ClassVar[bool] = True
    # Path, in the inner model, of the module whose output is the pictures' features as the language model reads
    # them (a tensor whose last dimension is the feature): where `LVLM.image_feature_noise` adds its noise.
    image_features_module: ClassVar[str] = "multi_modal_projector"

    def __init__(self, model: torch.nn.Module, processor) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)

    # ---- δv -------------------------------------------------------------------------------------
    def visual_shape(self) -> tuple[int, ...]:
        """Shape of δv: the family's canonical preprocessed pixel tensor for one image."""
        raise NotImplementedError

    def apply_visual(
        self, image_fields: dict[str, torch.Tensor], delta: torch.Tensor, protected_images: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Return image_fields with δv added to the images where `protected_images` (num_images,) is True."""
        raise NotImplementedError

    def model_image_inputs(
        self, image_fields: dict[str, torch.Tensor], image_rows: torch.Tensor, input_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The model's image keyword arguments, built from a batch's per-image fields.

        The default passes the fields as they are. Families whose model wants another layout (per-row images,
        flattened patches, masks derived from the token positions) override it; it must stay differentiable.

        Args:
            image_fields: per-image fields of the batch, each (num_images, ...), δv already applied.
            image_rows: (num_images,) the row of each image.
            input_ids: (batch_size, sequence_length) the batch's tokens, left-padded.
        """
        return dict(image_fields)

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """True where input_ids (batch_size, sequence_length) hold an image placeholder token; None if unknown."""
        config = self.model.config
        token_id = getattr(config, "image_token_id", None)
        if token_id is None:
            token_id = getattr(config, "image_token_index", None)
        return None if token_id is None else input_ids == token_id

    # ---- prompts ----------------------------------------------------------------------------------
    def format_prompt(self, prompt: str, has_image: bool) -> str:
        """Render one user turn with the model's chat template, ready for the answer."""
        content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": prompt}]
        return self.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )

    def encode(self, image: Image.Image | None, prompt: str, virtual_tokens: int = 0,
               placement: str = "before_text") -> RowEncoding:
        """Encode one row; with `virtual_tokens` > 0, reserve that many δt slots at `placement` (`PLACEMENTS`).

        `before_image` puts them where the prompt's tokens with the picture first differ from its tokens without
        it, i.e. before the family's image block (markers included); rows without a picture get them before the
        text, which is the same place in the user's turn.
        """
        check_placement(placement)
        if virtual_tokens == 0:
            rendered = self.format_prompt(prompt, image is not None)
            return self._process(image, rendered, add_special_tokens=self._needs_special_tokens(rendered))
        if placement == "before_image" and image is not None:
            rendered = self.format_prompt(prompt, True)
            row = self._process(image, rendered, add_special_tokens=self._needs_special_tokens(rendered))
            plain = self.encode(None, prompt).input_ids
            common = min(len(plain), len(row.input_ids))
            differs = torch.nonzero(row.input_ids[:common] != plain[:common]).flatten()
            at = int(differs[0]) if len(differs) else common
            image_tokens = self.image_token_mask(row.input_ids[None])
            if image_tokens is not None and bool(image_tokens[0, :at].any()):
                raise RuntimeError("the chat template puts text before the picture; cannot place δt before it")
            return _with_slots(row, at, virtual_tokens, self.placeholder_token_id)
        rendered = self.format_prompt(TEXT_START + prompt, image is not None)
        if rendered.count(TEXT_START) != 1:
            raise RuntimeError("the chat template altered the prompt text; cannot place the textual tensor")
        before, after = rendered.split(TEXT_START)
        head = self._process(image, before, add_special_tokens=self._needs_special_tokens(before))
        # The tail is plain text: the tokenizer alone, since some processors rewrite text (Mllama prepends BOS).
        tail_ids = torch.tensor(self.tokenizer(after, add_special_tokens=False)["input_ids"], dtype=head.input_ids.dtype)
        row = RowEncoding(torch.cat([head.input_ids, tail_ids]),
                          {name: torch.cat([value, value.new_zeros((tail_ids.shape[0], *value.shape[1:]))])
                           for name, value in head.token_fields.items()},
                          head.image_fields)
        return _with_slots(row, head.input_ids.shape[0], virtual_tokens, self.placeholder_token_id)

    def encode_answer(self, answer: str) -> torch.Tensor:
        """Token ids of a training answer, ending with the end-of-sequence token."""
        ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        return torch.tensor([*ids, self.tokenizer.eos_token_id], dtype=torch.long)

    @property
    def placeholder_token_id(self) -> int:
        """Token id written where δt goes; its embedding is replaced before the model sees it."""
        tokenizer = self.tokenizer
        for token_id in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id):
            if token_id is not None:
                return token_id
        return 0

    def _needs_special_tokens(self, rendered: str) -> bool:
        """Whether the tokenizer should add its special tokens: not when the chat template already wrote BOS."""
        bos = self.tokenizer.bos_token
        return not (bos and rendered.startswith(bos))

    def _process(self, image: Image.Image | None, text: str, add_special_tokens: bool) -> RowEncoding:
        kwargs = {"images": [image]} if image is not None else {}
        out = self.processor(text=[text], add_special_tokens=add_special_tokens, return_tensors="pt", **kwargs)
        token_fields = {name: out[name][0] for name in self.token_field_names if name in out}
        image_fields = {name: out[name] for name in self.image_field_names if name in out and image is not None}
        return RowEncoding(out["input_ids"][0], token_fields, image_fields)


def _with_slots(row: RowEncoding, at: int, count: int, placeholder_id: int) -> RowEncoding:
    """`row` with `count` δt slots (placeholder tokens, zero token fields) inserted before position `at`."""
    def splice(value: torch.Tensor, filler: torch.Tensor) -> torch.Tensor:
        return torch.cat([value[:at], filler, value[at:]])

    input_ids = splice(row.input_ids, torch.full((count,), placeholder_id, dtype=row.input_ids.dtype))
    token_fields = {name: splice(value, value.new_zeros((count, *value.shape[1:]))) for name, value in row.token_fields.items()}
    virtual_mask = torch.zeros(input_ids.shape[0], dtype=torch.bool)
    virtual_mask[at : at + count] = True
    return RowEncoding(input_ids, token_fields, row.image_fields, virtual_mask)
