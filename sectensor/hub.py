"""Publishing security tensors on the Hugging Face Hub and loading them from it.

    python -m sectensor.hub push DIR USER/REPO [--private] [--revision BRANCH]

The token comes from `HF_TOKEN` or the standard login (`hf auth login`); it is never printed or stored.
A push first checks that the folder loads as a security tensor, then creates the repo if needed and uploads
one commit. When the Hub cannot be reached, the push fails within seconds and the folder stays as it was.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import HubUnreachableError, SectensorError
from .tensors import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, SecurityTensor

LOSS_CURVES_NAME = "loss_curves.png"  # written by the trainer
TENSOR_PICTURE_NAME = "visual_tensor.png"  # written by the trainer for δv
PUSHED_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME, LOSS_CURVES_NAME, TENSOR_PICTURE_NAME)
# The card's usage snippet names this placeholder; a push replaces it with the repo id in the uploaded card.
SOURCE_PLACEHOLDER = "path/to/this/folder"
REACHABILITY_TIMEOUT_S = 5.0


def looks_like_repo_id(name: str) -> bool:
    """True for "namespace/name" strings the Hub accepts as repo ids (says nothing about whether the repo exists)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def resolve_tensor_folder(source: str, revision: str | None = None) -> Path:
    """A local folder as is; otherwise a Hub repo id downloaded into the Hub cache (tensor files only)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise SectensorError(f"{source} is a file; give the folder that holds {WEIGHTS_NAME}")
    if not looks_like_repo_id(source):
        raise SectensorError(f"no security tensor folder at {source!r}")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        folder = snapshot_download(source, revision=revision, allow_patterns=list(PUSHED_FILES))
    except HfHubHTTPError as error:
        raise SectensorError(f"cannot download {source!r} from the Hub: {error}") from error
    except (OSError, ConnectionError) as error:
        offline = " (HF_HUB_OFFLINE is set)" if constants.is_offline_mode() else ""
        raise HubUnreachableError(
            f"cannot download {source!r}: the Hub is unreachable{offline} and it is not in the cache: {error}"
        ) from error
    return Path(folder)


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
) -> str:
    """Upload a saved security tensor folder to `repo_id` in one commit; return the commit's URL.

    Uploads whichever of PUSHED_FILES the folder holds. The repo is created if needed (`private` only
    applies then) and so is the branch `revision`. Every failure raises a SectensorError that says the
    folder is intact and how to push it later.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SectensorError(f"{folder} is not a folder; give the folder that holds {WEIGHTS_NAME}")
    tensor = SecurityTensor.from_pretrained(folder)
    if not looks_like_repo_id(repo_id):
        raise SectensorError(f"{repo_id!r} is not a Hub repo id; use USER/REPO (letters, digits, '-', '_', '.')")
    kept = (
        f"Nothing is lost: the tensor and its card are in {folder}. "
        f"Push them later with: python -m sectensor.hub push {folder} {repo_id}"
    )
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if constants.is_offline_mode():
        raise HubUnreachableError(f"cannot push to {repo_id}: HF_HUB_OFFLINE is set. Unset it to push. {kept}")
    token = token or get_token()
    if not token:
        raise SectensorError(
            f"cannot push to {repo_id}: no Hugging Face token. Set HF_TOKEN or run `hf auth login`. {kept}"
        )
    api = HfApi(token=token)
    _check_reachable(api.endpoint, f"cannot push to {repo_id}", kept)
    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=_upload_content(folder / name, repo_id))
        for name in PUSHED_FILES
        if (folder / name).is_file()
    ]
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or f"Upload {tensor.kind} security tensor",
            revision=revision,
        )
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            raise SectensorError(
                f"the Hub refused the token for {repo_id} (HTTP {status}): it needs write access to that "
                f"namespace. Set HF_TOKEN or run `hf auth login`. {kept}"
            ) from None
        raise SectensorError(f"the Hub rejected the push to {repo_id}: {error}. {kept}") from None
    except ValueError as error:  # the Hub's verdict on the card's metadata
        raise SectensorError(f"the Hub rejected the push to {repo_id}: {error}. Fix {folder / CARD_NAME}. {kept}") from None
    except (httpx2.TransportError, OSError, ConnectionError) as error:  # the client's network errors are not OSErrors
        raise HubUnreachableError(f"cannot push to {repo_id}: the connection failed ({error}). {kept}") from None
    return commit.commit_url


def _upload_content(path: Path, repo_id: str) -> Path | bytes:
    """The file as it goes to the Hub: the card's usage snippet names the repo instead of a local folder."""
    if path.name != CARD_NAME:
        return path
    return path.read_text().replace(SOURCE_PLACEHOLDER, repo_id).encode()


def _check_reachable(endpoint: str, action: str, kept: str) -> None:
    """Fail in seconds when the endpoint does not answer, instead of letting the upload retry for long."""
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import get_session

    try:
        get_session().head(endpoint, timeout=REACHABILITY_TIMEOUT_S)
    except (httpx2.TransportError, OSError, ConnectionError) as error:  # DNS, refused, timeout, TLS, proxy
        raise HubUnreachableError(
            f"{action}: {endpoint} is unreachable ({type(error).__name__}: {error}). {kept}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sectensor.hub", description="Publish security tensors on the Hub.")
    commands = parser.add_subparsers(dest="command", required=True)
    push = commands.add_parser("push", help="upload a saved tensor folder as one commit (token: HF_TOKEN or `hf auth login`)")
    push.add_argument("folder", help="folder written by save_pretrained / train.py")
    push.add_argument("repo_id", help="USER/REPO on the Hub; created if missing")
    push.add_argument("--private", action="store_true", help="make the repo private when it is created")
    push.add_argument("--revision", default=None, help="branch to commit to (created if missing; default main)")
    push.add_argument("--message", default=None, help="commit message")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        url = push_to_hub(args.folder, args.repo_id, private=args.private, commit_message=args.message,
                          revision=args.revision)
    except SectensorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"pushed {args.folder} to {args.repo_id}: {url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
