"""Finding security tensors on the Hugging Face Hub."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import HubUnreachableError, SectensorError


def resolve_tensor_folder(source: str, revision: str | None = None) -> Path:
    """A local folder as is; otherwise a Hub repo id downloaded into the Hub cache (safetensors and JSON only)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise SectensorError(f"{source} is a file; give the folder that holds security_tensor.safetensors")
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise SectensorError(f"no security tensor folder at {source!r}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        folder = snapshot_download(
            source, revision=revision, allow_patterns=["*.safetensors", "*.json", "README.md", "*.png"]
        )
    except OfflineModeIsEnabled as error:
        raise HubUnreachableError(f"cannot download {source!r}: HF_HUB_OFFLINE is set and it is not cached") from error
    except HfHubHTTPError as error:
        raise SectensorError(f"cannot download {source!r} from the Hub: {error}") from error
    except (OSError, ConnectionError) as error:
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise HubUnreachableError(f"cannot download {source!r}: the Hub is unreachable{offline}: {error}") from error
    return Path(folder)
