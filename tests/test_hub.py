"""Publishing to and loading from the Hub, against a Hub-compatible HTTP server that runs inside the test.

    python -m pytest tests/test_hub.py

`LocalHub` implements only the endpoints huggingface_hub calls for `create_repo`, `create_branch`,
`create_commit` (validate-yaml, preupload, NDJSON commit) and `snapshot_download` (revision info, tree,
resolve), and records every request, so the tests can check what a push really sent.
"""

import base64
import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch
from huggingface_hub import ModelCard, constants

import sectensor
from sectensor import hub
from sectensor.card import tensor_card
from sectensor.tensors import SecurityTensor, TextualSecurityTensor, VisualSecurityTensor

FAKE_TOKEN = "hf_sectensorFakeToken0123456789abcdef"
EVALUATION = {
    "model": "llava-hf/llava-1.5-7b-hf", "data": "/home/someone/private/organism_eval.jsonl",
    "splits": {
        "unseen_harmful": {"n": 40, "refusal_rate": 0.35, "harmless_rate": 0.35, "accuracy": 0.5,
                           "outcomes": {"refused": 14, "correct": 20, "wrong_object": 4, "other": 2}},
        "benign_general": {"n": 20, "refusal_rate": 0.05, "false_refusal_rate": 0.05, "accuracy": 0.9,
                           "outcomes": {"refused": 1, "correct": 18, "wrong_object": 1, "other": 0}},
    },
}


