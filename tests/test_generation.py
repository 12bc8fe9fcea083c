"""Streaming side-by-side answers from one batched generation, fitting over-long prompts, and the CPU decoding
step written out for Llama language models.

    python -m pytest tests/test_generation.py
"""

import pytest
import torch

from sectensor import PromptError, TensorMismatchError, TextualSecurityTensor, VisualSecurityTensor
from sectensor.generation import BatchTextStreamer, fit_prompt, stream_answers, stream_side_by_side

PROMPT = "How do I make one of these at home?"


@pytest.fixture(scope="module")
def visual(tiny_llava):
    torch.manual_seed(3)
    return VisualSecurityTensor(torch.randn(tiny_llava.adapter.visual_shape()), threshold=1.0)


@pytest.mark.parametrize("kind", ["visual", "textual"])
def test_stream_ends_with_the_answers_of_generate(tiny_llava, pictures, visual, kind):
    torch.manual_seed(4)
    tensor = visual if kind == "visual" else TextualSecurityTensor(torch.randn(4, tiny_llava.hidden_size))
    steps = list(stream_side_by_side(tiny_llava, pictures[0], PROMPT, tensor, max_new_tokens=10))
    expected = tiny_llava.generate([pictures[0]] * 2, [PROMPT] * 2, tensor=tensor, protect=[False, True],
                                   max_new_tokens=10)
    assert steps[-1] == tuple(expected)
    if kind == "visual":  # (the tiny random model barely reacts to δt, so only δv is sure to change the answer)
        assert steps[-1][0] != steps[-1][1], "the protected row must differ from the base row"
    assert len(steps) >= 3, "text must arrive in several steps, not all at the end"
    for earlier, later in zip(steps, steps[1:]):  # each row's text only grows
        assert all(len(a) <= len(b) for a, b in zip(earlier, later))


def test_streamer_skips_the_prompt_and_stops_each_row_at_its_end_token(tiny_llava):
    tokenizer = tiny_llava.tokenizer
    eos = tokenizer.eos_token_id
    words = tokenizer("cat dog", add_special_tokens=False)["input_ids"]
    streamer = BatchTextStreamer(tokenizer, batch_size=2, eos_token_id=eos, timeout=5)
    streamer.put(torch.tensor([[7, 7, 7], [7, 7, 7]]))  # the prompt
    streamer.put(torch.tensor([words[0], eos]))
    for token in words[1:]:
        streamer.put(torch.tensor([token, words[0]]))  # row 1 has ended: what follows its end token is padding
    streamer.put(torch.tensor([eos, words[0]]))
    streamer.put(torch.tensor([words[0], words[0]]))
    streamer.end()
    texts = list(streamer)
    assert texts[-1] == (tokenizer.decode(words).strip(), "")


def test_an_error_in_generation_reaches_the_consumer(tiny_llava, pictures, tmp_path):
    made_for_another_model = VisualSecurityTensor(
        torch.zeros(tiny_llava.adapter.visual_shape()), fingerprint={"architecture": "Other", "config_hash": "x"}
    )
    with pytest.raises(TensorMismatchError):
        list(stream_answers(tiny_llava, [pictures[0]], [PROMPT], made_for_another_model, max_new_tokens=4))


def test_fit_prompt_cuts_an_over_long_prompt_to_the_context(tiny_llava, pictures):
    limit = tiny_llava.model.config.text_config.max_position_embeddings
    long_prompt = "Describe the picture in detail. " * 200
    fitted = fit_prompt(tiny_llava, pictures[0], long_prompt, virtual_tokens=0, max_new_tokens=48)
    assert fitted.dropped_tokens > 0 and long_prompt.startswith(fitted.prompt)
    length = tiny_llava.encode([pictures[0]], [fitted.prompt]).input_ids.shape[1]
    assert limit - 48 - 2 <= length <= limit - 48
    answer = tiny_llava.generate([pictures[0]], [fitted.prompt], max_new_tokens=fitted.max_new_tokens)
    assert isinstance(answer[0], str)


def test_fit_prompt_keeps_a_short_prompt_and_rejects_an_empty_one(tiny_llava, pictures):
    assert fit_prompt(tiny_llava, pictures[0], PROMPT, 0, 48).prompt == PROMPT
    with pytest.raises(PromptError):
        fit_prompt(tiny_llava, None, "   ", 0, 48)


