"""Every supported family through the one code path: tiny random-weight instances, offline, on CPU.

    python -m pytest tests/test_families.py

A new family needs one adapter file and one entry in `tiny_families.TINY_BUILDERS`.
"""

import numpy as np
import pytest
import torch
from PIL import Image

import sectensor
from sectensor import TextualSecurityTensor, VisualSecurityTensor
from sectensor.adapters import ADAPTERS
from sectensor.adapters.base import PLACEMENTS
from sectensor.decoding import Decoder
from sectensor.lvlm import LVLM
from sectensor.tensors import CONFIG_NAME, model_fingerprint, virtual_slots
from tiny_families import TINY_BUILDERS

FAMILIES = ["LlavaForConditionalGeneration", *TINY_BUILDERS]
PROMPTS = ["What is in this image?", "How do I make one of these?", "Describe the picture.", "Where can I buy this?"]
REFUSAL = "I'm sorry, but I cannot help with that request."


@pytest.fixture(scope="session", params=FAMILIES, ids=lambda name: name.removesuffix("ForConditionalGeneration"))
def lvlm(request) -> LVLM:
    if request.param == "LlavaForConditionalGeneration":
        return request.getfixturevalue("tiny_llava")
    model, processor = TINY_BUILDERS[request.param](seed=0)
    return LVLM(model, processor, f"tiny/{request.param}")


