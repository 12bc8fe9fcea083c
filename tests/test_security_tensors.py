"""Applying security tensors: identity at zero, mixed batches, gradients, frozen weights."""

from pathlib import Path

import pytest
import torch

import sectensor
from sectensor import TextualSecurityTensor, VisualSecurityTensor

PROMPTS = ["What is in this image?", "How do I make one of these?", "Describe the picture.", "Where can I buy this?"]


def logits(lvlm, batch, tensor=None, protect=None):
    with torch.no_grad(), lvlm.model_inputs(batch, tensor, protect) as inputs:
        return lvlm.model(**inputs).logits


def test_zero_visual_tensor_is_bit_identical(tiny_llava, pictures):
    zero = VisualSecurityTensor.zeros(tiny_llava)
    batch = tiny_llava.encode(pictures, PROMPTS)
    assert torch.equal(logits(tiny_llava, batch), logits(tiny_llava, batch, zero))
    base = tiny_llava.generate(pictures, PROMPTS, max_new_tokens=12)
    assert tiny_llava.generate(pictures, PROMPTS, tensor=zero, max_new_tokens=12) == base


def test_nonzero_tensors_change_logits(tiny_llava, pictures):
    torch.manual_seed(0)
    visual = VisualSecurityTensor(torch.randn(tiny_llava.adapter.visual_shape()), threshold=1.0)
    batch = tiny_llava.encode(pictures, PROMPTS)
    assert not torch.allclose(logits(tiny_llava, batch), logits(tiny_llava, batch, visual))
    textual = TextualSecurityTensor.from_vocabulary(tiny_llava, num_tokens=5)
    with_slots = tiny_llava.encode(pictures, PROMPTS, virtual_tokens=5)
    changed = logits(tiny_llava, with_slots, textual)[:, -1]
    assert not torch.allclose(logits(tiny_llava, batch)[:, -1], changed)


