"""Model-family adapters. Importing this package registers every family."""

from .base import FamilyAdapter, RowEncoding
from .registry import ADAPTERS, adapter_class_for, register_adapter
from . import llava  # noqa: F401  (registers the family)

__all__ = ["ADAPTERS", "FamilyAdapter", "RowEncoding", "adapter_class_for", "register_adapter"]