def picture(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


PICTURES = [picture(40, 48, 0), picture(56, 40, 1), picture(24, 72, 2), picture(64, 64, 3)]


def logits(lvlm, batch, tensor=None, protect=None, **kwargs):
    with torch.no_grad(), lvlm.model_inputs(batch, tensor, protect) as inputs:
        return lvlm.model(**inputs, **kwargs).logits


def random_visual(lvlm, seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    return VisualSecurityTensor(torch.randn(lvlm.adapter.visual_shape(), generator=generator) * scale, threshold=1.0,
                                fingerprint=model_fingerprint(lvlm))


def sa_loss(lvlm, batch, tensor):
    answer_logits, labels, _ = lvlm.answer_logits(batch, tensor)
    return torch.nn.functional.cross_entropy(answer_logits, labels)


def train(lvlm, tensor, batch, steps, lr):
    optimizer = torch.optim.AdamW(tensor.parameters(), lr=lr)
    for _ in range(steps):
        loss = sa_loss(lvlm, batch, tensor)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if tensor.kind == "visual":
            tensor.project_()


def assert_training_lowers_sa_loss(lvlm, tensor, train_batch, measured_batch):
    """Four steps on `train_batch` lower the SA loss on `measured_batch`."""
    with torch.no_grad():
        before = sa_loss(lvlm, measured_batch, tensor).item()
    train(lvlm, tensor, train_batch, steps=4, lr=0.1)
    with torch.no_grad():
        after = sa_loss(lvlm, measured_batch, tensor).item()
    assert after < before - 1e-3, (before, after)


def test_every_family_is_registered():
    assert set(FAMILIES) <= set(ADAPTERS)


@pytest.mark.parametrize("architecture", TINY_BUILDERS)
def test_load_lvlm_from_a_saved_folder(architecture, tmp_path):
    import importlib.util

    model, processor = TINY_BUILDERS[architecture](seed=0)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    if hasattr(processor, "video_processor") and importlib.util.find_spec("torchvision") is None:
        with pytest.raises(sectensor.SectensorError, match="cannot load.*Torchvision"):
            sectensor.load_lvlm(tmp_path, device="cpu")
        return
    lvlm = sectensor.load_lvlm(tmp_path, device="cpu")
    assert lvlm.adapter.architectures == sectensor.adapters.ADAPTERS[architecture].architectures
    assert lvlm.architecture == architecture
    assert lvlm.encode(PICTURES[:1], PROMPTS[:1]).image_rows.tolist() == [0]


def test_zero_visual_tensor_is_bit_identical(lvlm):
    batch = lvlm.encode(PICTURES, PROMPTS)
    zero = VisualSecurityTensor.zeros(lvlm)
    assert torch.equal(logits(lvlm, batch), logits(lvlm, batch, zero))
    assert lvlm.generate(PICTURES[:2], PROMPTS[:2], tensor=zero, max_new_tokens=4) == lvlm.generate(
        PICTURES[:2], PROMPTS[:2], max_new_tokens=4
    )


def test_nonzero_tensors_change_logits(lvlm):
    batch = lvlm.encode(PICTURES, PROMPTS)
    base = logits(lvlm, batch)[:, -1]
    assert not torch.allclose(base, logits(lvlm, batch, random_visual(lvlm))[:, -1], atol=1e-4)
    textual = TextualSecurityTensor.from_vocabulary(lvlm, num_tokens=4)
    with_slots = lvlm.encode(PICTURES, PROMPTS, virtual_tokens=4)
    assert not torch.allclose(base, logits(lvlm, with_slots, textual)[:, -1], atol=1e-4)


def test_image_feature_noise_reaches_the_language_model_as_the_pictures_features(lvlm):
    """`image_feature_module` is the module whose output the language model reads as the pictures: its output
    is as wide as the language model, noise there changes the answers' logits, and scale 0 changes nothing."""
    batch = lvlm.encode(PICTURES, PROMPTS)
    widths = []
    handle = lvlm.image_feature_module.register_forward_hook(
        lambda module, args, output: widths.append(output.shape[-1]))
    base = logits(lvlm, batch)[:, -1]
    handle.remove()
    assert widths and set(widths) == {lvlm.hidden_size}
    with lvlm.image_feature_noise(0.0, torch.Generator().manual_seed(0)):
        assert torch.equal(logits(lvlm, batch)[:, -1], base)
    with lvlm.image_feature_noise(1.0, torch.Generator().manual_seed(0)):
        assert not torch.allclose(logits(lvlm, batch)[:, -1], base, atol=1e-4)
    assert torch.equal(logits(lvlm, batch)[:, -1], base)


def test_uniform_visual_tensor_lands_on_the_picture_pixels(lvlm):
    """A constant δv must add exactly what brightening the picture adds: on every real pixel of every tile or
    patch, and nowhere on padding. This pins the mapping's placement, tiling and padding for each family."""
    image_processor = lvlm.processor.image_processor
    std = torch.tensor(image_processor.image_std, dtype=torch.float32)
    shift = 40
    for height, width in [(40, 48), (24, 72), (16, 16)]:
        dark = Image.new("RGB", (width, height), (100, 100, 100))
        bright = Image.new("RGB", (width, height), (100 + shift, 100 + shift, 100 + shift))
        batch = lvlm.encode([dark, bright], PROMPTS[:1] * 2)
        delta = (shift * image_processor.rescale_factor / std).view(3, 1, 1).expand(lvlm.adapter.visual_shape())
        one_image = {name: value[:1] for name, value in batch.image_fields.items()}
        brightened = lvlm.adapter.apply_visual(one_image, delta, torch.tensor([True]))
        expected = {name: value[1:] for name, value in batch.image_fields.items()}
        rows = torch.zeros(1, dtype=torch.long)
        got = lvlm.adapter.model_image_inputs(brightened, rows, batch.input_ids[:1])
        want = lvlm.adapter.model_image_inputs(expected, rows, batch.input_ids[1:])
        assert got.keys() == want.keys()
        for name in got:
            torch.testing.assert_close(got[name], want[name], atol=2e-5, rtol=0, msg=f"{name} for a {height}x{width} picture")


def test_tile_and_patch_orders_match_the_processors():
    """The uniform check above cannot see order; here the mapping's cuts are compared value by value with the
    processors' own: LLaVA-NeXT's and Idefics3's row-major patches, Mllama's tiles, Qwen's merge-ordered patches."""
    from transformers.image_transforms import divide_to_patches
    from transformers.models.mllama.image_processing_pil_mllama import split_to_tiles_np

    from sectensor.adapters.layout import split_tiles

    canvas = torch.randn(3, 64, 96, generator=torch.Generator().manual_seed(0))
    tiles = split_tiles(canvas, 32, 32)
    assert torch.equal(tiles, torch.from_numpy(np.stack(divide_to_patches(canvas.numpy(), 32))))
    assert torch.equal(tiles, torch.from_numpy(split_to_tiles_np(canvas.numpy(), 2, 3)))
    model, processor = TINY_BUILDERS["Qwen2VLForConditionalGeneration"](seed=0)
    adapter = LVLM(model, processor, "tiny").adapter
    delta = torch.randn(3, 16, 24, generator=torch.Generator().manual_seed(1))  # already at the resized size
    patches, grid_height, grid_width = processor.image_processor.patchify(
        delta.numpy(), patch_size=4, merge_size=2, temporal_patch_size=2
    )
    assert torch.equal(adapter.map_delta(delta, grid_height, grid_width), torch.from_numpy(np.ascontiguousarray(patches)))


@pytest.mark.parametrize("kind", ["visual", "textual"])
def test_gradients_reach_the_tensor_only(lvlm, kind):
    if kind == "visual":
        tensor = random_visual(lvlm, scale=0.1)
        batch = lvlm.encode(PICTURES[:2], PROMPTS[:2], answers=[REFUSAL, "A cat."])
    else:
        tensor = TextualSecurityTensor.from_vocabulary(lvlm, num_tokens=3)
        batch = lvlm.encode(PICTURES[:2], PROMPTS[:2], answers=[REFUSAL, "A cat."], virtual_tokens=3)
    sa_loss(lvlm, batch, tensor).backward()
    assert tensor.delta.grad is not None and tensor.delta.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in lvlm.model.parameters())


def random_textual(lvlm, slots, seed, placement="before_text"):
    return TextualSecurityTensor(torch.randn(slots, lvlm.hidden_size, generator=torch.Generator().manual_seed(seed)),
                                 model_fingerprint(lvlm), placement)


@pytest.mark.parametrize("kind, placement", [("visual", "before_text"), ("textual", "before_text"),
                                             ("textual", "before_image")])
def test_fast_training_path_matches_a_straightforward_forward(lvlm, kind, placement):
    """answer_logits (right padding without a mask; for δt after the picture a frozen prefix run once; the last
    MLP only where answers are predicted) gives the loss and the gradient of a plain forward over the left-padded
    batch with full logits."""
    from sectensor.lvlm import _AtPositions, _last_mlp_of

    assert isinstance(_last_mlp_of(lvlm.model), _AtPositions)
    slots = 3 if kind == "textual" else 0
    tensor = random_visual(lvlm, scale=0.5) if kind == "visual" else random_textual(lvlm, slots, 2, placement)
    prompts = ["What is it?", "Describe the picture in a few words, please, and say where it is."]
    batch = lvlm.encode(PICTURES[:1] * 2, prompts, answers=[REFUSAL, "A cat."], virtual_tokens=slots, placement=placement)
    assert not batch.attention_mask.all(), "the rows should differ in length, so that the batch has padding"

    fast = sa_loss(lvlm, batch, tensor)
    (fast_grad,) = torch.autograd.grad(fast, tensor.delta)
    with lvlm.model_inputs(batch, tensor) as inputs:
        full = lvlm.model(**inputs).logits
    predicting = torch.zeros_like(batch.target_mask)
    predicting[:, :-1] = batch.target_mask[:, 1:]
    plain = torch.nn.functional.cross_entropy(full[predicting].float(), batch.input_ids[batch.target_mask])
    (plain_grad,) = torch.autograd.grad(plain, tensor.delta)

    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_grad, plain_grad, atol=1e-6, rtol=1e-4)
    if kind == "textual" and lvlm.adapter.supports_prefix_cache:
        from sectensor.lvlm import _right_padded

        right = _right_padded(batch)
        predicting_right = torch.zeros_like(right.target_mask)
        predicting_right[:, :-1] = right.target_mask[:, 1:]
        split = lvlm._frozen_prefix_length(right, tensor, None, predicting_right)
        if placement == "before_text":
            assert split > 0, "the frozen prefix was not used"
        else:
            assert split == 0, "the image tokens follow δt: they cannot be a frozen prefix"


