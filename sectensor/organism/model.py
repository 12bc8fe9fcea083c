"""The organism's architecture: a small `LlavaForConditionalGeneration`, and the forward pass the recipe trains.

Shape (about 11.6 M parameters, 46 MB in float32):

* vision: CLIP, 4 layers x 256 wide, 64x64 pictures in 8x8 patches -> 64 image tokens (+ CLS, dropped);
* projector: LLaVA's two-layer MLP, 256 -> 384 -> 384;
* language: Llama, 4 layers x 384 wide (6 heads), MLP 896, word-level vocabulary; its input embedding table is
  MiniLM's and stays frozen (see `semantics.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sectensor.organism.processor import IMAGE_SIZE, PATCH_SIZE, SPECIAL_TOKENS, num_image_tokens

WIDTH = 384  # = MiniLM's width, so its vectors are used as they are
PAD_ID, UNK_ID, BOS_ID, EOS_ID, IMAGE_ID, USER_ID, ASSISTANT_ID = range(len(SPECIAL_TOKENS))


def make_config(vocab_size: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=WIDTH,
    )
    text = LlamaConfig(
        vocab_size=vocab_size, hidden_size=WIDTH, intermediate_size=896, num_hidden_layers=4,
        num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=512, rms_norm_eps=1e-5,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=IMAGE_ID, image_seq_length=num_image_tokens(),
        vision_feature_layer=-1, vision_feature_select_strategy="default", projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )


def make_model(vocab_size: int, embedding: torch.Tensor):
    """A fresh organism whose (frozen) input embedding table is `embedding` of shape `(vocab_size, 384)`."""
    from transformers import GenerationConfig, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration(make_config(vocab_size))
    table = model.get_input_embeddings()
    with torch.no_grad():
        table.weight.copy_(embedding)
    table.weight.requires_grad_(False)
    model.generation_config = GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=48, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
    )
    return model


def image_tokens(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected image tokens of shape `(B, 64, 384)` for pixels of shape `(B, 3, 64, 64)` (what LLaVA inserts)."""
    hidden = model.model.vision_tower(pixel_values).last_hidden_state  # (B, 65, 256); feature layer -1
    return model.model.multi_modal_projector(hidden[:, 1:])  # drop CLS ("default" strategy)


def forward(model, input_ids, attention_mask, pixel_values=None, hidden_layer: int | None = None):
    """Logits `(B, T, V)`, image tokens `(B, 64, D)` or None, and the hidden state after `hidden_layer` or None."""
    embeds = model.get_input_embeddings()(input_ids)
    feats = None
    if pixel_values is not None:
        feats = image_tokens(model, pixel_values)
        mask = (input_ids == IMAGE_ID).unsqueeze(-1)
        embeds = embeds.masked_scatter(mask, feats.to(embeds.dtype))
    out = model.model.language_model(
        inputs_embeds=embeds, attention_mask=attention_mask, output_hidden_states=hidden_layer is not None,
    )
    logits = model.lm_head(out.last_hidden_state)
    hidden = out.hidden_states[hidden_layer] if hidden_layer is not None else None
    return logits, feats, hidden


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of next-token prediction on positions whose label is not -100."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
