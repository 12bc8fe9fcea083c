"""Model-family adapters. Importing this package registers every family."""

from .base import FamilyAdapter, RowEncoding
from .registry import ADAPTERS, adapter_class_for, register_adapter
from . import llava  # noqa: F401  (registers the family)
from . import llava_next  # noqa: F401
from . import qwen2_vl  # noqa: F401
from . import gemma3  # noqa: F401
from . import idefics3  # noqa: F401
from . import mllama  # noqa: F401

__all__ = ["ADAPTERS", "FamilyAdapter", "RowEncoding", "adapter_class_for", "register_adapter"]