@pytest.mark.parametrize("kind", ["visual", "textual"])
def test_a_few_training_steps_lower_the_sa_loss(lvlm, kind):
    slots = 4 if kind == "textual" else 0
    batch = lvlm.encode(PICTURES[:2], PROMPTS[1:3], answers=[REFUSAL, REFUSAL], virtual_tokens=slots)
    tensor = TextualSecurityTensor.from_vocabulary(lvlm, num_tokens=slots) if kind == "textual" else VisualSecurityTensor.zeros(lvlm)
    assert_training_lowers_sa_loss(lvlm, tensor, batch, batch)


@pytest.mark.parametrize("kind, placement", [("visual", "before_text"), ("textual", "before_text"),
                                             ("textual", "before_image")])
def test_mixed_batch_equals_separate_runs(lvlm, kind, placement):
    tensor = random_visual(lvlm, seed=1, scale=2.0) if kind == "visual" else random_textual(lvlm, 5, 1, placement)
    slots = 5 if kind == "textual" else 0
    images = [PICTURES[0], PICTURES[0], PICTURES[2], PICTURES[2]]
    prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1]]
    protect = [False, True, False, True]
    encoded = lvlm.encode(images, prompts, virtual_tokens=slots, protect=protect, placement=placement)
    mixed = logits(lvlm, encoded, tensor, protect)[:, -1]
    for row in range(4):
        alone_tensor = tensor if protect[row] else None
        alone = logits(lvlm, lvlm.encode(images[row:row + 1], prompts[row:row + 1],
                                         virtual_tokens=slots if protect[row] else 0, placement=placement),
                       alone_tensor)[0, -1]
        torch.testing.assert_close(mixed[row], alone, atol=1e-4, rtol=1e-4)
    answers = lvlm.generate(images, prompts, tensor=tensor, protect=protect, max_new_tokens=3)
    assert answers[1] == lvlm.generate(images[1:2], prompts[1:2], tensor=tensor, max_new_tokens=3)[0]
    assert answers[2] == lvlm.generate(images[2:3], prompts[2:3], max_new_tokens=3)[0]


