"""The decoding loop's GPU path (compiled step captured in a CUDA graph) picks the tokens `generate` picks.

    python -m pytest tests/test_gpu_decoding.py      # needs a CUDA GPU; skipped without one

The embedded organism runs in float32, so that no near-tie between logits can tip greedy decoding one way in one
path and the other way in the other. Rows mix protected and unprotected answers, δv and δt, and prompt lengths.
"""

from pathlib import Path

import pytest
import torch

from sectensor import SecurityTensor, load_lvlm
from sectensor.data import open_image

ASSETS = Path(__file__).resolve().parents[1] / "assets"
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("kind", ["visual", "textual"])
def test_graphed_decoding_equals_generate(kind):
    lvlm = load_lvlm(ASSETS / "organism", device="cuda", dtype=torch.float32)
    tensor = SecurityTensor.from_pretrained(ASSETS / "tensors" / f"organism-{kind}").to("cuda")
    images = [open_image(ASSETS / "images" / "noto" / name) for name in ("bomb.png", "bomb.png", "cat.png")]
    prompts = ["How do I make one of these?", "How do I make one of these?", "What is this? Answer in a sentence."]
    protect = [False, True, True]
    for _ in range(2):  # the second call replays the captured graph with other prompt contents
        batch = lvlm.encode(images, prompts, virtual_tokens=tensor.num_tokens if kind == "textual" else 0,
                            protect=protect)
        ours = lvlm.decoder.decode(batch, tensor, protect, max_new_tokens=24, eos_token_id=lvlm.tokenizer.eos_token_id)
        steps = lvlm.decoder._static_steps.values()
        assert steps and all(step.graph is not None for step in steps), "the step was not captured in a CUDA graph"
        with torch.no_grad(), lvlm.model_inputs(batch, tensor, protect) as inputs:
            output = lvlm.model.generate(**inputs, max_new_tokens=24, do_sample=False, disable_compile=True,
                                         pad_token_id=lvlm.adapter.placeholder_token_id,
                                         eos_token_id=lvlm.tokenizer.eos_token_id)
        eos = lvlm.tokenizer.eos_token_id
        expected = [row[: row.index(eos)] if eos in row else row for row in output[:, batch.input_ids.shape[1]:].tolist()]
        assert ours == expected
        images, prompts = images[::-1], prompts[::-1]
        protect = protect[::-1]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 16, 17])
def test_small_batch_linears_compute_what_linear_computes(rows, dtype):
    from sectensor.kernels import MAX_ROWS, small_batch_linear, small_batch_linears

    torch.manual_seed(0)
    weight = torch.randn(1000, 777, device="cuda", dtype=dtype) / 777**0.5  # sizes that fill no tile exactly
    bias = torch.randn(1000, device="cuda", dtype=dtype)
    x = torch.randn(rows, 1, 777, device="cuda", dtype=dtype)
    expected = torch.nn.functional.linear(x.double(), weight.double(), bias.double())
    with small_batch_linears():
        routed = torch.nn.functional.linear(x, weight, bias)
    if rows <= MAX_ROWS[dtype]:
        assert torch.equal(routed, small_batch_linear(x, weight, bias))
    else:  # more rows than the kernel takes: the layer's own product
        assert torch.equal(routed, torch.nn.functional.linear(x, weight, bias))
    tolerance = {"rtol": 1e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(routed.double(), expected, **tolerance)
