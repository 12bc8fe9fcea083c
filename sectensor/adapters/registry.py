"""Adapter registry: `config.architectures[0]` -> the family adapter that serves it."""

from __future__ import annotations

from .base import FamilyAdapter
from ..errors import UnsupportedModelError

ADAPTERS: dict[str, type[FamilyAdapter]] = {}


def register_adapter(cls: type[FamilyAdapter]) -> type[FamilyAdapter]:
    """Class decorator: make `cls` serve each architecture in `cls.architectures`."""
    if not cls.architectures:
        raise ValueError(f"{cls.__name__} lists no architectures")
    for name in cls.architectures:
        if name in ADAPTERS and ADAPTERS[name] is not cls:
            raise ValueError(f"{name} is already served by {ADAPTERS[name].__name__}")
        ADAPTERS[name] = cls
    return cls


def adapter_class_for(architecture: str) -> type[FamilyAdapter]:
    try:
        return ADAPTERS[architecture]
    except KeyError:
        supported = ", ".join(sorted(ADAPTERS))
        raise UnsupportedModelError(
            f"not supported yet: {architecture}. Supported architectures: {supported}"
        ) from None