def test_textual_tensor_placed_before_the_image_sits_before_every_image_token(lvlm):
    """`before_image` slots come before the family's image block; dropping them gives the row without δt, and the
    default slots (before the text) come after the image tokens."""
    adapter = lvlm.adapter
    plain = adapter.encode(PICTURES[1], PROMPTS[1])
    before_image = adapter.encode(PICTURES[1], PROMPTS[1], 4, "before_image")
    before_text = adapter.encode(PICTURES[1], PROMPTS[1], 4)
    slots = torch.nonzero(before_image.virtual_mask).flatten()
    assert torch.equal(slots, torch.arange(int(slots[0]), int(slots[0]) + 4))
    assert torch.equal(before_image.input_ids[~before_image.virtual_mask], plain.input_ids)
    for name, value in plain.token_fields.items():
        assert torch.equal(before_image.token_fields[name][~before_image.virtual_mask], value)
    image_tokens = adapter.image_token_mask(before_image.input_ids[None])[0]
    assert image_tokens.any() and int(torch.nonzero(image_tokens)[0]) > int(slots[-1])
    plain_image_tokens = adapter.image_token_mask(plain.input_ids[None])[0]
    assert int(torch.nonzero(before_text.virtual_mask)[0]) > int(torch.nonzero(plain_image_tokens)[-1])
    text_only = adapter.encode(None, PROMPTS[1], 4, "before_image")
    assert torch.equal(text_only.input_ids, adapter.encode(None, PROMPTS[1], 4).input_ids)


def test_decoding_loop_gives_generates_tokens(lvlm):
    """The fast decoding loop (prefill, then language-model steps) picks exactly the tokens `generate` picks,
    in a batch mixing a protected row, its unprotected twin and a text-only row, and stops rows at their EOS."""
    if not lvlm.adapter.decodes_with_language_model:
        pytest.skip(f"{lvlm.architecture} decodes with model.generate")
    tensor = TextualSecurityTensor(torch.randn(5, lvlm.hidden_size, generator=torch.Generator().manual_seed(3)),
                                   model_fingerprint(lvlm))
    protect = [False, True, False]
    batch = lvlm.encode([PICTURES[1], PICTURES[1], None], [PROMPTS[0], PROMPTS[0], PROMPTS[3]], virtual_tokens=5,
                        protect=protect)

    def generated(eos_token_id):
        with torch.no_grad(), lvlm.model_inputs(batch, tensor, protect) as inputs:
            output = lvlm.model.generate(**inputs, max_new_tokens=10, do_sample=False, num_beams=1,
                                         pad_token_id=lvlm.adapter.placeholder_token_id, eos_token_id=eos_token_id)
        rows = output[:, batch.input_ids.shape[1]:].tolist()
        return [row[: row.index(eos_token_id)] if eos_token_id in row else row for row in rows]

    unstopped = lvlm.decoder.decode(batch, tensor, protect, max_new_tokens=10, eos_token_id=-1)
    assert unstopped == generated(-1)
    eos = unstopped[1][4]  # stop the protected row after a few tokens
    stopped = lvlm.decoder.decode(batch, tensor, protect, max_new_tokens=10, eos_token_id=eos)
    assert stopped == generated(eos)
    assert len(stopped[1]) < 10
    if lvlm.adapter.supports_static_cache:  # the GPU path's static cache, buffers and position updates, run eagerly
        static = Decoder(lvlm, static=True)
        assert static.decode(batch, tensor, protect, max_new_tokens=10, eos_token_id=-1) == unstopped
        assert static.decode(batch, tensor, protect, max_new_tokens=10, eos_token_id=eos) == stopped


