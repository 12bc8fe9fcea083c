"""Security tensors: δv (visual) and δt (textual), and their on-disk format.

A saved tensor is a folder:
    security_tensor.safetensors   the values (key "delta")
    config.json                   kind, shape, threshold or num_tokens, dtype, and the base model's fingerprint
    README.md                     a model card
Only safetensors are ever read: no pickle, so loading a tensor cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .adapters.base import PLACEMENTS, check_placement
from .errors import SectensorError, TensorMismatchError

if TYPE_CHECKING:
    from .lvlm import LVLM

WEIGHTS_NAME = "security_tensor.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
FORMAT_VERSION = 1
_STRUCTURE_KEYS = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "intermediate_size", "vocab_size", "image_size", "patch_size", "image_token_id", "image_token_index",
)

_FINGERPRINT_WORDS = {"architecture": "their architectures", "config_hash": "their shapes",
                      "weights_hash": "their token embeddings", "parameters_hash": "their weights"}


def model_fingerprint(lvlm: "LVLM") -> dict[str, Any]:
    """What identifies a base model: architecture, id, sizes, and hashes of its structure and its weights.

    The structure hash covers only shape-defining config fields, so it does not change with library
    versions. The weights hash (a corner of the token embedding) tells apart models trained from different
    starts; the parameters hash (a few values of every parameter) also tells apart fine-tunes that leave the
    embedding as it was, such as a retrained projector or a merged LoRA. Both round to bfloat16, so neither
    depends on the dtype the model was loaded in.
    """
    config = lvlm.model.config
    text_config = config.get_text_config()
    vision_config = getattr(config, "vision_config", None)
    structure = {}
    for part_name, part in (("model", config), ("text", text_config), ("vision", vision_config)):
        if part is not None:
            structure[part_name] = {key: getattr(part, key) for key in _STRUCTURE_KEYS if hasattr(part, key)}
    structure_hash = hashlib.sha256(json.dumps(structure, sort_keys=True, default=str).encode()).hexdigest()[:16]
    corner = lvlm.model.get_input_embeddings().weight[:64, :64].detach().to("cpu", torch.bfloat16).float()
    weights_hash = hashlib.sha256(corner.numpy().tobytes()).hexdigest()[:16]
    return {
        "architecture": lvlm.architecture,
        "model_id": lvlm.name_or_path,
        "text_hidden_size": getattr(text_config, "hidden_size", None),
        "vision_hidden_size": getattr(vision_config, "hidden_size", None),
        "image_shape": list(lvlm.adapter.visual_shape()),
        "config_hash": structure_hash,
        "weights_hash": weights_hash,
        "parameters_hash": _parameters_hash_of(lvlm),
    }


def _parameters_hash_of(lvlm: "LVLM") -> str:
    """`parameters_hash` of the model, computed once per loaded model (its weights are frozen): the app checks a tensor
    again each time the user switches between δv and δt, and on a 7B model the hash reads ~700 parameters."""
    if getattr(lvlm, "_parameters_hash", None) is None:
        lvlm._parameters_hash = parameters_hash(lvlm.model)
    return lvlm._parameters_hash


def parameters_hash(model: torch.nn.Module) -> str:
    """A hash of eight values from each of four rows of every parameter, rounded to bfloat16.

    Each parameter's sample is hashed on its own and the digests are sorted, so the hash depends neither on the
    order modules are registered in nor on their names (both move between library versions), and a weight kept
    in another memory layout (`sectensor.lvlm` transposes them on CPUs) hashes the same.
    """
    digests = []
    for parameter in model.parameters():
        values = parameter.detach()
        if values.dim() == 0:
            values = values.reshape(1)
        rows = torch.linspace(0, values.shape[0] - 1, min(4, values.shape[0])).long().to(values.device)
        sample = values.index_select(0, rows).reshape(len(rows), -1)[:, :8].to("cpu", torch.bfloat16).float()
        digests.append(hashlib.sha256(sample.numpy().tobytes() + str(tuple(values.shape)).encode()).hexdigest())
    return hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()[:16]


class SecurityTensor(torch.nn.Module):
    """A trained input perturbation for one frozen base model. Subclasses: visual (δv) and textual (δt)."""

    kind: ClassVar[str] = ""
    _kinds: ClassVar[dict[str, type["SecurityTensor"]]] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        SecurityTensor._kinds[cls.kind] = cls

    def __init__(self, delta: torch.Tensor, fingerprint: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.delta = torch.nn.Parameter(delta.detach().float().clone())
        self.fingerprint = dict(fingerprint or {})
        self.training_info: dict[str, Any] = {}

    # ---- compatibility ------------------------------------------------------------------------------
    def expected_shape(self, lvlm: "LVLM") -> tuple[int, ...]:
        raise NotImplementedError

    def check_compatible(self, lvlm: "LVLM") -> None:
        """Raise TensorMismatchError if this tensor was made for another model or has the wrong shape."""
        if getattr(lvlm, "_checked_tensor", None) is self:
            return
        expected = tuple(self.expected_shape(lvlm))
        mine = self.fingerprint
        made_for = mine.get("model_id") or mine.get("architecture") or "an unknown model"
        if tuple(self.delta.shape) != expected:
            raise TensorMismatchError(
                f"this {self.kind} tensor has shape {tuple(self.delta.shape)} (made for {made_for}); "
                f"{lvlm.name_or_path} needs {expected}"
            )
        if mine:
            theirs = model_fingerprint(lvlm)
            checked = ["architecture", "config_hash", "weights_hash"]
            if "parameters_hash" in mine:  # tensors saved before it existed are checked on the keys they have
                checked.append("parameters_hash")
            differing = [key for key in checked if mine.get(key) != theirs[key]]
            if differing:
                raise TensorMismatchError(
                    f"this security tensor was made for {made_for} ({mine.get('architecture')}), "
                    f"not for {lvlm.name_or_path} ({theirs['architecture']}): "
                    f"{', '.join(_FINGERPRINT_WORDS[key] for key in differing)} differ ({', '.join(differing)}). "
                    f"Train a tensor for {lvlm.name_or_path}."
                )
        lvlm._checked_tensor = self

    # ---- persistence -------------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "shape": list(self.delta.shape),
            "dtype": str(self.delta.dtype).removeprefix("torch."),
            "base_model": self.fingerprint,
            "training": self.training_info,
        }

    def save_pretrained(self, directory: str | os.PathLike, card: str | None = None) -> Path:
        """Write the tensor, its config and a model card into `directory` (created if needed)."""
        from .card import tensor_card

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"delta": self.delta.detach().cpu().contiguous()}, str(directory / WEIGHTS_NAME),
                  metadata={"format": "pt", "kind": self.kind})
        (directory / CONFIG_NAME).write_text(json.dumps(self.config_dict(), indent=2, sort_keys=True) + "\n")
        (directory / CARD_NAME).write_text(card if card is not None else tensor_card(self))
        return directory

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, revision: str | None = None) -> "SecurityTensor":
        """Load a tensor from a folder or a Hub repo id (downloaded through the Hub cache)."""
        from .hub import resolve_tensor_folder

        directory = resolve_tensor_folder(str(source), revision=revision)
        weights = directory / WEIGHTS_NAME
        config_path = directory / CONFIG_NAME
        if not weights.is_file():
            found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
            pickled = [name for name in found if name.endswith((".pt", ".pth", ".bin", ".pkl", ".ckpt"))]
            hint = f" Found {', '.join(pickled)}: pickle files are never loaded; convert them to safetensors." if pickled else ""
            raise SectensorError(f"{source}: no {WEIGHTS_NAME} found.{hint}")
        try:
            config = json.loads(config_path.read_text())
        except FileNotFoundError:
            raise SectensorError(f"{source}: no {CONFIG_NAME} next to {WEIGHTS_NAME}") from None
        except json.JSONDecodeError as error:
            raise SectensorError(f"{source}: {CONFIG_NAME} is not valid JSON ({error})") from None
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as error:
            raise SectensorError(f"{source}: {WEIGHTS_NAME} is not a valid safetensors file ({error})") from None
        kind = config.get("kind")
        if kind not in SecurityTensor._kinds:
            raise SectensorError(f"{source}: unknown tensor kind {kind!r}; expected one of {sorted(SecurityTensor._kinds)}")
        target = SecurityTensor._kinds[kind]
        if cls is not SecurityTensor and not issubclass(target, cls):
            raise SectensorError(f"{source} holds a {kind} tensor, not a {cls.kind} one")
        if "delta" not in state or list(state["delta"].shape) != config.get("shape"):
            raise SectensorError(f"{source}: the tensor's values do not match the shape in {CONFIG_NAME}")
        tensor = target._from_config(state["delta"], config)
        tensor.training_info = dict(config.get("training") or {})
        return tensor

    @classmethod
    def _from_config(cls, delta: torch.Tensor, config: dict[str, Any]) -> "SecurityTensor":
        raise NotImplementedError


class VisualSecurityTensor(SecurityTensor):
    """δv: added to the preprocessed, normalized pixels of each protected image; kept within ±threshold."""

    kind = "visual"

    def __init__(self, delta: torch.Tensor, threshold: float = 1.0, fingerprint: dict | None = None) -> None:
        super().__init__(delta, fingerprint)
        self.threshold = float(threshold)

    @classmethod
    def zeros(cls, lvlm: "LVLM", threshold: float = 1.0) -> "VisualSecurityTensor":
        return cls(torch.zeros(lvlm.adapter.visual_shape()), threshold, model_fingerprint(lvlm))

    def expected_shape(self, lvlm: "LVLM") -> tuple[int, ...]:
        return lvlm.adapter.visual_shape()

    def clamped(self) -> torch.Tensor:
        return self.delta.clamp(-self.threshold, self.threshold)

    @torch.no_grad()
    def project_(self) -> None:
        """Clamp the stored values in place (after an optimizer step)."""
        self.delta.clamp_(-self.threshold, self.threshold)

    def config_dict(self) -> dict[str, Any]:
        return {**super().config_dict(), "threshold": self.threshold}

    @classmethod
    def _from_config(cls, delta, config):
        return cls(delta, config.get("threshold", 1.0), config.get("base_model"))


class TextualSecurityTensor(SecurityTensor):
    """δt: `num_tokens` virtual-token embeddings inserted into the prompt at `placement` (`adapters.PLACEMENTS`):
    just before the user's text (the paper's place) or just before the picture."""

    kind = "textual"

    def __init__(self, delta: torch.Tensor, fingerprint: dict[str, Any] | None = None,
                 placement: str = "before_text") -> None:
        super().__init__(delta, fingerprint)
        self.placement = check_placement(placement)

    @classmethod
    def zeros(cls, lvlm: "LVLM", num_tokens: int = 100, placement: str = "before_text") -> "TextualSecurityTensor":
        return cls(torch.zeros(num_tokens, lvlm.hidden_size), model_fingerprint(lvlm), placement)

    @classmethod
    def from_vocabulary(cls, lvlm: "LVLM", num_tokens: int = 100, seed: int = 0,
                        placement: str = "before_text") -> "TextualSecurityTensor":
        """Start from embeddings of random vocabulary tokens (the usual soft-prompt initialisation)."""
        table = lvlm.model.get_input_embeddings().weight
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, table.shape[0], (num_tokens,), generator=generator)
        return cls._from_token_ids(lvlm, ids, placement)

    @classmethod
    def from_text(cls, lvlm: "LVLM", text: str, num_tokens: int = 100,
                  placement: str = "before_text") -> "TextualSecurityTensor":
        """Start from the embeddings of `text`'s tokens, repeated in order to fill `num_tokens` (the other usual
        soft-prompt initialisation: a start that means something to the model, the same for every seed)."""
        tokenizer = lvlm.tokenizer
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
        ids = encoded["input_ids"]
        if not ids:
            raise SectensorError("the δt start text has no tokens; give a phrase in words the model knows")
        unknown = [index for index, id_ in enumerate(ids) if id_ == tokenizer.unk_token_id]
        if unknown:
            words = ([text[slice(*encoded["offset_mapping"][index])] for index in unknown] if tokenizer.is_fast
                     else [tokenizer.unk_token] * len(unknown))
            raise SectensorError(f"the δt start text has words the model's tokenizer does not know: "
                                 f"{', '.join(map(repr, words))}; reword it without them")
        repeated = torch.tensor(ids).repeat(-(-num_tokens // len(ids)))[:num_tokens]
        return cls._from_token_ids(lvlm, repeated, placement)

    @classmethod
    def _from_token_ids(cls, lvlm: "LVLM", ids: torch.Tensor, placement: str) -> "TextualSecurityTensor":
        """δt holding the model's input embeddings of `ids` (num_tokens,), as float32 on the CPU."""
        table = lvlm.model.get_input_embeddings().weight
        return cls(table[ids.to(table.device)].detach().float().cpu(), model_fingerprint(lvlm), placement)

    @property
    def num_tokens(self) -> int:
        return self.delta.shape[0]

    @property
    def embeddings(self) -> torch.Tensor:
        return self.delta

    def expected_shape(self, lvlm: "LVLM") -> tuple[int, ...]:
        return (self.num_tokens, lvlm.hidden_size)

    def config_dict(self) -> dict[str, Any]:
        return {**super().config_dict(), "num_tokens": self.num_tokens, "placement": self.placement}

    @classmethod
    def _from_config(cls, delta, config):
        # Artifacts written before placements existed hold δt before the text.
        return cls(delta, config.get("base_model"), config.get("placement", "before_text"))


def virtual_slots(tensor: SecurityTensor | None) -> dict[str, Any]:
    """The δt slots a prompt needs for `tensor`, as `encode`'s keyword arguments: its tokens and their placement
    for δt, none for δv or no tensor."""
    if isinstance(tensor, TextualSecurityTensor):
        return {"virtual_tokens": tensor.num_tokens, "placement": tensor.placement}
    return {"virtual_tokens": 0, "placement": PLACEMENTS[0]}
