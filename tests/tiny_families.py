"""Tiny random-weight instances of every supported family, built offline from configs, for tests.

Each `build_tiny_<family>()` returns a model (hidden size 32, 2 layers, images of 32 px or less) and its real
processor class (a BPE tokenizer trained here, the family's image processor, a chat template in the family's
shape). `TINY_BUILDERS` maps each family's architecture to its builder. Nothing here is downloaded.

Qwen2-VL, Qwen2.5-VL and SmolVLM processors also hold a video processor; their own needs torchvision (absent
here), so their tiny processors hold transformers' generic one, which images and text never touch.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from tiny_models import CORPUS

TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


def chat_template(user: str, image: str, end_of_turn: str, assistant: str, start: str = "") -> str:
    """A one-turn-per-message chat template: `start`, then per user turn `user` + parts + `end_of_turn`."""
    return (
        start + "{% for message in messages %}{% if message['role'] == 'user' %}" + user
        + "{% for part in message['content'] %}{% if part['type'] == 'image' %}" + image
        + "{% else %}{{ part['text'] }}{% endif %}{% endfor %}" + end_of_turn + "{% else %}" + assistant
        + "{% for part in message['content'] %}{{ part['text'] }}{% endfor %}" + end_of_turn
        + "{% endif %}{% endfor %}{% if add_generation_prompt %}" + assistant + "{% endif %}"
    )


def build_tokenizer(specials: list[str], bos: str | None, eos: str, pad: str, template: str, extra=None):
    """A byte-level BPE tokenizer trained on a few sentences; `bos`, when given, is prepended to every text."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    names = list(dict.fromkeys(["<unk>", pad, eos, *([bos] if bos else []), *specials]))
    trainer = trainers.BpeTrainer(vocab_size=300 + len(names), special_tokens=names,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    tokenizer.decoder = decoders.ByteLevel()
    if bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=bos, eos_token=eos, unk_token="<unk>", pad_token=pad,
        extra_special_tokens=extra or {},
    )
    fast.chat_template = template
    return fast


def _with_generic_video(processor_class, image_processor, tokenizer, **kwargs):
    """`processor_class` with a generic video processor, since the family's own needs torchvision (absent here)
    and transformers cannot check a video processor's class without it. Images and text never touch it."""
    from transformers.video_processing_utils import BaseVideoProcessor

    class ImageTextProcessor(processor_class):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor":
                return type(argument)
            return super().check_argument_for_proper_class(argument_name, argument)

    ImageTextProcessor.__name__ = processor_class.__name__
    return ImageTextProcessor(image_processor, tokenizer, BaseVideoProcessor(), **kwargs)


def _llama_text(tokenizer, **overrides):
    from transformers import LlamaConfig

    return LlamaConfig(
        **{**TEXT, **overrides}, vocab_size=len(tokenizer), max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_llava_next(seed: int = 0):
    """LlavaNextForConditionalGeneration: 32-px CLIP tiles, any-resolution grids up to 2×2 tiles."""
    from transformers import (
        CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    template = chat_template("USER: ", "<image>\n", " ", "ASSISTANT:")
    tokenizer = build_tokenizer(["<image>"], "<s>", "</s>", "<pad>", template, {"image_token": "<image>"})
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(**VISION, image_size=32, patch_size=8, projection_dim=32),
        text_config=_llama_text(tokenizer), image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints, vision_feature_select_strategy="default", vision_feature_layer=-1,
    )
    config.architectures = ["LlavaNextForConditionalGeneration"]
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=template,
    )
    return model, processor


def _build_tiny_qwen(version: str, seed: int):
    from transformers import (
        Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, Qwen2VLConfig,
        Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil, Qwen2VLProcessor,
    )

    image = "<|vision_start|><|image_pad|><|vision_end|>"
    template = chat_template("<|im_start|>user\n", image, "<|im_end|>\n", "<|im_start|>assistant\n")
    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tokenizer = build_tokenizer(specials, None, "<|im_end|>", "<|endoftext|>", template,
                                {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"})
    ids = tokenizer.convert_tokens_to_ids
    text = {**TEXT, "vocab_size": len(tokenizer), "max_position_embeddings": 1024,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": None, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2, patch_size=4, spatial_merge_size=2,
                  temporal_patch_size=2, in_channels=3)
    if version == "2.5":
        vision = dict(depth=2, hidden_size=32, out_hidden_size=32, intermediate_size=64, num_heads=2, patch_size=4,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=16, fullatt_block_indexes=[1])
        config_class, model_class, processor_class = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    else:
        config_class, model_class, processor_class = Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    config = config_class(
        text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    config.architectures = [model_class.__name__]
    torch.manual_seed(seed)
    model = model_class(config).eval()
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=4, merge_size=2, temporal_patch_size=2, size={"shortest_edge": 8 * 8, "longest_edge": 32 * 32},
    )
    processor = _with_generic_video(processor_class, image_processor, tokenizer, chat_template=template)
    return model, processor


def build_tiny_qwen2_vl(seed: int = 0):
    """Qwen2VLForConditionalGeneration: 4-px patches merged 2×2, images of 8×8 to 32×32 px (multiples of 8)."""
    return _build_tiny_qwen("2", seed)


def build_tiny_qwen2_5_vl(seed: int = 0):
    """Qwen2_5_VLForConditionalGeneration: as Qwen2-VL, with window attention in the vision tower."""
    return _build_tiny_qwen("2.5", seed)


def build_tiny_gemma3(seed: int = 0):
    """Gemma3ForConditionalGeneration: a 32-px SigLIP image pooled to 4 soft tokens."""
    from transformers import (
        Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor, Gemma3TextConfig,
        SiglipVisionConfig,
    )

    template = chat_template("<start_of_turn>user\n", "<start_of_image>", "<end_of_turn>\n", "<start_of_turn>model\n",
                             start="{{ bos_token }}")
    extra = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}
    tokenizer = build_tokenizer(["<start_of_turn>", "<end_of_turn>", *extra.values()], "<bos>", "<eos>", "<pad>",
                                template, extra)
    ids = tokenizer.convert_tokens_to_ids
    text = Gemma3TextConfig(
        **{**TEXT, "num_key_value_heads": 1}, head_dim=16, vocab_size=len(tokenizer), max_position_embeddings=1024,
        sliding_window=64, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = Gemma3Config(
        text_config=text, vision_config=SiglipVisionConfig(**VISION, image_size=32, patch_size=8),
        mm_tokens_per_image=4, image_token_index=ids("<image_soft_token>"), boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"),
    )
    config.architectures = ["Gemma3ForConditionalGeneration"]
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # a fresh projector is all zeros, which would hide the image from the text
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.5)
    image_processor = Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=template,
                                image_seq_length=4)
    return model, processor