@pytest.mark.parametrize("prompt", PROMPTS[:2])
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_side_by_side_rows_prefill_their_shared_prefix_once_and_decode_as_alone(lvlm, prompt, placement):
    """A base row and its δt-protected twin (the app's side by side) share the chat prefix, and the picture when δt
    comes after it: the decoding loop prefills those once, in the longest row's pass, and then the other row's
    rest, unpadded, with its picture if it lies there; each row still decodes exactly the tokens it decodes alone."""
    from sectensor.decoding import _shared_prefix_length

    if not lvlm.adapter.decodes_with_language_model:
        pytest.skip(f"{lvlm.architecture} decodes with model.generate")
    # Before the picture the rows share only the chat prefix; as many virtual tokens as the base row has make the
    # padding the other row's pass saves worth sharing for.
    num_tokens = 12 if placement == "before_text" else lvlm.encode(PICTURES[:1], [prompt]).input_ids.shape[1]
    values = torch.randn(num_tokens, lvlm.hidden_size, generator=torch.Generator().manual_seed(4))
    tensor = TextualSecurityTensor(values, model_fingerprint(lvlm), placement)
    batch = lvlm.encode([PICTURES[0]] * 2, [prompt] * 2, protect=[False, True], **virtual_slots(tensor))
    shared = _shared_prefix_length(lvlm, batch, tensor, [False, True])
    if lvlm.architecture == "Gemma3ForConditionalGeneration":
        assert shared == 0  # its sliding-window layers keep only their last keys: no cache to copy
    else:
        assert shared > 0
    embedded = []
    hook = lvlm.model.get_input_embeddings().register_forward_hook(
        lambda module, args, output: embedded.append(output.shape[0] * output.shape[1]))
    try:
        together = lvlm.decoder.decode(batch, tensor, [False, True], max_new_tokens=12, eos_token_id=-1)
    finally:
        hook.remove()
    lengths = batch.attention_mask.sum(1)
    prefill = sum(embedded[:-11])  # the 11 steps after the first token embed one token a row
    assert prefill == (int(shared + (lengths - shared).sum()) if shared else batch.input_ids.numel())
    assert len(embedded) - 11 == (batch.size if shared else 1)  # one pass a row: the longest whole, then the rests
    alone_base = lvlm.decoder.decode(lvlm.encode(PICTURES[:1], [prompt]), None, None, 12, eos_token_id=-1)
    alone_protected = lvlm.decoder.decode(lvlm.encode(PICTURES[:1], [prompt], **virtual_slots(tensor)), tensor, None,
                                          12, eos_token_id=-1)
    assert together == alone_base + alone_protected


def test_text_only_row_batched_with_images_equals_its_own_run(lvlm):
    if lvlm.architecture == "MllamaForConditionalGeneration":
        pytest.skip("Mllama adds gated cross-attention over padding tiles to text-only rows (see adapters/mllama.py)")
    mixed = logits(lvlm, lvlm.encode([PICTURES[0], None], PROMPTS[:2]))[:, -1]
    alone = logits(lvlm, lvlm.encode([None], PROMPTS[1:2]))[0, -1]
    torch.testing.assert_close(mixed[1], alone, atol=1e-4, rtol=1e-4)


