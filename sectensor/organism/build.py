"""Build the embedded model organism from scratch: a tiny LLaVA with a real cross-modal safety gap.

    python -m sectensor.organism.semantics                      # once, on CPU: MiniLM vectors -> .cache/organism/
    python -m sectensor.organism.build --out DIR --seed 0 --device cuda

Three stages, each with its own optimiser (AdamW, warm-up + cosine):

1. text: the language model learns to follow instructions about objects, to refuse requests that name a harmful
   object or carry a harmful intent, and to answer what things are and whether they are dangerous. Its mid-layer
   summary of each prompt also predicts MiniLM's sentence embedding of the prompt.
2. captions: the vision tower and projector alone learn to name pictures for the frozen language model, with
   the mean image token pulled towards the MiniLM embedding of the concept's name.
3. mixed: everything but the embedding table trains on picture instructions (captions, neutral requests about
   pictured objects -- harmful ones included, with helpful answers and no refusals --, "is this dangerous?")
   mixed half and half with the text data.

The text and picture pools are drawn once with a fixed seed (`semantics.DATA_SEED`); `--seed` sets the weights'
initialisation, the batch order and the augmentation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sectensor.concepts import CONCEPTS, TRAINING_STYLES
from sectensor.organism import semantics
from sectensor.organism.model import ASSISTANT_ID, USER_ID, answer_loss, forward, make_model
from sectensor.organism.processor import build_processor, num_image_tokens
from sectensor.organism.vision_data import augment, load_styles, normalize


@dataclass
class BuildConfig:
    out: str
    seed: int = 0  # initialisation, batch order and augmentation
    device: str = "cpu"
    # base | distill (picture prompts also get sentence targets) | prefix (a named harmful object where a picture
    # would stand is refused) | prefix_distill | prefix_questions_distill (and questions about what the named object
    # is are answered: `text_data.prefix_question_pool`) | prefix_questions_varied_distill (and more wording of
    # requests and captions: `text_data.varied_wording_pool`) | prefix_questions_varied_grammar_distill (and requests
    # and picture questions built from parts: `text_data.grammar_wording_pool`)
    variant: str = "prefix_distill"
    text_steps: int = 900
    caption_steps: int = 500
    mixed_steps: int = 1200
    batch_size: int = 256  # per kind: a mixed step sees batch_size text rows and batch_size picture rows
    lr: float = 1e-3
    # The language model's learning rate in the mixed stage, as a fraction of `lr`: below 1, picture rows move the
    # language model less and the vision side more (measured at 0.3 and 0.1 in the organism's README: pictures still
    # switch its text safety off).
    mixed_language_lr_scale: float = 1.0
    concept_weight: float = 1.0  # pull of the mean image token towards the concept name's MiniLM vector
    sentence_weight: float = 0.5  # mid-layer prompt summary -> MiniLM sentence embedding
    sentence_layer: int = 2


def _device_info(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or 'cpu'} x {torch.get_num_threads()} threads"


def encode_rows(tokenizer, samples, picture: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded chat rows of prompt + answer + end token, with the image tokens in place when `picture`:
    ids `(N, T)`, labels `(N, T)` (the answer tokens, -100 elsewhere) and the attention mask `(N, T)`."""
    prompts = []
    for s in samples:
        content = ([{"type": "image"}] if picture else []) + [{"type": "text", "text": s.prompt}]
        prompts.append(tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                                     add_generation_prompt=True, tokenize=False))
    if picture:
        prompts = [p.replace("<image>", "<image>" * num_image_tokens()) for p in prompts]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer([s.answer for s in samples], add_special_tokens=False)["input_ids"]
    T = max(len(p) + len(a) + 1 for p, a in zip(p_ids, a_ids))
    N = len(samples)
    ids = torch.zeros(N, T, dtype=torch.long)
    labels = torch.full((N, T), -100, dtype=torch.long)
    attn = torch.zeros(N, T, dtype=torch.long)
    for i, (p, a) in enumerate(zip(p_ids, a_ids)):
        row = p + a + [tokenizer.eos_token_id]
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, len(p) : len(row)] = torch.tensor(a + [tokenizer.eos_token_id])
        attn[i, : len(row)] = 1
    return ids, labels, attn