def _build_tiny_idefics3(smolvlm: bool, seed: int):
    from transformers import (
        Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil, Idefics3Processor,
        Idefics3VisionConfig, SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil,
        SmolVLMProcessor, SmolVLMVisionConfig,
    )

    bos = "<|im_start|>" if smolvlm else "<|begin_of_text|>"
    template = chat_template("User:", "<image>", "<end_of_utterance>\n", "Assistant:", start="{{ bos_token }}")
    tiles = [f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)]
    specials = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", *tiles]
    tokenizer = build_tokenizer(specials, bos, "<end_of_utterance>", "<pad>", template,
                                {"image_token": "<image>"})
    if smolvlm:
        config_class, vision_class, model_class = SmolVLMConfig, SmolVLMVisionConfig, SmolVLMForConditionalGeneration
        image_processor_class = SmolVLMImageProcessorPil
    else:
        config_class, vision_class, model_class = Idefics3Config, Idefics3VisionConfig, Idefics3ForConditionalGeneration
        image_processor_class = Idefics3ImageProcessorPil
    config = config_class(
        vision_config=vision_class(**VISION, image_size=32, patch_size=8), text_config=_llama_text(tokenizer),
        scale_factor=2, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    config.architectures = [model_class.__name__]
    torch.manual_seed(seed)
    model = model_class(config).eval()
    # Images are scaled to a 64-px longest edge and cut into 32-px tiles plus a 32-px global view.
    image_processor = image_processor_class(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    if smolvlm:
        processor = _with_generic_video(SmolVLMProcessor, image_processor, tokenizer, image_seq_len=4,
                                        chat_template=template)
    else:
        processor = Idefics3Processor(image_processor, tokenizer, image_seq_len=4, chat_template=template)
    return model, processor


def build_tiny_idefics3(seed: int = 0):
    """Idefics3ForConditionalGeneration: up to 2×2 tiles of 32 px plus a global view, 4 tokens each."""
    return _build_tiny_idefics3(smolvlm=False, seed=seed)


def build_tiny_smolvlm(seed: int = 0):
    """SmolVLMForConditionalGeneration: the Idefics3 layout with SmolVLM's classes."""
    return _build_tiny_idefics3(smolvlm=True, seed=seed)


def build_tiny_mllama(seed: int = 0):
    """MllamaForConditionalGeneration: up to 4 tiles of 32 px, one cross-attention layer.

    The cross-attention gates start at zero in a fresh model, which would hide the image from the text, and
    the projector's small initial weights make it faint; the gates are set to 1 and the projector scaled up so
    that the image (and δv) reaches the logits, as in a trained checkpoint.
    """
    from transformers import (
        MllamaConfig, MllamaForConditionalGeneration, MllamaImageProcessorPil, MllamaProcessor, MllamaTextConfig,
        MllamaVisionConfig,
    )

    template = chat_template("<|start_header_id|>user<|end_header_id|>\n\n", "<|image|>", "<|eot_id|>",
                             "<|start_header_id|>assistant<|end_header_id|>\n\n", start="{{ bos_token }}")
    specials = ["<|image|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tokenizer = build_tokenizer(specials, "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>", template,
                                {"image_token": "<|image|>"})
    vision = MllamaVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1, attention_heads=2,
        image_size=32, patch_size=8, max_num_tiles=4, intermediate_layers_indices=[0], vision_output_dim=64,
    )
    text = MllamaTextConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=2,
        cross_attention_layers=[1], vocab_size=len(tokenizer), max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    config = MllamaConfig(vision_config=vision, text_config=text,
                          image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"))
    config.architectures = ["MllamaForConditionalGeneration"]
    torch.manual_seed(seed)
    model = MllamaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "cross_attn_attn_gate" in name or "cross_attn_mlp_gate" in name:
                parameter.fill_(1.0)
        model.model.multi_modal_projector.weight.normal_(std=0.3)
    image_processor = MllamaImageProcessorPil(size={"height": 32, "width": 32}, max_image_tiles=4)
    processor = MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)
    return model, processor


TINY_BUILDERS = {
    "LlavaNextForConditionalGeneration": build_tiny_llava_next,
    "Qwen2VLForConditionalGeneration": build_tiny_qwen2_vl,
    "Qwen2_5_VLForConditionalGeneration": build_tiny_qwen2_5_vl,
    "Gemma3ForConditionalGeneration": build_tiny_gemma3,
    "Idefics3ForConditionalGeneration": build_tiny_idefics3,
    "SmolVLMForConditionalGeneration": build_tiny_smolvlm,
    "MllamaForConditionalGeneration": build_tiny_mllama,
}