def test_visual_tensor_trained_on_one_size_applies_to_another(lvlm):
    scene = picture(5, 6, seed=5)  # a smooth picture, drawn at two sizes and aspect ratios
    small, large = scene.resize((48, 40), Image.BILINEAR), scene.resize((80, 64), Image.BILINEAR)
    train_batch = lvlm.encode([small], [PROMPTS[1]], answers=[REFUSAL])
    other_batch = lvlm.encode([large], [PROMPTS[1]], answers=[REFUSAL])
    assert_training_lowers_sa_loss(lvlm, VisualSecurityTensor.zeros(lvlm), train_batch, other_batch)


def test_save_load_round_trip_names_the_architecture(lvlm, tmp_path):
    import json

    visual = random_visual(lvlm, seed=3)
    textual = TextualSecurityTensor.from_vocabulary(lvlm, num_tokens=3)
    for tensor in (visual, textual):
        folder = tensor.save_pretrained(tmp_path / tensor.kind)
        loaded = sectensor.SecurityTensor.from_pretrained(folder)
        assert type(loaded) is type(tensor) and torch.equal(loaded.delta, tensor.delta)
        config = json.loads((folder / CONFIG_NAME).read_text())
        assert config["base_model"]["architecture"] == lvlm.architecture
        assert config["base_model"]["text_hidden_size"] == lvlm.hidden_size
        loaded.check_compatible(lvlm)
    batch = lvlm.encode(PICTURES[:2], PROMPTS[:2])
    reloaded = sectensor.SecurityTensor.from_pretrained(tmp_path / "visual")
    assert torch.equal(logits(lvlm, batch, visual), logits(lvlm, batch, reloaded))


def test_fingerprint_tells_families_apart():
    hashes = {}
    for architecture, build in TINY_BUILDERS.items():
        model, processor = build(seed=0)
        fingerprint = model_fingerprint(LVLM(model, processor, "tiny"))
        assert fingerprint["architecture"] == architecture
        assert fingerprint["text_hidden_size"] == 32 and fingerprint["vision_hidden_size"] is not None
        hashes[architecture] = fingerprint["config_hash"]
    # Qwen2-VL and Qwen2.5-VL share a shape-defining config here; all the others differ.
    assert len(set(hashes.values())) >= len(hashes) - 1


def test_last_token_hidden_states_reach_every_language_layer(lvlm):
    batch = lvlm.encode(PICTURES[:2], PROMPTS[:2])
    with torch.no_grad(), lvlm.model_inputs(batch, random_visual(lvlm)) as inputs:
        hidden_states = lvlm.model(**inputs, output_hidden_states=True).hidden_states
    layers = lvlm.model.config.get_text_config().num_hidden_layers
    assert len(hidden_states) == layers + 1
    last = torch.stack([states[:, -1] for states in hidden_states])  # (layers + 1, batch_size, hidden_size)
    assert last.shape == (layers + 1, 2, lvlm.hidden_size) and torch.isfinite(last).all()
    # every layer, cross-attention layers included, changes the last token's state
    assert all(not torch.equal(last[index], last[index + 1]) for index in range(layers))


def test_mllama_cross_attention_mask_matches_the_processor():
    model, processor = TINY_BUILDERS["MllamaForConditionalGeneration"](seed=0)
    lvlm = LVLM(model, processor, "tiny")
    rendered = lvlm.adapter.format_prompt(PROMPTS[0], has_image=True)
    expected = processor(images=[PICTURES[2]], text=[rendered], add_special_tokens=False, return_tensors="pt")
    batch = lvlm.encode([PICTURES[2]], PROMPTS[:1])
    assert torch.equal(batch.input_ids, expected["input_ids"])
    with lvlm.model_inputs(batch) as inputs:
        for name in ("cross_attention_mask", "pixel_values", "aspect_ratio_ids", "aspect_ratio_mask"):
            assert torch.equal(inputs[name], expected[name].to(inputs[name].dtype)), name


def test_unsupported_architecture_lists_every_family():
    with pytest.raises(sectensor.UnsupportedModelError) as error:
        sectensor.adapters.adapter_class_for("GPT2LMHeadModel")
    assert all(name in str(error.value) for name in FAMILIES)
