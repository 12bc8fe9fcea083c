"""The organism's build recipe trains what its configuration says, on synthetic semantics (no MiniLM needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sectensor.concepts import CONCEPTS
from sectensor.organism import build, semantics


@pytest.fixture(scope="module")
def synthetic_semantics():
    """Random unit vectors in the cache's layout, for the base variant's words and sentences."""
    rng = np.random.default_rng(0)
    words = semantics.vocabulary({})
    text, pictures = semantics.pools()
    sentences = sorted({s.prompt for s in text} | {semantics.picture_key(s.thing, s.prompt) for s in pictures})

    def unit(n: int) -> np.ndarray:
        vecs = rng.standard_normal((n, 384)).astype(np.float32)
        return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)

    return {"words": words, "word_vecs": unit(len(words)), "concept_names": [c.name for c in CONCEPTS],
            "concept_vecs": unit(len(CONCEPTS)), "sentences": sentences, "sentence_vecs": unit(len(sentences)),
            "varied_only_words": 0, "grammar_only_words": 0}


def _mixed_stage_changes(monkeypatch, sem, scale: float) -> dict[str, bool]:
    """Whether the language model and the vision side moved during a two-step mixed stage (no other stage)."""
    monkeypatch.setattr(semantics, "load", lambda: sem)
    cfg = build.BuildConfig(out="", variant="prefix_distill", text_steps=0, caption_steps=0, mixed_steps=2,
                            batch_size=4, mixed_language_lr_scale=scale)
    builder = build.Builder(cfg)
    before = {n: p.detach().clone() for n, p in builder.model.named_parameters()}
    builder.run()
    moved = {n: not torch.equal(p, before[n]) for n, p in builder.model.named_parameters()}
    return {"language": any(m for n, m in moved.items() if n.startswith("model.language_model.layers")),
            "vision": any(m for n, m in moved.items() if n.startswith("model.vision_tower"))}


def test_mixed_language_lr_scale_zero_keeps_the_language_model_and_trains_the_vision_side(monkeypatch,
                                                                                         synthetic_semantics):
    assert _mixed_stage_changes(monkeypatch, synthetic_semantics, 0.0) == {"language": False, "vision": True}
    assert _mixed_stage_changes(monkeypatch, synthetic_semantics, 1.0) == {"language": True, "vision": True}
