"""Model cards for security tensors."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tensors import SecurityTensor


def tensor_card(tensor: "SecurityTensor") -> str:
    """A short README for a saved tensor: what it is, what it was made for, how to use it."""
    base = tensor.fingerprint.get("model_id") or "its base model"
    size = (
        f"threshold ±{tensor.threshold:g} on normalized pixels" if tensor.kind == "visual"
        else f"{tensor.num_tokens} virtual tokens"
    )
    info = "\n".join(f"- {key}: {value}" for key, value in sorted(tensor.training_info.items())) or "- not recorded"
    return f"""---
library_name: sectensor
tags:
- security-tensors
- safety
- vision-language
- {tensor.kind}
---
# Security tensor ({tensor.kind}) for {base}

A {tensor.kind} security tensor of shape {tuple(tensor.delta.shape)} ({size}). It is an input perturbation
for the frozen model {base}: applied at inference time it makes the model refuse harmful image requests the way
its language model refuses harmful text, without changing any weight.

```python
import sectensor
lvlm = sectensor.load_lvlm("{base}")
tensor = sectensor.SecurityTensor.from_pretrained("THIS_FOLDER_OR_REPO")
print(lvlm.generate([image], ["What is this?"], tensor=tensor))
```

## Training
{info}

## Limits
It was made for {base} only; loading it for another model is refused. It protects against the kinds of
harmful content represented in its training data and may also refuse some benign requests.
"""
