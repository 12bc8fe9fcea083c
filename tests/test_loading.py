"""Loading models: local folders, Hub ids offline, unsupported architectures."""

import time

import pytest
import torch

import sectensor


def test_unknown_architecture_is_named(tmp_path):
    from transformers import GPT2Config

    config = GPT2Config(n_layer=1, n_head=2, n_embd=8)
    config.architectures = ["GPT2LMHeadModel"]
    config.save_pretrained(tmp_path)
    with pytest.raises(sectensor.UnsupportedModelError, match="not supported yet: GPT2LMHeadModel.*LlavaForConditionalGeneration"):
        sectensor.load_lvlm(tmp_path, device="cpu")


def test_hub_id_offline_fails_fast_with_the_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(sectensor.HubUnreachableError, match="llava-hf/llava-1.5-7b-hf.*unreachable"):
        sectensor.load_lvlm("llava-hf/llava-1.5-7b-hf", device="cpu")
    assert time.monotonic() - start < 10


def test_missing_local_folder():
    with pytest.raises(sectensor.SectensorError, match="no model folder"):
        sectensor.load_lvlm("./no/such/model", device="cpu")


def test_loaded_model_is_frozen(tiny_llava):
    assert not any(p.requires_grad for p in tiny_llava.model.parameters())
    assert not tiny_llava.model.training


def test_cpu_linear_weights_are_stored_transposed_with_the_checkpoints_values(tiny_llava, tiny_llava_dir):
    """On CPUs every linear weight is a view of an (in, out)-row-major tensor (faster 1–2-row products in
    decoding), q/k/v and gate/up side by side in one, holding exactly the values transformers loads from the
    checkpoint."""
    from transformers import AutoModelForImageTextToText

    from sectensor.decoding import _joined_weight

    linears = {name: module for name, module in tiny_llava.model.named_modules() if isinstance(module, torch.nn.Linear)}
    assert linears
    for name, module in linears.items():
        assert module.weight.stride(0) == 1 and module.weight.stride(1) >= module.weight.shape[0], name
    for layer in tiny_llava.model.get_decoder().layers:
        attention, mlp = layer.self_attn, layer.mlp
        assert _joined_weight([attention.q_proj, attention.k_proj, attention.v_proj]) is not None
        assert _joined_weight([mlp.gate_proj, mlp.up_proj]) is not None
    plain = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir, dtype=torch.float32).state_dict()
    ours = tiny_llava.model.state_dict()
    assert ours.keys() == plain.keys()
    for name, value in plain.items():
        assert torch.equal(ours[name], value), name
