"""sectensor: security tensors for vision-language models (arXiv 2507.20994).

    import sectensor
    lvlm = sectensor.load_lvlm("assets/organism")
    tensor = sectensor.SecurityTensor.from_pretrained("assets/tensors/organism-visual")
    lvlm.generate([image, image], [prompt, prompt], tensor=tensor, protect=[False, True])
"""

from .errors import (
    HubUnreachableError, ImageError, ManifestError, PromptError, SectensorError, TensorMismatchError,
    UnsupportedModelError,
)
from .lvlm import LVLM, Batch, load_lvlm
from .tensors import SecurityTensor, TextualSecurityTensor, VisualSecurityTensor, model_fingerprint

__version__ = "0.1.0"

__all__ = [
    "LVLM", "Batch", "HubUnreachableError", "ImageError", "ManifestError", "PromptError", "SectensorError",
    "SecurityTensor", "TensorMismatchError", "TextualSecurityTensor", "UnsupportedModelError",
    "VisualSecurityTensor", "load_lvlm", "model_fingerprint",
]
