"""Errors sectensor raises on bad input. Each message says what was wrong and what to do."""


class SectensorError(ValueError):
    """Base class: anything a user can fix by changing their input."""


class UnsupportedModelError(SectensorError):
    """The checkpoint's architecture has no family adapter."""


class HubUnreachableError(SectensorError, OSError):
    """A Hub id was given but the Hub cannot be reached (offline or no network)."""


class TensorMismatchError(SectensorError):
    """A security tensor was made for another model, or has the wrong shape."""


class ManifestError(SectensorError):
    """A data manifest has bad rows; the message lists each with its line number."""


class ImageError(SectensorError):
    """An image file is missing, corrupt, or too large."""


class PromptError(SectensorError):
    """A prompt is empty or cannot be encoded."""
