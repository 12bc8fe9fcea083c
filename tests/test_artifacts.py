"""Saving and loading security tensors: safetensors only, and only for the model they were made for."""

import json
import pickle

import pytest
import torch

import sectensor
from sectensor import SecurityTensor, TextualSecurityTensor, VisualSecurityTensor


@pytest.mark.parametrize("kind", ["visual", "textual"])
def test_round_trip(tiny_llava, tmp_path, kind):
    if kind == "visual":
        tensor = VisualSecurityTensor.zeros(tiny_llava, threshold=0.75)
        tensor.delta.data.uniform_(-0.5, 0.5)
    else:
        tensor = TextualSecurityTensor.from_vocabulary(tiny_llava, num_tokens=7)
    tensor.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "security_tensor.safetensors"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["kind"] == kind and config["shape"] == list(tensor.delta.shape)
    assert config["base_model"]["architecture"] == "LlavaForConditionalGeneration"
    assert {"model_id", "config_hash", "weights_hash", "parameters_hash", "image_shape", "text_hidden_size"} <= set(
        config["base_model"])
    loaded = SecurityTensor.from_pretrained(tmp_path)
    assert type(loaded) is type(tensor) and torch.equal(loaded.delta, tensor.delta)
    loaded.check_compatible(tiny_llava)
    if kind == "visual":
        assert loaded.threshold == 0.75


def test_textual_placement_is_saved_and_older_artifacts_read_as_before_text(tiny_llava, tmp_path):
    tensor = TextualSecurityTensor.from_vocabulary(tiny_llava, num_tokens=3, placement="before_image")
    tensor.save_pretrained(tmp_path)
    assert SecurityTensor.from_pretrained(tmp_path).placement == "before_image"
    assert "inserted just before the picture" in (tmp_path / "README.md").read_text()
    config = json.loads((tmp_path / "config.json").read_text())
    del config["placement"]  # as written before placements existed
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert SecurityTensor.from_pretrained(tmp_path).placement == "before_text"
    config["placement"] = "after_everything"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(sectensor.SectensorError, match="unknown δt placement 'after_everything'"):
        SecurityTensor.from_pretrained(tmp_path)


def test_pickle_is_never_loaded(tiny_llava, tmp_path):
    torch.save({"delta": torch.zeros(3)}, tmp_path / "security_tensor.pt")
    with pytest.raises(sectensor.SectensorError, match="pickle files are never loaded"):
        SecurityTensor.from_pretrained(tmp_path)
    # A pickle renamed to .safetensors is rejected by the safetensors parser, never unpickled.
    VisualSecurityTensor.zeros(tiny_llava).save_pretrained(tmp_path)
    (tmp_path / "security_tensor.safetensors").write_bytes(pickle.dumps({"delta": [0.0]}))
    with pytest.raises(sectensor.SectensorError, match="not a valid safetensors"):
        SecurityTensor.from_pretrained(tmp_path)


def test_tensor_for_another_model_is_refused(tiny_llava, tmp_path_factory):
    from tiny_models import build_tiny_llava

    other_dir = build_tiny_llava(tmp_path_factory.mktemp("other"), seed=1)
    other = sectensor.load_lvlm(other_dir, device="cpu")
    tensor = VisualSecurityTensor.zeros(other)
    with pytest.raises(sectensor.TensorMismatchError) as error:
        tiny_llava.generate([None], ["hello"], tensor=tensor)
    assert str(other_dir) in str(error.value) and str(tiny_llava.name_or_path) in str(error.value)

    # A copy that differs only in its projector (as a fine-tune of it would), embeddings unchanged.
    retrained = sectensor.load_lvlm(tiny_llava.name_or_path, device="cpu")
    with torch.no_grad():
        retrained.model.model.multi_modal_projector.linear_2.weight.mul_(1.5)
    mine = VisualSecurityTensor.zeros(tiny_llava)
    with pytest.raises(sectensor.TensorMismatchError, match=r"their weights differ \(parameters_hash\)"):
        mine.check_compatible(retrained)
    # A tensor saved before the parameters hash existed is checked on the keys it has, as then.
    older = VisualSecurityTensor.zeros(tiny_llava)
    del older.fingerprint["parameters_hash"]
    older.check_compatible(retrained)
    older.check_compatible(tiny_llava)

    bigger = sectensor.load_lvlm(build_tiny_llava(tmp_path_factory.mktemp("bigger"), image_size=48), device="cpu")
    with pytest.raises(sectensor.TensorMismatchError, match=r"shape \(3, 32, 32\).*needs \(3, 48, 48\)"):
        VisualSecurityTensor.zeros(tiny_llava).check_compatible(bigger)


def test_fingerprint_does_not_depend_on_dtype_or_memory_layout(tiny_llava):
    from transformers import AutoModelForImageTextToText

    # load_lvlm keeps CPU weights transposed and joined; a plain bfloat16 load keeps the checkpoint's layout.
    plain = AutoModelForImageTextToText.from_pretrained(tiny_llava.name_or_path, dtype=torch.bfloat16)
    assert sectensor.tensors.parameters_hash(plain) == sectensor.model_fingerprint(tiny_llava)["parameters_hash"]


def test_corrupt_config_and_missing_folder(tiny_llava, tmp_path):
    VisualSecurityTensor.zeros(tiny_llava).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(sectensor.SectensorError, match="config.json is not valid JSON"):
        SecurityTensor.from_pretrained(tmp_path)
    with pytest.raises(sectensor.SectensorError, match="no security tensor folder"):
        SecurityTensor.from_pretrained(tmp_path / "missing")
