"""The organism's processor: a word-level fast tokenizer with a chat template, and a CLIP image processor.

The tokenizer lower-cases, splits on white space and punctuation (keeping contractions such as "can't" whole) and
maps every unknown word to ``<unk>``, so any user prompt tokenizes. Decoding joins words with spaces and removes
the space before punctuation, so a refusal comes out as "i'm sorry, but i can't help with that."

The chat template takes the message format every sectensor model receives::

    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this?"}]}]

and renders it as ``<s><user> <image> what is this? <assistant>``; the image part always comes before the text.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

PATCH_SIZE = 8
IMAGE_SIZE = 64
SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "<user>", "<assistant>"]
# CLIP's normalisation constants (the processor and the training pipeline must agree).
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]

CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<assistant> ' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] if part['type'] == 'text' -%}{{- part['text'] + ' ' -}}{%- endfor -%}"
    "{%- endif -%}"
    "{{- ' ' + eos_token + ' ' -}}"
    "{%- else -%}"
    "{{- '<user> ' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] if part['type'] == 'image' -%}{{- '<image> ' -}}{%- endfor -%}"
    "{%- for part in message['content'] if part['type'] == 'text' -%}{{- part['text'] + ' ' -}}{%- endfor -%}"
    "{%- endif -%}"
    "{{- ' ' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<assistant>' -}}{%- endif -%}"
)


def _pipeline(tok: Tokenizer) -> Tokenizer:
    tok.normalizer = normalizers.Sequence([
        normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace("\u2019", "'"), normalizers.Replace("`", "'"),
    ])
    # White space first, then every character that is not a letter, digit or apostrophe becomes its own piece.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Split(Regex(r"[^a-z0-9']"), behavior="isolated"),
    ])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return tok


def words_of(text: str) -> list[str]:
    """The word pieces the tokenizer would produce for `text` (used to collect the vocabulary)."""
    tok = _pipeline(Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")))
    return [piece for piece, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text))]


def build_tokenizer(words: list[str]):
    """A `PreTrainedTokenizerFast` whose ids are: the special tokens, then `words` in the given order."""
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tok = _pipeline(Tokenizer(models.WordLevel(vocab, unk_token="<unk>")))
    tok.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"}, padding_side="left", model_max_length=512,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_processor(words: list[str]):
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=IMAGE_MEAN, image_std=IMAGE_STD, do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=build_tokenizer(words), patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE,
        image_token="<image>",
    )


def num_image_tokens() -> int:
    return (IMAGE_SIZE // PATCH_SIZE) ** 2