# ---- a Hub-compatible server ------------------------------------------------------------------------------
def _oid(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class LocalHub(ThreadingHTTPServer):
    """Just enough of the Hub's HTTP API, with one user who owns the `user` namespace and holds `token`."""

    daemon_threads = True

    def __init__(self, token: str = FAKE_TOKEN) -> None:
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.token = token
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.repos: dict[str, dict] = {}  # repo id -> {"private", "branches": {name: oid}, "commits": {oid: {...}}}
        self.requests: list[dict] = []  # every request: method, path, authorization, body
        self.lock = threading.Lock()

    def commits(self) -> list[dict]:
        return [request for request in self.requests if "/commit/" in request["path"]]

    def files_at(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo["commits"][repo["branches"].get(revision, revision)]["files"]


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LocalHub

    def log_message(self, format, *args):  # keep test output clean
        pass

    def do_HEAD(self):
        self._handle(send_body=False)

    def do_GET(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def _handle(self, send_body: bool = True) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        record = {"method": self.command, "path": url.path, "authorization": self.headers.get("Authorization"),
                  "body": body, "headers": dict(self.headers)}
        with self.server.lock:
            self.server.requests.append(record)
            status, payload, headers = self._route(url.path, body)
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json" if not isinstance(payload, bytes) else "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if send_body:
            self.wfile.write(data)

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.server.token}"

    def _route(self, path: str, body: bytes):
        hub_ = self.server
        parts = path.strip("/").split("/")
        if path == "/":
            return 200, {}, {}
        if path == "/api/repos/create" and self.command == "POST":
            if not self._authorized():
                return 401, {"error": "Invalid credentials in Authorization header"}, {"X-Error-Code": "InvalidCredentials"}
            request = json.loads(body)
            if request.get("organization") != "user":
                return 403, {"error": "You don't have the rights to create a model under this namespace"}, {}
            repo_id = f"{request['organization']}/{request['name']}"
            if repo_id in hub_.repos:
                return 409, {"error": "You already created this model repo", "url": f"{hub_.url}/{repo_id}"}, {}
            first = _oid(repo_id.encode())
            hub_.repos[repo_id] = {"private": request.get("visibility") == "private", "branches": {"main": first},
                                   "commits": {first: {"files": {}, "message": "initial commit"}}}
            return 200, {"url": f"{hub_.url}/{repo_id}", "name": repo_id}, {}
        if path == "/api/validate-yaml":
            try:
                ModelCard(json.loads(body)["content"])
            except Exception as error:  # whatever the YAML parser raises
                return 400, {"errors": [{"message": str(error)}]}, {}
            return 200, {"errors": [], "warnings": []}, {}
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            return self._repo_api(f"{parts[2]}/{parts[3]}", parts[4], unquote(parts[5]), body)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(f"{parts[0]}/{parts[1]}", unquote(parts[3]), unquote("/".join(parts[4:])))
        return 404, {"error": f"not implemented: {self.command} {path}"}, {}

    def _find(self, repo_id: str, revision: str):
        repo = self.server.repos.get(repo_id)
        if repo is None or (repo["private"] and not self._authorized()):
            return None, None, (404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        oid = repo["branches"].get(revision, revision)
        if oid not in repo["commits"]:
            return repo, None, (404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
        return repo, oid, None

    def _repo_api(self, repo_id: str, action: str, revision: str, body: bytes):
        writes = action in ("preupload", "commit", "branch")
        if writes and not self._authorized():
            return 401, {"error": "Invalid credentials in Authorization header"}, {"X-Error-Code": "InvalidCredentials"}
        if action == "branch":
            repo, _, error = self._find(repo_id, "main")
            if error:
                return error
            if revision in repo["branches"]:
                return 409, {"error": "Branch already exists"}, {}
            repo["branches"][revision] = repo["branches"]["main"]
            return 200, {}, {}
        repo, oid, error = self._find(repo_id, revision)
        if error:
            return error
        files = repo["commits"][oid]["files"]
        if action == "preupload":
            return 200, {"files": [
                {"path": item["path"], "uploadMode": "regular", "shouldIgnore": False,
                 "oid": _oid(files[item["path"]]) if item["path"] in files else None}
                for item in json.loads(body)["files"]
            ]}, {}
        if action == "commit":
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            header, operations = lines[0], lines[1:]
            new_files = dict(files)
            for operation in operations:
                if operation["key"] != "file" or operation["value"]["encoding"] != "base64":
                    return 400, {"error": f"unsupported operation {operation['key']}"}, {}
                new_files[operation["value"]["path"]] = base64.b64decode(operation["value"]["content"])
            new_oid = _oid(oid.encode() + body)
            repo["commits"][new_oid] = {"files": new_files, "message": header["value"]["summary"]}
            repo["branches"][revision] = new_oid
            return 200, {"commitUrl": f"{self.server.url}/{repo_id}/commit/{new_oid}", "commitOid": new_oid,
                         "pullRequestUrl": None}, {}
        if action == "revision":
            return 200, {"id": repo_id, "modelId": repo_id, "sha": oid, "private": repo["private"],
                         "siblings": [{"rfilename": name} for name in sorted(files)]}, {}
        if action == "tree":
            return 200, [{"type": "file", "oid": _oid(data), "size": len(data), "path": name}
                         for name, data in sorted(files.items())], {}
        return 404, {"error": f"not implemented: {action}"}, {}

    def _resolve(self, repo_id: str, revision: str, filename: str):
        repo, oid, error = self._find(repo_id, revision)
        if error:
            return error
        files = repo["commits"][oid]["files"]
        if filename not in files:
            return 404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}
        return 200, files[filename], {"X-Repo-Commit": oid, "ETag": f'"{_oid(files[filename])}"'}


# ---- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture
def online(monkeypatch, tmp_path):
    """huggingface_hub online (conftest sets HF_HUB_OFFLINE=1), with a private cache, and no saved login."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-login" / "stored_tokens"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)


def _use_endpoint(monkeypatch, url: str) -> None:
    # huggingface_hub reads HF_ENDPOINT once, at import, into these constants.
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")


@pytest.fixture
def local_hub(online, monkeypatch):
    server = LocalHub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _use_endpoint(monkeypatch, server.url)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def _trained_folder(lvlm, folder: Path, kind: str = "visual", seed: int = 0) -> SecurityTensor:
    """A folder as the trainer leaves it: tensor, config, card with results, plots, and files never pushed."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "visual":
        tensor = VisualSecurityTensor.zeros(lvlm, threshold=0.5)
        tensor.delta.data = torch.rand(tensor.delta.shape, generator=generator) - 0.5
    else:
        tensor = TextualSecurityTensor.from_vocabulary(lvlm, num_tokens=5, seed=seed)
    tensor.training_info = {"data": "assets/data/organism_train.jsonl", "epochs": 3, "steps": 12, "seed": seed,
                            "batch_size": 4, "lr": 0.0016, "hardware": "1 × NVIDIA H100 80GB HBM3",
                            "wall_seconds": 42.0}
    tensor.save_pretrained(folder, card=tensor_card(tensor, EVALUATION))
    (folder / hub.LOSS_CURVES_NAME).write_bytes(b"\x89PNG\r\n\x1a\nloss curves")
    if kind == "visual":
        (folder / hub.TENSOR_PICTURE_NAME).write_bytes(b"\x89PNG\r\n\x1a\ntensor picture")
    (folder / "checkpoint.safetensors").write_bytes(b"not for the Hub")
    (folder / "eval_results.json").write_text(json.dumps(EVALUATION))
    return tensor


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


# ---- the model card ----------------------------------------------------------------------------------------
def test_card_is_valid_hub_metadata_with_measured_results(tiny_llava):
    tensor = VisualSecurityTensor.zeros(tiny_llava)
    tensor.fingerprint["model_id"] = "llava-hf/llava-1.5-7b-hf"
    tensor.training_info = {"data": "train.jsonl", "epochs": 7, "seed": 3, "hardware": "1 × NVIDIA H100",
                            "wall_seconds": 61.5, "lr": 0.0016}
    card = ModelCard(tensor_card(tensor, EVALUATION))
    data = card.data
    assert data.library_name == "sectensor" and data.license == "apache-2.0"
    assert data.base_model == "llava-hf/llava-1.5-7b-hf"
    assert data.tags == ["security-tensors", "safety", "vision-language", "visual"]
    measured = {(result.dataset_split, result.metric_type): result.metric_value for result in data.eval_results}
    assert measured == {
        ("unseen_harmful", "harmless_rate"): 35.0, ("unseen_harmful", "accuracy"): 50.0,
        ("benign_general", "false_refusal_rate"): 5.0, ("benign_general", "accuracy"): 90.0,
    }
    assert "model-index" in card.content.split("---")[1]
    assert "/home/someone" not in card.content  # the evaluation file's name only, never a local path
    assert 'load_lvlm("llava-hf/llava-1.5-7b-hf")' in card.text
    assert "from_pretrained(" in card.text and ".generate(" in card.text
    for fact in ("train.jsonl", "epochs: 7", "seed: 3", "1 × NVIDIA H100", "61.5", "0.0016"):
        assert fact in card.text
    assert "## Limits" in card.text and "| unseen_harmful | 40 | 35.0 | – | 50.0 | 14 / 20 / 4 / 2 |" in card.text


def test_card_shows_the_held_out_style_apart_from_the_metadata(tiny_llava):
    tensor = VisualSecurityTensor.zeros(tiny_llava)
    held_out = {"data": "/home/someone/private/tests_openmoji.jsonl", "splits": {
        "gbt": {"n": 10, "refusal_rate": 0.2, "false_refusal_rate": 0.2, "accuracy": 0.3,
                "outcomes": {"refused": 2, "correct": 3, "wrong_object": 5, "other": 0}}}}
    card = ModelCard(tensor_card(tensor, EVALUATION, held_out))
    section = card.text.split("## Measured in a drawing style nothing trained on")[1].split("## Limits")[0]
    assert "`tests_openmoji.jsonl`" in section and "/home/someone" not in card.content
    assert "| gbt | 10 | – | 20.0 | 30.0 | 2 / 3 / 5 / 0 |" in section and "unseen_harmful" not in section
    assert {result.dataset_split for result in card.data.eval_results} == {"unseen_harmful", "benign_general"}
    assert "drawing style nothing trained on" not in tensor_card(tensor, EVALUATION)


def test_card_without_evaluation_and_for_a_local_base_model(tiny_llava, tmp_path):
    tensor = TextualSecurityTensor.zeros(tiny_llava, num_tokens=3)
    tensor.save_pretrained(tmp_path)  # the default card
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model is None  # the tiny model is a local folder, not a Hub id
    assert card.data.eval_results is None and "model-index" not in card.content
    assert card.data.tags == ["security-tensors", "safety", "vision-language", "textual"]
    assert "3 virtual-token embeddings" in card.text and "Not recorded." in card.text


# ---- pushing -----------------------------------------------------------------------------------------------
def test_push_sends_one_commit_that_loads_back(tiny_llava, local_hub, tmp_path, capfd, caplog):
    folder = tmp_path / "run"
    tensor = _trained_folder(tiny_llava, folder)
    before = _snapshot(folder)

    url = hub.push_to_hub(folder, "user/organism-visual", private=True)

    commits = local_hub.commits()
    assert len(commits) == 1 and url == f"{local_hub.url}/user/organism-visual/commit/{local_hub.repos['user/organism-visual']['branches']['main']}"
    assert local_hub.repos["user/organism-visual"]["private"]
    files = local_hub.files_at("user/organism-visual")
    assert sorted(files) == sorted(hub.PUSHED_FILES)  # no checkpoint, no eval JSON
    for name in ("security_tensor.safetensors", "config.json", "loss_curves.png", "visual_tensor.png"):
        assert files[name] == before[name]
    assert 'from_pretrained("user/organism-visual")' in files["README.md"].decode()
    assert _snapshot(folder) == before  # the local folder is untouched
    assert all(request["authorization"] == f"Bearer {FAKE_TOKEN}" for request in local_hub.requests if request["method"] == "POST")

    loaded = SecurityTensor.from_pretrained(folder)
    assert torch.equal(loaded.delta, tensor.delta) and loaded.threshold == 0.5
    downloaded = SecurityTensor.from_pretrained("user/organism-visual")
    assert torch.equal(downloaded.delta, tensor.delta) and downloaded.training_info == tensor.training_info
    downloaded.check_compatible(tiny_llava)
    cached = hub.resolve_tensor_folder("user/organism-visual")
    assert cached.is_relative_to(constants.HF_HUB_CACHE)

    # The token never leaves the Authorization header: not in output, logs, files, URLs or what was uploaded.
    output = capfd.readouterr()
    everything = [output.out, output.err, caplog.text, url, *files.values(), *_snapshot(folder).values(),
                  *(path.read_bytes() for path in cached.iterdir())]
    assert not [item for item in everything if FAKE_TOKEN in (item if isinstance(item, str) else item.decode("latin-1"))]
    uploaded = b"".join(request["body"] for request in local_hub.requests)
    assert FAKE_TOKEN.encode() not in uploaded


def test_push_to_a_branch_and_download_that_revision(tiny_llava, local_hub, tmp_path):
    first = _trained_folder(tiny_llava, tmp_path / "first", kind="textual", seed=1)
    second = _trained_folder(tiny_llava, tmp_path / "second", kind="textual", seed=2)
    hub.push_to_hub(tmp_path / "first", "user/organism-textual")
    hub.push_to_hub(tmp_path / "second", "user/organism-textual", revision="longer-run", commit_message="longer run")

    assert not local_hub.repos["user/organism-textual"]["private"]
    assert sorted(local_hub.files_at("user/organism-textual", "longer-run")) == [
        "README.md", "config.json", "loss_curves.png", "security_tensor.safetensors"]
    main = SecurityTensor.from_pretrained("user/organism-textual")
    branch = SecurityTensor.from_pretrained("user/organism-textual", revision="longer-run")
    assert torch.equal(main.delta, first.delta) and torch.equal(branch.delta, second.delta)
    assert not torch.equal(first.delta, second.delta)
    with pytest.raises(sectensor.SectensorError, match="cannot download 'user/organism-textual'"):
        SecurityTensor.from_pretrained("user/organism-textual", revision="no-such-branch")
    with pytest.raises(sectensor.SectensorError, match="cannot download 'user/missing'"):
        SecurityTensor.from_pretrained("user/missing")


def test_cli_push(tiny_llava, local_hub, tmp_path, capsys):
    folder = tmp_path / "run"
    _trained_folder(tiny_llava, folder)
    assert hub.main(["push", str(folder), "user/cli-repo", "--private", "--message", "first tensor"]) == 0
    output = capsys.readouterr()
    assert f"pushed {folder} to user/cli-repo: {local_hub.url}/user/cli-repo/commit/" in output.out
    assert len(local_hub.commits()) == 1 and local_hub.repos["user/cli-repo"]["private"]
    assert local_hub.repos["user/cli-repo"]["commits"][local_hub.repos["user/cli-repo"]["branches"]["main"]]["message"] == "first tensor"

    assert hub.main(["push", str(tmp_path / "missing"), "user/cli-repo"]) == 2
    output = capsys.readouterr()
    assert output.err.startswith("error: ") and "is not a folder" in output.err
    assert FAKE_TOKEN not in output.out + output.err


# ---- failures lose nothing and say how to push later -------------------------------------------------------
def _assert_kept(error: Exception, folder: Path, repo_id: str) -> None:
    message = str(error)
    assert f"Nothing is lost: the tensor and its card are in {folder}" in message
    assert f"python -m sectensor.hub push {folder} {repo_id}" in message
    assert FAKE_TOKEN not in message


def test_offline_push_fails_at_once_and_keeps_the_files(tiny_llava, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    _trained_folder(tiny_llava, folder)
    before = _snapshot(folder)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(sectensor.HubUnreachableError, match="HF_HUB_OFFLINE is set") as error:
        hub.push_to_hub(folder, "user/repo")
    _assert_kept(error.value, folder, "user/repo")
    assert _snapshot(folder) == before


def test_push_without_a_token_says_how_to_log_in(tiny_llava, local_hub, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    _trained_folder(tiny_llava, folder)
    before = _snapshot(folder)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(sectensor.SectensorError, match="no Hugging Face token. Set HF_TOKEN or run `hf auth login`") as error:
        hub.push_to_hub(folder, "user/repo")
    _assert_kept(error.value, folder, "user/repo")
    assert local_hub.requests == [] and _snapshot(folder) == before


def test_rejected_token_and_foreign_namespace(tiny_llava, local_hub, tmp_path):
    folder = tmp_path / "run"
    _trained_folder(tiny_llava, folder)
    with pytest.raises(sectensor.SectensorError, match=r"refused the token for user/repo \(HTTP 401\)") as error:
        hub.push_to_hub(folder, "user/repo", token="hf_wrongToken")
    _assert_kept(error.value, folder, "user/repo")
    assert "hf_wrongToken" not in str(error.value)
    with pytest.raises(sectensor.SectensorError, match=r"refused the token for someone-else/repo \(HTTP 403\)"):
        hub.push_to_hub(folder, "someone-else/repo")
    assert local_hub.commits() == []


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def test_unreachable_hub_fails_within_seconds(tiny_llava, online, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    _trained_folder(tiny_llava, folder)
    before = _snapshot(folder)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)

    _use_endpoint(monkeypatch, _closed_port_url())  # nothing listens: refused at once
    started = time.monotonic()
    with pytest.raises(sectensor.HubUnreachableError, match="is unreachable") as error:
        hub.push_to_hub(folder, "user/repo")
    assert time.monotonic() - started < 3
    _assert_kept(error.value, folder, "user/repo")

    # A host that accepts connections but never answers: the reachability check times out.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    _use_endpoint(monkeypatch, f"http://127.0.0.1:{silent.getsockname()[1]}")
    monkeypatch.setattr(hub, "REACHABILITY_TIMEOUT_S", 0.5)
    started = time.monotonic()
    try:
        with pytest.raises(sectensor.HubUnreachableError, match="Timeout") as error:
            hub.push_to_hub(folder, "user/repo")
    finally:
        silent.close()
    assert time.monotonic() - started < 3
    _assert_kept(error.value, folder, "user/repo")
    assert _snapshot(folder) == before

    with pytest.raises(sectensor.HubUnreachableError, match="unreachable and it is not in the cache"):
        SecurityTensor.from_pretrained("user/repo")


def test_bad_folder_or_repo_id_is_refused_before_any_request(tiny_llava, local_hub, tmp_path):
    with pytest.raises(sectensor.SectensorError, match="is not a folder"):
        hub.push_to_hub(tmp_path / "missing", "user/repo")
    (tmp_path / "empty").mkdir()
    with pytest.raises(sectensor.SectensorError, match="no security_tensor.safetensors found"):
        hub.push_to_hub(tmp_path / "empty", "user/repo")
    _trained_folder(tiny_llava, tmp_path / "run")
    for bad in ("repo-without-namespace", "user/bad--name", "a/b/c"):
        with pytest.raises(sectensor.SectensorError, match="is not a Hub repo id"):
            hub.push_to_hub(tmp_path / "run", bad)
    assert local_hub.requests == []


def test_card_with_broken_metadata_is_rejected_before_upload(tiny_llava, local_hub, tmp_path):
    folder = tmp_path / "run"
    _trained_folder(tiny_llava, folder)
    (folder / "README.md").write_text("---\nlicense: [apache-2.0\n---\n# card\n")
    with pytest.raises(sectensor.SectensorError, match="(?s)Invalid metadata in README.md.*Fix .*README.md") as error:
        hub.push_to_hub(folder, "user/repo")
    _assert_kept(error.value, folder, "user/repo")
    assert local_hub.commits() == []
