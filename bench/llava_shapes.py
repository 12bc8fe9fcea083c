"""A LLaVA-1.5-7B-shaped model with random weights and an offline processor, for benchmarks.

Nothing is downloaded: the architecture comes from its published configuration (CLIP ViT-L/14 at 336 px,
Llama-2-7B), weights are random, and the tokenizer is a small word-level one whose ids fall inside the
model's 32 064-entry vocabulary. Speed depends on shapes, not on weight values.
"""

from __future__ import annotations

import tempfile

import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}USER: {% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<image>\n{% else %}{{ part['text'] }}{% endif %}{% endfor %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
WORDS = (
    "how do i make one of these at home where can get this what is in the image describe picture detail "
    "tell me about it please explain step by a an and or to for with i'm sorry but cannot help that request "
    "it could hurt people some other thing here there you your very much many more ask question answer use"
).split()


def build_processor(image_size: int = 336, patch_size: int = 14):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {token: index for index, token in enumerate(specials + sorted(set(WORDS)) + list(".,?!:'\n"))}
    vocab["<image>"] = 32000
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_mean=[0.4815, 0.4578, 0.4082], image_std=[0.2686, 0.2613, 0.2758],
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=fast, patch_size=patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE,
    )


def llava_7b_config():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14, projection_dim=768,
    )
    text = LlamaConfig(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=2, pad_token_id=3,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=32000, projector_hidden_act="gelu",
        vision_feature_select_strategy="default", vision_feature_layer=-2,
    )
    config.architectures = ["LlavaForConditionalGeneration"]
    return config


def tiny_llava_config():
    """The same architecture shrunk to one layer each and a 256-wide language model, to check scripts on CPU."""
    config = llava_7b_config()
    config.text_config.num_hidden_layers = config.vision_config.num_hidden_layers = 1
    config.text_config.hidden_size, config.text_config.intermediate_size = 256, 512
    config.text_config.num_attention_heads = config.text_config.num_key_value_heads = 4
    return config


def build_lvlm(dtype: torch.dtype, device: str = "cuda", config=None):
    """An `LVLM` around a freshly initialised model (seconds on a GPU)."""
    from transformers import LlavaForConditionalGeneration

    from sectensor import LVLM

    torch.manual_seed(0)
    config = config or llava_7b_config()
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = LlavaForConditionalGeneration(config).to(dtype)
    model.eval()
    return LVLM(model, build_processor(config.vision_config.image_size, config.vision_config.patch_size), "llava-1.5-7b-shape")