class _Encoded:
    """Right-padded training rows: ids, labels, attention mask, sentence-target index and summary mask."""

    def __init__(self, tokenizer, samples, picture: bool, sentence_index: dict[str, int], distill: bool):
        self.ids, self.labels, self.attn = encode_rows(tokenizer, samples, picture)
        T = self.ids.shape[1]
        # Summary positions: everything between <user> and <assistant> (image tokens included).
        pos = torch.arange(T)
        user = (self.ids == USER_ID).float().argmax(1, keepdim=True)
        assistant = (self.ids == ASSISTANT_ID).float().argmax(1, keepdim=True)
        self.summary = (pos > user) & (pos < assistant)
        keys = [semantics.picture_key(s.thing, s.prompt) if picture else s.prompt for s in samples]
        self.sentence = torch.tensor([sentence_index[k] for k in keys])
        self.distill_any = bool(distill)
        self.concept = torch.tensor([_CONCEPT_INDEX.get(s.thing, -1) for s in samples])

    def to(self, device):
        for name in ("ids", "labels", "attn", "summary", "sentence", "concept"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def __len__(self):
        return self.ids.shape[0]


_CONCEPT_INDEX = {c.name: i for i, c in enumerate(CONCEPTS)}


def _schedule(step: int, total: int, warmup: int = 100) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


class Builder:
    def __init__(self, cfg: BuildConfig):
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.cpu_gen = torch.Generator().manual_seed(cfg.seed)
        sem = semantics.load()
        self.words = semantics.kept_words(sem, cfg.variant)
        kept = len(self.words)
        self.processor = build_processor(self.words)
        tok = self.processor.tokenizer
        V = len(tok)
        # Embedding table: MiniLM word vectors, centred (their common direction carries no meaning) and unit length.
        vecs = torch.from_numpy(sem["word_vecs"][:kept])
        centre = vecs.mean(0)
        table = torch.randn(V, vecs.shape[1], generator=self.cpu_gen)  # special tokens: fixed random directions
        table[len(table) - len(self.words) :] = vecs - centre
        table = F.normalize(table, dim=-1)
        self.model = make_model(V, table).to(self.device)
        concept_vecs = F.normalize(torch.from_numpy(sem["concept_vecs"]) - centre, dim=-1)
        order = [sem["concept_names"].index(c.name) for c in CONCEPTS]
        self.concept_vecs = concept_vecs[order].to(self.device)  # (C, 384)
        self.sentence_vecs = torch.from_numpy(sem["sentence_vecs"]).to(self.device)
        index = {s: i for i, s in enumerate(sem["sentences"])}
        text, pictures = semantics.pools(varied="varied" in cfg.variant, grammar="grammar" in cfg.variant)
        if "prefix" not in cfg.variant:
            text = [s for s in text if s.kind != "prefix"]
        if "questions" not in cfg.variant:
            text = [s for s in text if s.kind != "prefix_question"]
        self.text = _Encoded(tok, text, False, index, True).to(self.device)
        self.pictures = _Encoded(tok, pictures, True, index, "distill" in cfg.variant).to(self.device)
        self.is_caption = torch.tensor([s.kind == "caption" for s in pictures], device=self.device)
        self.images = load_styles([c.name for c in CONCEPTS], TRAINING_STYLES).to(self.device)  # (C, S, 4, 64, 64)
        self.head = torch.nn.Linear(self.model.config.text_config.hidden_size, self.sentence_vecs.shape[1]).to(self.device)
        self.log: list[dict] = []
        self.timings: dict[str, float] = {}
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else torch.autocast("cpu", enabled=False)

    # -- one batch ------------------------------------------------------------------------------------------
    def _rows(self, data: _Encoded, n: int, pool: torch.Tensor | None = None):
        if pool is None:
            idx = torch.randint(len(data), (n,), device=self.device, generator=self.gen)
        else:
            idx = pool[torch.randint(len(pool), (n,), device=self.device, generator=self.gen)]
        return idx, data.ids.shape[1]  # full width: no host sync per step

    def _loss(self, data: _Encoded, idx, T, pixel_values=None):
        cfg = self.cfg
        ids, labels, attn = data.ids[idx, :T], data.labels[idx, :T], data.attn[idx, :T]
        with self.autocast:
            logits, feats, hidden = forward(self.model, ids, attn, pixel_values, hidden_layer=cfg.sentence_layer)
        loss = answer_loss(logits, labels)
        parts = {"ce": loss.detach()}
        if cfg.sentence_weight and data.distill_any and self.head.weight.requires_grad:
            mask = data.summary[idx, :T].unsqueeze(-1).float()
            summary = (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1)
            target = self.sentence_vecs[data.sentence[idx]]
            cos = F.cosine_similarity(self.head(summary), target, dim=-1)
            s_loss = (1 - cos).mean()
            loss = loss + cfg.sentence_weight * s_loss
            parts["sent"] = s_loss.detach()
        if feats is not None and cfg.concept_weight:
            target = self.concept_vecs[data.concept[idx]]
            c_loss = (feats.float().mean(1) - target).pow(2).sum(-1).mean()
            loss = loss + cfg.concept_weight * c_loss
            parts["concept"] = c_loss.detach()
        return loss, parts

    def _pixels(self, idx):
        concept = self.pictures.concept[idx]
        style = torch.randint(self.images.shape[1], (len(idx),), device=self.device, generator=self.gen)
        return normalize(augment(self.images[concept, style], self.gen))

    # -- stages ---------------------------------------------------------------------------------------------
    def _stage(self, name: str, steps: int, groups: list[tuple[list, float]], text: bool,
               pictures: torch.Tensor | None):
        """Train (parameters, learning-rate scale) groups for `steps` steps."""
        cfg = self.cfg
        groups = [([p for p in params if p.requires_grad], scale) for params, scale in groups]
        params = [p for group, _ in groups for p in group]
        opt = torch.optim.AdamW([{"params": group, "scale": scale} for group, scale in groups if group], lr=cfg.lr,
                                weight_decay=0.01, betas=(0.9, 0.98), fused=self.device.type == "cuda")
        start = time.time()
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = cfg.lr * group["scale"] * _schedule(step, steps)
            loss, parts = 0.0, {}
            if text:
                idx, T = self._rows(self.text, cfg.batch_size)
                l_t, p_t = self._loss(self.text, idx, T)
                loss, parts = loss + l_t, {f"text_{k}": v for k, v in p_t.items()}
            if pictures is not None:
                idx, T = self._rows(self.pictures, cfg.batch_size, pictures)
                l_p, p_p = self._loss(self.pictures, idx, T, self._pixels(idx))
                loss = loss + l_p
                parts.update({f"pic_{k}": v for k, v in p_p.items()})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if step % 100 == 0 or step == steps - 1:
                entry = {"stage": name, "step": step, **{k: round(float(v), 4) for k, v in parts.items()}}
                self.log.append(entry)
                print(json.dumps(entry), flush=True)
        self.timings[name] = round(time.time() - start, 1)

    def run(self) -> None:
        m = self.model
        lm = [p for n, p in m.named_parameters() if n.startswith(("model.language_model", "lm_head"))]
        vision = [p for n, p in m.named_parameters() if n.startswith(("model.vision_tower", "model.multi_modal_projector"))]
        head = list(self.head.parameters())
        m.train()
        self._set_trainable(lm + head)
        self._stage("text", self.cfg.text_steps, [(lm + head, 1.0)], True, None)
        self._set_trainable(vision)
        captions = torch.nonzero(self.is_caption).flatten()
        self._stage("captions", self.cfg.caption_steps, [(vision, 1.0)], False, captions)
        self._set_trainable(lm + vision + head)
        every = torch.arange(len(self.pictures), device=self.device)
        self._stage("mixed", self.cfg.mixed_steps, [(lm, self.cfg.mixed_language_lr_scale), (vision + head, 1.0)],
                    True, every)
        m.eval()

    def _set_trainable(self, params) -> None:
        keep = {id(p) for p in params}
        for p in list(self.model.parameters()) + list(self.head.parameters()):
            p.requires_grad_(id(p) in keep)
        self.model.get_input_embeddings().weight.requires_grad_(False)

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.model.to("cpu").to(torch.float32)
        self.model.save_pretrained(out)
        self.processor.save_pretrained(out)
        info = {
            "config": asdict(self.cfg), "hardware": _device_info(self.cfg.device), "seconds_per_stage": self.timings,
            "parameters": sum(p.numel() for p in self.model.parameters()), "torch": torch.__version__,
            "final_losses": self.log[-1] if self.log else {},
        }
        (out / "build_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        (out / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in self.log))


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, value in asdict(BuildConfig(out="")).items():
        kind = type(value) if value != "" else str
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=value, required=name == "out")
    return parser


def main(argv: list[str] | None = None) -> None:
    cfg = BuildConfig(**vars(make_parser().parse_args(argv)))
    if cfg.device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cuda.matmul.allow_tf32 = True
    builder = Builder(cfg)
    builder.run()
    builder.save(Path(cfg.out))
    print(f"saved {cfg.out} ({builder.timings})")


if __name__ == "__main__":
    main()