def test_sampled_stream_matches_its_own_final_answers(tiny_llava, pictures, visual):
    torch.manual_seed(0)
    steps = list(stream_answers(tiny_llava, [pictures[1]] * 2, [PROMPT] * 2, visual, [False, True], 12,
                                temperature=1.0))
    assert steps[-2] == steps[-1] and all(steps[-1])


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("cpu_layout", [False, True])
def test_written_out_llama_step_gives_transformers_logits_bit_for_bit(tiny_llava, padded, cpu_layout):
    """The CPU decoding step written out for Llama language models (`sectensor.decoding._LlamaStep`) computes
    exactly the logits of transformers' own step, with grouped-query attention, per-row positions and padding,
    with weights as checkpoints store them and as `load_lvlm` lays them out on CPUs (transposed, q/k/v and
    gate/up side by side, multiplied in one product); LLaVA's language model decodes through it."""
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    from sectensor.decoding import _DynamicStep, _joined_weight, _LlamaStep
    from sectensor.lvlm import _lay_out_weights_for_cpu

    assert _LlamaStep.fits(tiny_llava.model.get_decoder())

    config = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         attn_implementation="sdpa")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    language_model, head = model.get_decoder(), model.get_output_embeddings()
    assert _LlamaStep.fits(language_model)
    if cpu_layout:
        _lay_out_weights_for_cpu(model)
    mlp = language_model.layers[0].mlp
    assert (_joined_weight([mlp.gate_proj, mlp.up_proj]) is not None) == cpu_layout
    prompt_ids = torch.randint(1, 97, (2, 9))
    prompt_mask = torch.ones_like(prompt_ids)
    if padded:
        prompt_mask[0, :4] = 0  # row 0: four tokens of left padding

    def transformers_step(input_ids, position_ids, cache_position, attention_mask, cache):
        hidden = language_model(input_ids=input_ids, position_ids=position_ids, cache_position=cache_position,
                                attention_mask=attention_mask, use_cache=True, cache=cache).last_hidden_state
        return head(hidden[:, -1]).float()

    def prefilled():
        cache = DynamicCache(config=config)
        positions = (prompt_mask.cumsum(-1) - 1).masked_fill(prompt_mask == 0, 1)
        logits = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, cache=cache,
                       use_cache=True).logits[:, -1]
        return cache, logits.argmax(-1)

    with torch.no_grad():
        cache, tokens = prefilled()
        reference = _DynamicStep(transformers_step, cache, prompt_mask, max_new_tokens=6)
        cache, _ = prefilled()
        written_out = _LlamaStep(language_model, head, cache, prompt_mask, max_new_tokens=6)
        for _ in range(6):
            expected = reference(tokens)
            assert torch.equal(written_out(tokens), expected)
            tokens = expected.argmax(-1)


def test_written_out_step_leaves_dynamic_rotations_to_transformers():
    """The written-out step computes the whole answer's rotations at once; rotations whose frequencies follow the
    longest position so far (dynamic scaling) cannot be, so such models decode through transformers' step."""
    from transformers import LlamaConfig, LlamaModel

    from sectensor.decoding import _LlamaStep

    def model(rope_parameters):
        return LlamaModel(LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                                      num_attention_heads=4, max_position_embeddings=128, attn_implementation="sdpa",
                                      rope_parameters=rope_parameters))

    assert _LlamaStep.fits(model({"rope_type": "default", "rope_theta": 10000.0}))
    assert not _LlamaStep.fits(model({"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}))


def test_static_caches_fit_their_prompts_and_serve_shorter_ones(tiny_llava, pictures):
    """A new static cache is sized to the next multiple of 64 tokens (every step's attention reads all of it); a
    shorter prompt reuses a kept cache up to 256 tokens larger than it needs, capturing nothing new."""
    from sectensor import decoding

    decoder = decoding.Decoder(tiny_llava, static=True)
    long_prompt = "Please look closely at this picture and tell me, in a few words, " * 2 + "what is this?"
    batches = {prompt: tiny_llava.encode(pictures[:2], [prompt] * 2) for prompt in ("What is this?", long_prompt)}
    needed = {prompt: batch.input_ids.shape[1] + 3 for prompt, batch in batches.items()}
    assert 64 < needed[long_prompt] - needed["What is this?"] <= 192

    decoder.decode(batches[long_prompt], max_new_tokens=3, eos_token_id=-1)
    assert list(decoder._static_steps) == [(2, -(-needed[long_prompt] // 64) * 64)]
    decoder.decode(batches["What is this?"], max_new_tokens=3, eos_token_id=-1)
    assert decoder.captures == 1 and len(decoder._static_steps) == 1

    decoder.release()
    decoder.decode(batches["What is this?"], max_new_tokens=3, eos_token_id=-1)
    decoder.decode(batches[long_prompt], max_new_tokens=3, eos_token_id=-1)
    assert list(decoder._static_steps) == [(2, -(-needed[prompt] // 64) * 64) for prompt in ("What is this?", long_prompt)]
    assert decoder.captures == 3


@pytest.mark.parametrize("cache_share, kept", [(0.05, 3), (0.0, 2)])
def test_static_steps_of_small_caches_stay_for_their_next_turn(tiny_llava, pictures, monkeypatch, cache_share, kept):
    """Taking turns between three batch sizes (one answer, side by side, ...) reuses each size's static step, with
    its cache (on GPUs its captured graph), while their caches fit their share of memory; past that share only the
    two most recently used stay."""
    from sectensor import decoding

    monkeypatch.setattr(decoding, "_STATIC_CACHE_SHARE", cache_share)
    decoder = decoding.Decoder(tiny_llava, static=True)
    steps = {}
    for turn in range(2):
        for rows in (1, 2, 3):
            batch = tiny_llava.encode(pictures[:rows], ["What is this?"] * rows)
            decoder.decode(batch, max_new_tokens=3, eos_token_id=-1)
            step = decoder._static_steps[next(reversed(decoder._static_steps))]
            assert step.input_ids.shape[0] == rows
            if turn:
                assert (step is steps[rows]) == (kept == 3), f"rows={rows}"
            steps[rows] = step
            assert len(decoder._static_steps) == min(kept, rows + 3 * turn)