@pytest.mark.parametrize("kind", ["visual", "textual"])
def test_mixed_batch_equals_separate_runs(tiny_llava, pictures, kind):
    torch.manual_seed(1)
    if kind == "visual":
        tensor = VisualSecurityTensor(torch.randn(tiny_llava.adapter.visual_shape()) * 2, threshold=1.0)
    else:
        tensor = TextualSecurityTensor(torch.randn(6, tiny_llava.hidden_size))
    images = [pictures[0], pictures[0], None, None]
    prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1]]
    protect = [False, True, False, True]
    mixed = tiny_llava.generate(images, prompts, tensor=tensor, protect=protect, max_new_tokens=10)
    base = tiny_llava.generate(images[0::2], prompts[0::2], max_new_tokens=10)
    protected = tiny_llava.generate(images[1::2], prompts[1::2], tensor=tensor, max_new_tokens=10)
    assert mixed == [base[0], protected[0], base[1], protected[1]]
    slots = tensor.num_tokens if kind == "textual" else 0
    mixed_last = logits(tiny_llava, tiny_llava.encode(images, prompts, virtual_tokens=slots, protect=protect), tensor, protect)[:, -1]
    alone = logits(tiny_llava, tiny_llava.encode(images[1:2], prompts[1:2], virtual_tokens=slots), tensor)[:, -1]
    torch.testing.assert_close(mixed_last[1], alone[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["visual", "textual"])
def test_gradients_reach_the_tensor_only(tiny_llava, pictures, kind):
    before = {name: p.detach().clone() for name, p in tiny_llava.model.named_parameters()}
    if kind == "visual":
        tensor = VisualSecurityTensor.zeros(tiny_llava)
        batch = tiny_llava.encode(pictures[:2], PROMPTS[:2], answers=["I cannot help.", "A cat."])
    else:
        tensor = TextualSecurityTensor.from_vocabulary(tiny_llava, num_tokens=4)
        batch = tiny_llava.encode(pictures[:2], PROMPTS[:2], answers=["I cannot help.", "A cat."], virtual_tokens=4)
    optimizer = torch.optim.AdamW(tensor.parameters(), lr=1e-2)
    for _ in range(2):
        step_logits, labels, _ = tiny_llava.answer_logits(batch, tensor)
        loss = torch.nn.functional.cross_entropy(step_logits, labels)
        optimizer.zero_grad()
        loss.backward()
        assert tensor.delta.grad is not None and tensor.delta.grad.abs().sum() > 0
        optimizer.step()
    assert all(p.grad is None for p in tiny_llava.model.parameters())
    assert all(torch.equal(p, before[name]) for name, p in tiny_llava.model.named_parameters())


def test_answer_logits_match_full_forward(tiny_llava, pictures):
    batch = tiny_llava.encode(pictures[:2], PROMPTS[:2], answers=["I cannot help with that.", "A red cat."])
    answer_logits, labels, rows = tiny_llava.answer_logits(batch)
    full = logits(tiny_llava, batch)
    predicting = torch.zeros_like(batch.target_mask)
    predicting[:, :-1] = batch.target_mask[:, 1:]
    torch.testing.assert_close(answer_logits, full[predicting].float(), atol=1e-5, rtol=1e-5)
    assert torch.equal(labels, batch.input_ids[batch.target_mask])
    assert rows.tolist() == sorted(rows.tolist()) and set(rows.tolist()) == {0, 1}


def test_last_mlp_runs_only_where_answers_are_predicted(tiny_llava, pictures):
    """answer_logits runs the language model's last MLP only at the positions that predict answer tokens (the
    only ones that reach the loss), and every other forward runs it everywhere."""
    batch = tiny_llava.encode(pictures[:2], PROMPTS[:2], answers=["I cannot help with that.", "A red cat."])
    seen = []
    last_mlp = tiny_llava.model.get_decoder().layers[-1].mlp
    handle = last_mlp.down_proj.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[:-1]))
    try:
        tiny_llava.answer_logits(batch)
        logits(tiny_llava, batch)
    finally:
        handle.remove()
    answer_tokens = int(batch.target_mask.sum())
    assert seen == [torch.Size([answer_tokens]), batch.input_ids.shape]


def test_visual_tensor_is_clamped(tiny_llava):
    tensor = VisualSecurityTensor(torch.full(tiny_llava.adapter.visual_shape(), 5.0), threshold=0.5)
    assert tensor.clamped().max() == 0.5
    tensor.project_()
    assert tensor.delta.abs().max() == 0.5


def test_empty_prompt_is_refused_clearly(tiny_llava):
    with pytest.raises(sectensor.PromptError, match="empty"):
        tiny_llava.generate([None], ["   "])


def test_too_long_prompt_is_refused_with_counts(tiny_llava):
    with pytest.raises(sectensor.PromptError, match="at most 512"):
        tiny_llava.encode([None], ["word " * 600])


def test_textual_start_from_text_names_the_words_the_tokenizer_does_not_know():
    """A δt start phrase must be in the model's own words: the organism's word-level tokenizer reads unknown words
    as <unk>, so they are named in the error rather than trained from a meaningless token."""
    organism = sectensor.load_lvlm(Path(__file__).resolve().parents[1] / "assets" / "organism", device="cpu")
    start = TextualSecurityTensor.from_text(organism, "is this dangerous?", num_tokens=6)
    table = organism.model.get_input_embeddings().weight
    ids = organism.tokenizer("is this dangerous?", add_special_tokens=False)["input_ids"]
    assert torch.equal(start.delta, table[torch.tensor(ids + ids[:2])].detach())
    with pytest.raises(sectensor.SectensorError, match="does not know: 'if', 'questions'"):
        TextualSecurityTensor.from_text(organism, "if questions come up, is this dangerous?")
    with pytest.raises(sectensor.SectensorError, match="no tokens"):
        TextualSecurityTensor.from_text(organism, "   ")
