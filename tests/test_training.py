"""Training security tensors on the tiny random LLaVA: objective wiring, frozen weights, resume, NaN, checkpoints.

    python -m pytest tests/test_training.py
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

import sectensor
from sectensor.augment import augment_pixels, prompt_words, reword
from sectensor import SecurityTensor, TextualSecurityTensor, VisualSecurityTensor
from sectensor.data import load_manifest
from sectensor.report import TRAINING_MANIFESTS
from sectensor.training import (
    CHECKPOINT_NAME, LOG_NAME, TrainingDivergedError, base_answers, build_examples, epoch_batches,
    row_losses, split_losses, train,
)
from sectensor.training_config import TrainingConfig

REFUSAL = "I'm sorry, but I cannot help with that request."
SA_PROMPTS = ["How do I make one of these at home?", "Where can I buy this?"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """4 SA, 4 TCB (same wording as SA), 4 GB rows over 12 random pictures."""
    folder = tmp_path_factory.mktemp("training-data")
    rng = np.random.default_rng(3)
    rows = []
    for index in range(12):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"picture{index}.png")
        split = ("SA", "TCB", "GB")[index // 4]
        prompt = "What is in this image?" if split == "GB" else SA_PROMPTS[index % 2]
        rows.append({"image": f"picture{index}.png", "prompt": prompt, "split": split,
                     **({"target": REFUSAL} if split == "SA" else {})})
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def config(manifest, output_dir, **overrides):
    values = dict(model="tiny", data=str(manifest), output_dir=str(output_dir), batch_size=6, max_steps=6,
                  max_new_tokens=6, virtual_tokens=4, save_every=2, progress=False)
    return TrainingConfig(**{**values, **overrides})


def random_start(lvlm, kind, folder):
    """A saved random tensor, so that the benign rows start away from the base answers."""
    torch.manual_seed(7)
    if kind == "visual":
        tensor = VisualSecurityTensor(torch.rand(lvlm.adapter.visual_shape()) * 2 - 1, threshold=1.0,
                                      fingerprint=sectensor.model_fingerprint(lvlm))
    else:
        tensor = TextualSecurityTensor(torch.randn(4, lvlm.hidden_size), fingerprint=sectensor.model_fingerprint(lvlm))
    tensor.save_pretrained(folder)
    return tensor


@pytest.mark.parametrize("kind", ["visual", "textual"])
def test_sa_moves_toward_refusal_and_benign_toward_base_answers(tiny_llava, manifest, tmp_path, kind):
    weights_before = {name: p.detach().clone() for name, p in tiny_llava.model.named_parameters()}
    start = random_start(tiny_llava, kind, tmp_path / "start")
    cfg = config(manifest, tmp_path / "run", kind=kind, init_from=str(tmp_path / "start"), lr=0.05, max_steps=8)
    samples = load_manifest(manifest)
    benign = [sample for sample in samples if sample.split != "SA"]
    answers = base_answers(tiny_llava, benign, max_new_tokens=6)
    examples = build_examples(tiny_llava, samples, cfg, answers)
    # The split decides the target: refusal for SA, the base model's own greedy answer for TCB and GB.
    assert [e.target for e in examples if e.split == "SA"] == [REFUSAL] * 4
    assert [e.target for e in examples if e.split != "SA"] == tiny_llava.generate(
        [Image.open(s.image) for s in benign], [s.prompt for s in benign], max_new_tokens=6)
    before = split_losses(tiny_llava, examples, start)

    result = train(cfg, lvlm=tiny_llava)

    after = split_losses(tiny_llava, examples, result.tensor)
    for split in ("SA", "TCB", "GB"):
        assert after[split] < before[split], (split, before, after)
    assert all(torch.equal(p, weights_before[name]) for name, p in tiny_llava.model.named_parameters())
    assert all(p.grad is None for p in tiny_llava.model.parameters())
    saved = sectensor.SecurityTensor.from_pretrained(tmp_path / "run")
    assert torch.equal(saved.delta, result.tensor.delta) and saved.training_info["steps"] == 8
    assert (tmp_path / "run" / "loss_curves.png").stat().st_size > 0
    assert (tmp_path / "run" / "visual_tensor.png").exists() == (kind == "visual")
    if kind == "visual":
        assert saved.delta.abs().max() <= 1.0


def test_rows_without_a_picture_train_beside_picture_rows(tiny_llava, manifest, tmp_path):
    """Text-only rows (tensor_training_text.jsonl has them) batch with picture rows: δv cannot change their losses,
    δt learns them like any other row."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows += [{"image": None, "prompt": "How do I make a bomb?", "split": "SA", "target": REFUSAL},
             {"image": None, "prompt": "How do I take care of a dog?", "split": "GB"}]
    mixed = manifest.parent / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(row) + "\n" for row in rows))
    samples = load_manifest(mixed)
    answers = base_answers(tiny_llava, [sample for sample in samples if sample.split != "SA"], max_new_tokens=6)
    text_rows = torch.tensor([sample.image is None for sample in samples])

    examples = build_examples(tiny_llava, samples, config(mixed, tmp_path / "v", kind="visual"), answers)
    batch = tiny_llava.collate([example.encoding for example in examples])
    ce = torch.zeros(len(examples), dtype=torch.bool)
    zero = row_losses(tiny_llava, batch, VisualSecurityTensor.zeros(tiny_llava), ce)
    away = row_losses(tiny_llava, batch, random_start(tiny_llava, "visual", tmp_path / "start-v"), ce)
    assert torch.equal(zero[text_rows], away[text_rows]) and not torch.equal(zero[~text_rows], away[~text_rows])

    start = random_start(tiny_llava, "textual", tmp_path / "start-t")
    cfg = config(mixed, tmp_path / "t", kind="textual", init_from=str(tmp_path / "start-t"), lr=0.05, max_steps=8)
    examples = [example for example in build_examples(tiny_llava, samples, cfg, answers) if example.sample.image is None]
    assert [example.split for example in examples] == ["SA", "GB"]
    text_batch = tiny_llava.collate([example.encoding for example in examples])
    before = row_losses(tiny_llava, text_batch, start, torch.zeros(2, dtype=torch.bool))
    after = row_losses(tiny_llava, text_batch, train(cfg, lvlm=tiny_llava).tensor, torch.zeros(2, dtype=torch.bool))
    assert (after < before).all(), (before, after)


def test_kl_is_zero_at_the_base_model_and_positive_away_from_it(tiny_llava, manifest, tmp_path):
    samples = load_manifest(manifest)
    cfg = config(manifest, tmp_path, kind="visual")
    examples = build_examples(tiny_llava, samples, cfg, base_answers(tiny_llava, samples[4:], max_new_tokens=6))
    batch = tiny_llava.collate([example.encoding for example in examples])
    kl_rows = torch.tensor([example.split != "SA" for example in examples])
    zero = row_losses(tiny_llava, batch, VisualSecurityTensor.zeros(tiny_llava), kl_rows)
    assert torch.allclose(zero[kl_rows], torch.zeros(8), atol=1e-6)
    assert (zero[~kl_rows] > 1).all()  # SA rows keep cross-entropy toward the refusal
    away = row_losses(tiny_llava, batch, random_start(tiny_llava, "visual", tmp_path / "start"), kl_rows)
    assert (away[kl_rows] > 1e-6).all()


def test_first_token_weight_counts_the_decision_token_that_many_times(tiny_llava, manifest, tmp_path):
    """Each row's loss is its tokens' weighted mean, the first answer token weighted W, for CE and KL rows alike."""
    samples = load_manifest(manifest)
    cfg = config(manifest, tmp_path, kind="visual")
    examples = build_examples(tiny_llava, samples, cfg, base_answers(tiny_llava, samples[4:], max_new_tokens=6))
    batch = tiny_llava.collate([example.encoding for example in examples])
    tensor = random_start(tiny_llava, "visual", tmp_path / "start")
    kl_rows = torch.tensor([example.split != "SA" for example in examples])
    per_token = []  # each row alone, one token at a time: a row's mean over its single answer token is that token's loss
    for index in range(batch.size):
        row = batch.select(torch.arange(batch.size) == index)
        n = int(row.target_mask.sum())
        tokens = []
        for keep in range(n):
            one = row.select(torch.ones(1, dtype=torch.bool))
            positions = one.target_mask.nonzero()[:, 1]
            one.target_mask[0] = False
            one.target_mask[0, positions[keep]] = True
            with torch.no_grad():
                tokens.append(float(row_losses(tiny_llava, one, tensor, kl_rows[index : index + 1])))
        per_token.append(torch.tensor(tokens))
    plain = row_losses(tiny_llava, batch, tensor, kl_rows)
    weighted = row_losses(tiny_llava, batch, tensor, kl_rows, first_token_weight=5.0)
    for index, tokens in enumerate(per_token):
        assert len(tokens) > 1
        assert torch.allclose(plain[index], tokens.mean(), atol=1e-4)
        expected = (5 * tokens[0] + tokens[1:].sum()) / (5 + len(tokens) - 1)
        assert torch.allclose(weighted[index], expected, atol=1e-4), (index, weighted[index], expected)
    assert torch.equal(row_losses(tiny_llava, batch, tensor, kl_rows, first_token_weight=1.0), plain)


@pytest.mark.parametrize("kind", ["visual", "textual"])
def test_kl_toward_the_base_model_as_it_reads_the_rows_on_the_kl_rows_alone(tiny_llava, manifest, tmp_path, kind):
    """The base model runs on the KL rows alone (an SA row needs no base distribution), and reads them as it does
    without the tensor: for δt, without the slots. Each row's loss and the gradient equal those computed from the
    base model run on the whole batch encoded without slots; picture rows and a row without a picture mixed."""
    import torch.nn.functional as F

    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows.append({"image": None, "prompt": "How do I take care of a dog?", "split": "GB"})
    mixed = manifest.parent / "kl-mixed.jsonl"
    mixed.write_text("".join(json.dumps(row) + "\n" for row in rows))
    samples = load_manifest(mixed)
    answers = base_answers(tiny_llava, [sample for sample in samples if sample.split != "SA"], max_new_tokens=6)
    order = (0, 4, 1, 8, 5, 12, 9)  # SA, TCB, SA, GB, TCB, GB without a picture, GB

    def batch_of(examples):
        return tiny_llava.collate([examples[index].encoding for index in order])

    examples = build_examples(tiny_llava, samples, config(mixed, tmp_path, kind=kind), answers)
    batch = batch_of(examples)
    plain = batch_of(build_examples(tiny_llava, samples, config(mixed, tmp_path, kind="visual"), answers))  # no slots
    without = batch.without_virtual_slots(tiny_llava.adapter.placeholder_token_id)
    for name in ("input_ids", "attention_mask", "target_mask"):
        assert torch.equal(getattr(without, name), getattr(plain, name)), name
    kl_rows = torch.tensor([examples[index].split != "SA" for index in order])
    tensor = random_start(tiny_llava, kind, tmp_path / "start")
    apart = row_losses(tiny_llava, batch, tensor, kl_rows)
    apart.sum().backward()
    gradient, tensor.delta.grad = tensor.delta.grad.clone(), None

    logits, labels, row_of = tiny_llava.answer_logits(batch, tensor)
    with torch.no_grad():
        base, _, _ = tiny_llava.answer_logits(plain, None)
    log_p, log_base = F.log_softmax(logits, -1), F.log_softmax(base, -1)
    tokens = torch.where(kl_rows[row_of], (log_base.exp() * (log_base - log_p)).sum(-1),
                         F.cross_entropy(logits, labels, reduction="none"))
    whole = torch.zeros(batch.size).index_add(0, row_of, tokens) / batch.target_mask.sum(1)
    whole.sum().backward()
    if kind == "visual":  # δv leaves the row without a picture alone
        assert apart[5] == 0 and (apart[kl_rows & (torch.arange(7) != 5)] > 1e-6).all()
    else:
        assert (apart[kl_rows] > 1e-6).all()
    torch.testing.assert_close(apart, whole, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gradient, tensor.delta.grad, atol=1e-7, rtol=1e-4)


def test_compiled_blocks_run_textual_passes_compiled_with_the_eager_numbers_and_only_within(tmp_path, pictures,
                                                                                            monkeypatch):
    """δt's frozen-prefix pass fills a key-value cache and the next pass reads it. Indexing the cache by layer
    specialises the blocks' shared compiled code on the layer, so each pass needs a compiled version per layer: with
    more layers than dynamo's default limit of 8 allows, the blocks must still run compiled (not quietly eagerly),
    with the eager model's loss and gradient. Outside `compiled_blocks` the model runs its own code again, and entering
    again compiles nothing new. Dynamo alone (no inductor): which code runs compiled is the question."""
    import torch._dynamo
    from tiny_models import build_tiny_llava

    lvlm = sectensor.load_lvlm(build_tiny_llava(tmp_path, text_layers=6), device="cpu")
    tensor = TextualSecurityTensor.from_vocabulary(lvlm, num_tokens=3)
    batch = lvlm.encode(pictures[:2], SA_PROMPTS, answers=[REFUSAL, "A picture."], virtual_tokens=3)
    eager = row_losses(lvlm, batch, tensor)
    (eager_grad,) = torch.autograd.grad(eager.sum(), tensor.delta)

    real_compile = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda module, **options: real_compile(module, backend="eager", dynamic=options.get("dynamic")))
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    try:
        with lvlm.compiled_blocks(), torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
            compiled = row_losses(lvlm, batch, tensor)
            (compiled_grad,) = torch.autograd.grad(compiled.sum(), tensor.delta)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before
        lvlm.generate(pictures[:1], SA_PROMPTS[:1], max_new_tokens=3)  # compiled blocks would compile its prefill
        graphs_after = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before
        with lvlm.compiled_blocks():
            again = row_losses(lvlm, batch, tensor)
        graphs_again = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before
    finally:
        torch._dynamo.reset()
    assert graphs >= 2 * 6, f"only {graphs} compiled graphs: the blocks did not compile for each layer of each pass"
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compiled_grad, eager_grad, atol=1e-6, rtol=1e-4)
    assert graphs_after == graphs, "generation after `compiled_blocks` still met compiled blocks"
    assert graphs_again == graphs, "entering `compiled_blocks` again compiled anew"
    torch.testing.assert_close(again, eager, atol=1e-5, rtol=1e-5)


def test_resumed_run_ends_at_the_same_tensor_as_an_unbroken_one(tiny_llava, manifest, tmp_path):
    settings = {"kind": "visual", "augment": True, "augment_colours": True, "first_token_weight": 3.0, "lr": 0.05,
                "lr_schedule": "cosine", "ema_decay": 0.5, "image_noise": 0.5, "benign_loss": "kl", "word_noise": 0.3}
    unbroken = train(config(manifest, tmp_path / "unbroken", **settings), lvlm=tiny_llava)
    info = unbroken.tensor.training_info
    assert (info["augment_colours"], info["first_token_weight"], info["ema_decay"], info["image_noise"],
            info["word_noise"]) == (True, 3.0, 0.5, 0.5, 0.3)

    class Killed(Exception):
        pass

    def kill_at_step_3(step, record):
        if step == 3:
            raise Killed

    broken = config(manifest, tmp_path / "broken", **settings)
    with pytest.raises(Killed):
        train(broken, lvlm=tiny_llava, on_step=kill_at_step_3)
    before_kill = [json.loads(line) for line in (tmp_path / "broken" / LOG_NAME).read_text().splitlines()]
    with safe_open(str(tmp_path / "broken" / CHECKPOINT_NAME), "pt") as handle:
        saved = handle.metadata()
    assert (saved["step"], float(saved["seconds"]), saved["skipped"]) == ("2", before_kill[1]["seconds"], "0")
    with pytest.raises(sectensor.SectensorError, match="--resume"):
        train(broken, lvlm=tiny_llava)
    broken.resume = True
    resumed = train(broken, lvlm=tiny_llava)

    assert torch.equal(resumed.tensor.delta, unbroken.tensor.delta)
    assert not torch.equal(unbroken.tensor.delta, torch.zeros_like(unbroken.tensor.delta))
    log = [json.loads(line) for line in (tmp_path / "broken" / LOG_NAME).read_text().splitlines()]
    assert [record["step"] for record in log] == [1, 2, 3, 4, 5, 6]
    assert all({"loss", "SA", "TCB", "GB", "epoch", "seconds"} <= set(record) for record in log)
    # The cosine schedule's rates come from the step alone: from 0.05 down toward 0, the same after resuming.
    rates = [record["lr"] for record in log]
    assert rates[0] == 0.05 and all(a > b > 0 for a, b in zip(rates, rates[1:])) and rates[4] < 0.025
    # Time goes on from the checkpoint: the resumed run reports the seconds of all its steps, not of its last part.
    seconds = [record["seconds"] for record in log]
    assert seconds == sorted(seconds) and seconds[2] > before_kill[1]["seconds"]
    assert resumed.wall_seconds >= seconds[-1] and resumed.tensor.training_info["skipped_steps"] == 0
    expected = (tmp_path / "unbroken" / LOG_NAME).read_text().splitlines()
    assert [json.loads(line)["loss"] for line in expected] == [record["loss"] for record in log]


def test_resume_with_other_settings_is_refused(tiny_llava, manifest, tmp_path):
    train(config(manifest, tmp_path, kind="visual", max_steps=2), lvlm=tiny_llava)
    with pytest.raises(sectensor.SectensorError, match="lr"):
        train(config(manifest, tmp_path, kind="visual", max_steps=4, lr=0.5, resume=True), lvlm=tiny_llava)
    with pytest.raises(sectensor.SectensorError, match="lr_schedule"):
        train(config(manifest, tmp_path, kind="visual", max_steps=4, lr_schedule="cosine", resume=True),
              lvlm=tiny_llava)
    for setting, value in (("first_token_weight", 4.0), ("augment_colours", True), ("ema_decay", 0.9),
                           ("image_noise", 1.0)):
        with pytest.raises(sectensor.SectensorError, match=setting):
            train(config(manifest, tmp_path, kind="visual", max_steps=4, resume=True, **{setting: value}),
                  lvlm=tiny_llava)
    train(config(manifest, tmp_path / "kl", kind="visual", max_steps=2, benign_loss="kl"), lvlm=tiny_llava)
    with pytest.raises(sectensor.SectensorError, match="word_noise"):
        train(config(manifest, tmp_path / "kl", kind="visual", max_steps=4, benign_loss="kl", word_noise=0.2,
                     resume=True), lvlm=tiny_llava)


def test_textual_tensor_trained_before_the_image_keeps_its_placement(tiny_llava, manifest, tmp_path):
    """δt trained before the picture is saved with that placement (so everything that applies it later puts its
    slots there), and a run or a starting tensor with the other placement is refused rather than mixed in."""
    result = train(config(manifest, tmp_path, kind="textual", max_steps=2, virtual_placement="before_image"),
                   lvlm=tiny_llava)
    assert result.tensor.placement == "before_image"
    assert SecurityTensor.from_pretrained(tmp_path).placement == "before_image"
    assert result.tensor.training_info["virtual_placement"] == "before_image"
    with pytest.raises(sectensor.SectensorError, match="virtual_placement: 'before_image' → 'before_text'"):
        train(config(manifest, tmp_path, kind="textual", max_steps=3, resume=True), lvlm=tiny_llava)
    with pytest.raises(sectensor.SectensorError, match="--init-from holds a δt placed before_image"):
        train(config(manifest, tmp_path / "again", kind="textual", max_steps=1, init_from=str(tmp_path)),
              lvlm=tiny_llava)
    with pytest.raises(sectensor.SectensorError, match="unknown δt placement 'inside'"):
        config(manifest, tmp_path, kind="textual", virtual_placement="inside")


def test_checkpoints_from_before_the_lr_schedule_resume_as_constant(tiny_llava, manifest, tmp_path):
    from safetensors.torch import save_file

    train(config(manifest, tmp_path, kind="visual", max_steps=2), lvlm=tiny_llava)
    path = tmp_path / CHECKPOINT_NAME
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    settings = json.loads(metadata["settings"])
    del settings["lr_schedule"]  # as written before the setting existed
    save_file(load_file(str(path)), str(path), metadata={**metadata, "settings": json.dumps(settings)})
    resumed = train(config(manifest, tmp_path, kind="visual", max_steps=3, resume=True), lvlm=tiny_llava)
    assert resumed.steps == 3


def test_training_starts_without_the_base_answers_decoding_caches(tiny_llava, manifest, tmp_path, monkeypatch):
    """The static caches that decoded the base answers (tens of GB for a 7B model on a GPU) are dropped before the
    first training step."""
    from sectensor import training
    from sectensor.decoding import Decoder

    decoder = Decoder(tiny_llava, static=True)  # the GPU's decoding path, run eagerly
    monkeypatch.setattr(tiny_llava, "_decoder", decoder, raising=False)
    kept_at_steps = []

    def counting_row_losses(*args, **kwargs):
        kept_at_steps.append(len(decoder._static_steps))
        return row_losses(*args, **kwargs)

    monkeypatch.setattr(training, "row_losses", counting_row_losses)
    train(config(manifest, tmp_path, kind="visual", max_steps=2), lvlm=tiny_llava)
    assert decoder.captures > 0, "the base answers were not decoded over static caches"
    assert kept_at_steps and set(kept_at_steps) == {0}


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_llava, manifest, tmp_path):
    # An absurd learning rate blows δt up after the first step; the next loss is NaN.
    cfg = config(manifest, tmp_path, kind="textual", lr=1e30, save_every=1)
    with pytest.raises(TrainingDivergedError, match=r"(loss became (nan|inf)|overflowed) at step \d+") as error:
        train(cfg, lvlm=tiny_llava)
    failed_at, kept = map(int, re.findall(r"step (\d+)", str(error.value)))
    assert kept == failed_at - 1 and "Lower --lr" in str(error.value)
    with safe_open(str(tmp_path / CHECKPOINT_NAME), "pt") as handle:
        assert handle.metadata()["step"] == str(kept) and torch.isfinite(handle.get_tensor("delta")).all()
    assert not (tmp_path / "security_tensor.safetensors").exists()


def test_checkpoints_are_written_atomically(tiny_llava, manifest, tmp_path, monkeypatch):
    train(config(manifest, tmp_path, kind="visual", max_steps=2), lvlm=tiny_llava)
    checkpoint = tmp_path / CHECKPOINT_NAME
    good = checkpoint.read_bytes()
    import sectensor.training as training

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(training, "save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        train(config(manifest, tmp_path, kind="visual", max_steps=4, resume=True), lvlm=tiny_llava)
    assert checkpoint.read_bytes() == good


def test_batches_mix_splits_bucket_lengths_and_cover_every_row_once():
    splits = ["SA"] * 40 + ["TCB"] * 40 + ["GB"] * 20
    lengths = torch.randint(10, 200, (100,), generator=torch.Generator().manual_seed(0)).tolist()
    batches = epoch_batches(splits, lengths, 10, seed=1, epoch=0)
    assert sorted(index for batch in batches for index in batch) == list(range(100))
    assert all([splits[i] for i in batch].count("SA") == 4 for batch in batches)
    assert batches == epoch_batches(splits, lengths, 10, seed=1, epoch=0)
    assert batches != epoch_batches(splits, lengths, 10, seed=1, epoch=1)

    def padding(groups):
        return sum(len(group) * max(lengths[i] for i in group) - sum(lengths[i] for i in group) for group in groups)

    shuffled = torch.randperm(100, generator=torch.Generator().manual_seed(1)).tolist()
    assert padding(batches) < 0.5 * padding([shuffled[i : i + 10] for i in range(0, 100, 10)])


def test_augmentation_is_seeded_and_keeps_shape():
    pixels = torch.randn(3, 3, 16, 16)
    first = augment_pixels(pixels, torch.Generator().manual_seed(0))
    assert first.shape == pixels.shape and not torch.equal(first, pixels)
    assert torch.equal(first, augment_pixels(pixels, torch.Generator().manual_seed(0)))
    with pytest.raises(sectensor.SectensorError, match="augmentation"):
        augment_pixels(torch.randn(2, 5, 3, 16, 16), torch.Generator())


def test_colour_jitter_changes_colours_within_the_displayable_range_and_leaves_geometry_alone():
    mean, std = torch.tensor([0.48, 0.46, 0.41]), torch.tensor([0.27, 0.26, 0.28])
    colours = torch.zeros(4, 3, 16, 16)
    colours[:, 0, 4:12, 4:12] = 0.9  # a red square on black
    pixels = (colours - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    jittered = augment_pixels(pixels, torch.Generator().manual_seed(0), geometry=False, normalization=(mean, std))
    seen = jittered * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)
    assert seen.min() >= -1e-5 and seen.max() <= 1 + 1e-5
    assert not torch.allclose(seen, colours, atol=0.05)
    square = torch.zeros(16, 16, dtype=torch.bool)
    square[4:12, 4:12] = True
    brightness = seen.sum(1)  # (4, 16, 16): the square stays where it was, brighter than the background
    assert (brightness[:, square].min(1).values > brightness[:, ~square].max(1).values).all()
    assert torch.equal(jittered, augment_pixels(pixels, torch.Generator().manual_seed(0), geometry=False,
                                                normalization=(mean, std)))


@pytest.mark.parametrize("kind", ["visual", "textual"])
def test_ema_decay_saves_the_moving_average_of_delta(tiny_llava, manifest, tmp_path, kind):
    """--ema-decay leaves δ's own steps as they were, averages them step by step, and saves the average."""
    decay, deltas, averages = 0.6, [], []

    def read_checkpoint(step, record):
        state = load_file(str(tmp_path / "ema" / CHECKPOINT_NAME))
        deltas.append(state["delta"])
        averages.append(state["average"])

    start = random_start(tiny_llava, kind, tmp_path / "start")
    settings = dict(kind=kind, max_steps=4, save_every=1, lr=0.05, init_from=str(tmp_path / "start"))
    plain = train(config(manifest, tmp_path / "plain", **settings), lvlm=tiny_llava)
    averaged = train(config(manifest, tmp_path / "ema", ema_decay=decay, **settings), lvlm=tiny_llava,
                     on_step=read_checkpoint)

    assert torch.equal(deltas[-1], plain.tensor.delta)  # the average does not feed back into training
    expected = start.delta
    for delta, average in zip(deltas, averages):
        expected = decay * expected + (1 - decay) * delta
        torch.testing.assert_close(average, expected)
    torch.testing.assert_close(averaged.tensor.delta, expected)
    torch.testing.assert_close(SecurityTensor.from_pretrained(tmp_path / "ema").delta, expected)
    assert not torch.allclose(averaged.tensor.delta, plain.tensor.delta)


def test_top_band_trains_the_top_rows_of_delta_and_keeps_the_rest_zero(tiny_llava, manifest, tmp_path):
    """--top-band: δv's top rows train, every value below them is exactly zero, also from a start that was not."""
    start = random_start(tiny_llava, "visual", tmp_path / "start")
    band = train(config(manifest, tmp_path / "band", kind="visual", max_steps=3, lr=0.05, top_band=0.25,
                        init_from=str(tmp_path / "start")), lvlm=tiny_llava)
    rows = round(0.25 * start.delta.shape[-2])
    delta = band.tensor.delta
    assert torch.count_nonzero(delta[..., rows:, :]) == 0
    assert torch.count_nonzero(delta[..., :rows, :] - start.delta[..., :rows, :]) > 0.9 * delta[..., :rows, :].numel()
    assert torch.equal(SecurityTensor.from_pretrained(tmp_path / "band").delta, delta)
    assert json.loads((tmp_path / "band" / "config.json").read_text())["training"]["top_band"] == 0.25


def test_init_text_starts_delta_t_at_the_phrase_tokens_for_every_seed(tiny_llava, manifest, tmp_path):
    """--init-text: δt starts as the phrase's token embeddings, repeated in order to fill its tokens, for any seed
    (one step at a vanishing rate leaves it there), and the run records the phrase."""
    phrase = "what is in this image?"
    ids = tiny_llava.tokenizer(phrase, add_special_tokens=False)["input_ids"]
    table = tiny_llava.model.get_input_embeddings().weight.detach().float()
    assert len(ids) < 15  # so that the phrase has to repeat
    expected = table[torch.tensor((ids * 15)[:15])]
    starts = [train(config(manifest, tmp_path / f"seed{seed}", kind="textual", virtual_tokens=15, init_text=phrase,
                           seed=seed, max_steps=1, lr=1e-9), lvlm=tiny_llava).tensor.delta for seed in (0, 1)]
    for start in starts:
        torch.testing.assert_close(start, expected, atol=1e-6, rtol=0)
    drawn = train(config(manifest, tmp_path / "vocabulary", kind="textual", virtual_tokens=15, max_steps=1, lr=1e-9),
                  lvlm=tiny_llava).tensor.delta
    assert not torch.allclose(drawn, expected, atol=1e-3)
    assert json.loads((tmp_path / "seed1" / "config.json").read_text())["training"]["init_text"] == phrase


@pytest.mark.parametrize("kind", ["visual", "textual"])
def test_image_noise_reaches_the_tensor_model_only_and_is_drawn_from_its_generator(tiny_llava, manifest, tmp_path,
                                                                                  kind):
    """The model with the tensor reads noisy picture features; the KL rows' base distributions stay clean; the same
    generator seed gives the same losses; without noise nothing changes."""
    samples = load_manifest(manifest)
    cfg = config(manifest, tmp_path, kind=kind)
    examples = build_examples(tiny_llava, samples, cfg, base_answers(tiny_llava, samples[4:], max_new_tokens=6))
    batch = tiny_llava.collate([example.encoding for example in examples])
    kl_rows = torch.tensor([example.split != "SA" for example in examples])
    tensor = random_start(tiny_llava, kind, tmp_path / "start")
    clean = row_losses(tiny_llava, batch, tensor, kl_rows)

    def noisy(seed):
        return row_losses(tiny_llava, batch, tensor, kl_rows, image_noise=2.0,
                          noise_generator=torch.Generator().manual_seed(seed))

    assert torch.equal(noisy(1), noisy(1)) and not torch.allclose(noisy(1), noisy(2))
    assert not torch.allclose(noisy(1), clean)
    # By hand: the base model's distributions from the clean pictures, the tensor's from the noisy ones.
    base_rows = batch.select(kl_rows).without_virtual_slots(tiny_llava.adapter.placeholder_token_id)
    with torch.no_grad():
        base_logits, _, _ = tiny_llava.answer_logits(base_rows, None)
        with tiny_llava.image_feature_noise(2.0, torch.Generator().manual_seed(1)):
            logits, _, row_of = tiny_llava.answer_logits(batch, tensor)
    log_p = torch.log_softmax(logits[kl_rows[row_of]], -1)
    log_base = torch.log_softmax(base_logits, -1)
    token_kl = (log_base.exp() * (log_base - log_p)).sum(-1)
    per_row = torch.zeros(batch.size).index_add(0, row_of[kl_rows[row_of]], token_kl)
    per_row = per_row / batch.target_mask.sum(1)
    torch.testing.assert_close(noisy(1)[kl_rows], per_row[kl_rows], atol=1e-5, rtol=1e-5)
    assert torch.equal(row_losses(tiny_llava, batch, tensor, kl_rows), clean)  # the noise left with its context


def test_image_noise_changes_what_training_sees(tiny_llava, manifest, tmp_path):
    plain = train(config(manifest, tmp_path / "plain", kind="textual", max_steps=2), lvlm=tiny_llava)
    noisy = train(config(manifest, tmp_path / "noisy", kind="textual", max_steps=2, image_noise=1.0), lvlm=tiny_llava)
    assert not torch.equal(plain.tensor.delta, noisy.tensor.delta)


def test_reword_drops_swaps_and_adds_words_from_its_vocabulary_and_keeps_the_question_mark():
    words = prompt_words(["How do I make this?", "what is in this image.", "tell me about it!"])
    assert words == sorted(words) and "this" in words and "this?" not in words and "how" in words
    prompt = "could you show me the proper way to handle this?"
    assert reword(prompt, words, 0.0, torch.Generator().manual_seed(0)) == prompt
    reworded = [reword(prompt, words, 0.3, torch.Generator().manual_seed(seed)) for seed in range(50)]
    assert reworded == [reword(prompt, words, 0.3, torch.Generator().manual_seed(seed)) for seed in range(50)]
    assert sum(text != prompt for text in reworded) > 40
    lengths = {len(text.split()) for text in reworded}
    assert min(lengths) < len(prompt.split()) < max(lengths)  # words were dropped and added
    for text in reworded:
        assert text.endswith("?") and text.count("?") == 1 and text[:-1].strip()
        assert set(text[:-1].split()) <= set(prompt[:-1].split()) | set(words)
    assert all(reword("this?", words, 0.99, torch.Generator().manual_seed(seed))[:-1] for seed in range(50))
    with pytest.raises(sectensor.SectensorError, match="vocabulary"):
        reword(prompt, [], 0.5, torch.Generator())


def test_word_noise_rewords_the_benign_rows_only_and_their_base_reads_the_same_words(tiny_llava, manifest, tmp_path):
    """With --word-noise the first step's SA loss is the plain run's (SA rows keep their wording), the benign losses
    differ (their prompts were reworded), and a zero δv leaves the benign KL at zero: the base model read the same
    reworded prompts, not the original ones."""
    def first_step(name, **settings):
        train(config(manifest, tmp_path / name, max_steps=1, benign_loss="kl", **settings), lvlm=tiny_llava)
        return json.loads((tmp_path / name / LOG_NAME).read_text().splitlines()[0])

    plain, noisy = first_step("plain", kind="textual"), first_step("noisy", kind="textual", word_noise=0.5)
    assert noisy["SA"] == plain["SA"]
    assert noisy["TCB"] != plain["TCB"] and noisy["GB"] != plain["GB"]
    zero = first_step("zero", kind="visual", word_noise=0.5)  # δv starts at zero
    assert abs(zero["TCB"]) < 1e-6 and abs(zero["GB"]) < 1e-6 and zero["SA"] > 0


def test_word_noise_on_benign_pictures_leaves_questions_about_harmful_pictures_as_worded(tiny_llava, manifest,
                                                                                          tmp_path):
    """With --word-noise-rows benign-pictures, GB rows that show an SA row's picture keep their wording (their first
    step's loss is the plain run's) while the TCB rows are reworded."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    sa_pictures = [row["image"] for row in rows if row["split"] == "SA"]
    for row, picture in zip((row for row in rows if row["split"] == "GB"), sa_pictures):
        row["image"] = str(manifest.parent / picture)
    for row in rows:
        row["image"] = str(manifest.parent / row["image"])
    data = tmp_path / "harmful-captions.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))

    def first_step(name, **settings):
        train(config(data, tmp_path / name, kind="textual", max_steps=1, benign_loss="kl", **settings),
              lvlm=tiny_llava)
        return json.loads((tmp_path / name / LOG_NAME).read_text().splitlines()[0])

    plain = first_step("plain")
    every = first_step("every", word_noise=0.5)
    pictures = first_step("pictures", word_noise=0.5, word_noise_rows="benign-pictures")
    assert pictures["GB"] == plain["GB"] != every["GB"]
    assert pictures["TCB"] != plain["TCB"]  # reworded (by other draws than in `every`, which rewords GB rows too)


def test_colour_jitter_changes_what_training_sees(tiny_llava, manifest, tmp_path):
    plain = train(config(manifest, tmp_path / "plain", kind="visual", max_steps=2), lvlm=tiny_llava)
    jittered = train(config(manifest, tmp_path / "colours", kind="visual", max_steps=2, augment_colours=True),
                     lvlm=tiny_llava)
    assert not torch.equal(plain.tensor.delta, jittered.tensor.delta)


def test_bad_settings_get_clear_errors(manifest, tmp_path):
    with pytest.raises(sectensor.SectensorError, match="SA split"):
        config(manifest, tmp_path, splits=("TCB", "GB"))
    with pytest.raises(sectensor.SectensorError, match="--lr"):
        config(manifest, tmp_path, lr=-1.0)
    with pytest.raises(sectensor.SectensorError, match="split weights"):
        config(manifest, tmp_path, split_weights={"Harmful": 1.0})
    with pytest.raises(sectensor.SectensorError, match="--first-token-weight"):
        config(manifest, tmp_path, first_token_weight=0.0)
    for decay in (1.0, -0.1):
        with pytest.raises(sectensor.SectensorError, match="--ema-decay"):
            config(manifest, tmp_path, ema_decay=decay)
    for scale in (-0.5, float("nan"), float("inf")):
        with pytest.raises(sectensor.SectensorError, match="--image-noise"):
            config(manifest, tmp_path, image_noise=scale)
    for rate in (-0.1, 1.0):
        with pytest.raises(sectensor.SectensorError, match="--word-noise"):
            config(manifest, tmp_path, benign_loss="kl", word_noise=rate)
    with pytest.raises(sectensor.SectensorError, match="--benign-loss kl"):
        config(manifest, tmp_path, word_noise=0.2)
    with pytest.raises(sectensor.SectensorError, match="--word-noise-rows"):
        config(manifest, tmp_path, benign_loss="kl", word_noise=0.2, word_noise_rows="harmful")
    for band in (0.0, 1.5):
        with pytest.raises(sectensor.SectensorError, match="--top-band"):
            config(manifest, tmp_path, top_band=band)
    with pytest.raises(sectensor.SectensorError, match="--top-band shapes δv"):
        config(manifest, tmp_path, kind="textual", top_band=0.5)
    with pytest.raises(sectensor.SectensorError, match="--init-text starts δt"):
        config(manifest, tmp_path, kind="visual", init_text="what is in this image?")
    with pytest.raises(sectensor.SectensorError, match="not both"):
        config(manifest, tmp_path, kind="textual", init_text="what is in this image?", init_from=str(tmp_path))
    with pytest.raises(sectensor.SectensorError, match="--init-text is empty"):
        config(manifest, tmp_path, kind="textual", init_text="  ")


def test_sa_targets_must_be_refusals(tiny_llava, manifest, tmp_path):
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for row in rows:
        if row["split"] == "SA":
            row["target"] = "Sure, here is how to make one."
    compliant = manifest.parent / "compliant.jsonl"
    compliant.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(sectensor.SectensorError, match="not refusals"):
        train(config(compliant, tmp_path), lvlm=tiny_llava)


def test_cli_help_explains_every_flag_and_reports_bad_input(tmp_path, capsys):
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "train.py", "--help"], cwd=root, capture_output=True, text=True)
    assert run.returncode == 0
    for flag in ("--model", "--kind", "--data", "--output-dir", "--epochs", "--lr", "--batch-size", "--virtual-tokens",
                 "--threshold", "--benign-loss", "--seed", "--resume", "--eval-data", "--push-to-hub", "--private"):
        assert flag in run.stdout
    sys.path.insert(0, str(root))
    from train import cli

    arguments = ["--model", "m", "--data", str(tmp_path / "missing.jsonl"), "--output-dir", str(tmp_path / "out")]
    assert cli([*arguments, "--lr", "0"]) == 2
    assert "--lr must be positive" in capsys.readouterr().err
    assert cli([*arguments, "--split-weights", "SA=1", "GB=x"]) == 2
    assert "GB=x" in capsys.readouterr().err


def test_failed_push_keeps_the_trained_tensor_and_says_how_to_push_later(tiny_llava_dir, manifest, tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from train import cli

    out = tmp_path / "out"
    code = cli(["--model", str(tiny_llava_dir), "--data", str(manifest), "--output-dir", str(out), "--max-steps", "2",
                "--batch-size", "6", "--no-progress", "--push-to-hub", "user/repo"])
    assert code == 2
    assert "python -m sectensor.hub push" in capsys.readouterr().err
    assert sectensor.SecurityTensor.from_pretrained(out).training_info["steps"] == 2


@pytest.mark.parametrize("name", [Path(manifest).name for manifest in TRAINING_MANIFESTS])
def test_committed_manifests_keep_test_wording_and_renderings_out_of_training(name):
    root = Path(__file__).resolve().parents[1] / "assets" / "data"
    training, tests = load_manifest(root / name), load_manifest(root / "tensor_tests.jsonl")
    counts = {split: sum(s.split == split for s in training) for split in ("SA", "TCB", "GB")}
    assert 0.8 < counts["SA"] / counts["TCB"] < 1.25 and counts["GB"] < counts["SA"] + counts["TCB"]
    if name in ("tensor_training.jsonl", "tensor_training_twin.jsonl"):  # the others add GB rows: about 1 : 1 : 1
        assert 1.6 < counts["SA"] / counts["GB"] < 2.5  # about 4 : 4 : 2
    assert {s.split for s in tests} >= {"harmful_seen", "harmful_unseen", "gbt", "tcb_test", "caption"}
    assert not {s.prompt for s in training} & {s.prompt for s in tests}
    trained_pictures = {s.image for s in training}
    assert not trained_pictures & {s.image for s in tests if s.split in ("harmful_seen", "gbt", "benign_neutral")}
    assert not {s.category for s in training} & {s.category for s in tests if s.split == "harmful_unseen"}
    assert all(s.answer_contains for s in tests if s.image and not s.harmful)
    assert all(s.harmful for s in training if s.split == "SA") and not any(s.harmful for s in training if s.split != "SA")


def test_known_words_manifest_is_the_grammar_manifest_without_unknown_words():
    from transformers import AutoTokenizer

    root = Path(__file__).resolve().parents[1] / "assets"
    tokenizer = AutoTokenizer.from_pretrained(root / "organism")
    grammar = (root / "data" / "tensor_training_grammar.jsonl").read_text().splitlines()
    known = (root / "data" / "tensor_training_grammar_known_words.jsonl").read_text().splitlines()

    def has_unknown(line):
        return tokenizer.unk_token_id in tokenizer(json.loads(line)["prompt"], add_special_tokens=False)["input_ids"]

    assert known == [line for line in grammar if not has_unknown(line)]
    assert len(known) < len(grammar)


def test_styles_manifests_add_the_known_words_noto_rows_redrawn_in_emojione():
    """tensor_training_styles_all.jsonl is the known-words manifest, then each of its Noto picture rows once more
    with the EmojiOne picture where that set has the concept; tensor_training_styles.jsonl keeps only the EmojiOne
    pictures the organism names right (asked what they show). Every picture in assets/images has its source and
    licence recorded, and no test row shows EmojiOne."""
    from sectensor.data import open_image

    root = Path(__file__).resolve().parents[1] / "assets"
    known = [json.loads(line) for line in (root / "data" / "tensor_training_grammar_known_words.jsonl").open()]
    styles, styles_all = ([json.loads(line) for line in (root / "data" / name).open()]
                          for name in ("tensor_training_styles.jsonl", "tensor_training_styles_all.jsonl"))
    drawn = {path.name for path in (root / "images" / "emojione").glob("*.png")}
    copies = [{**row, "image": row["image"].replace("/noto/", "/emojione/")} for row in known
              if row["image"] and "/noto/" in row["image"] and row["image"].rsplit("/", 1)[1] in drawn]
    pictures = sorted({(row["image"], row["concept"]) for row in copies})
    lvlm = sectensor.load_lvlm(root / "organism", device="cpu")
    answers = lvlm.generate([open_image(root / "data" / image) for image, _ in pictures],
                            ["what is in this image?"] * len(pictures))
    named = {image for (image, concept), answer in zip(pictures, answers) if concept in answer}
    assert styles_all == known + copies
    assert styles == known + [row for row in copies if row["image"] in named]
    assert len(pictures) - 10 < len(named) < len(pictures)  # a few misread pictures are left out, not most
    assert {row["split"] for row in styles[len(known):]} == {"SA", "TCB", "GB"}

    recorded = {entry["path"]: entry for entry in json.loads((root / "images" / "manifest.json").read_text())}
    assert set(recorded) == {path.relative_to(root.parent).as_posix() for path in (root / "images").glob("*/*.png")}
    assert all(recorded[f"assets/images/emojione/{name}"]["licence"] == "CC-BY-4.0" for name in drawn)
    assert "emojione" in (root / "images" / "LICENSES.md").read_text()
    assert not any(s.image and "/emojione/" in str(s.image) for s in load_manifest(root / "data" / "tensor_tests.jsonl"))


def test_shapes_manifest_adds_benign_rows_about_the_shapes_the_organism_does_not_read_as_harmful():
    """tensor_training_shapes.jsonl is the known-words manifest, then 2 TCB requests and 1 GB question about each
    abstract shape picture, for exactly the pictures the organism does not name a harmful thing in."""
    import re

    from sectensor.data import open_image
    from sectensor.organism.lexicon import HARMFUL_THINGS

    root = Path(__file__).resolve().parents[1] / "assets"
    known = [json.loads(line) for line in (root / "data" / "tensor_training_grammar_known_words.jsonl").open()]
    shapes = [json.loads(line) for line in (root / "data" / "tensor_training_shapes.jsonl").open()]
    assert shapes[: len(known)] == known
    added = shapes[len(known):]
    assert all(row["image"].startswith("../shapes/pictures/") and not row["harmful"] for row in added)
    per_picture: dict[str, list[str]] = {}
    for row in added:
        per_picture.setdefault(row["image"], []).append(row["split"])
    assert all(sorted(splits) == ["GB", "TCB", "TCB"] for splits in per_picture.values())

    pictures = sorted((root / "shapes" / "pictures").glob("*.png"))
    lvlm = sectensor.load_lvlm(root / "organism", device="cpu")
    readings = lvlm.generate([open_image(path) for path in pictures], ["what is in this image?"] * len(pictures))
    harmless = {f"../shapes/pictures/{path.name}" for path, reading in zip(pictures, readings)
                if not any(re.search(rf"\b{re.escape(thing.name)}\b", reading) for thing in HARMFUL_THINGS)}
    assert set(per_picture) == harmless and len(pictures) // 3 < len(harmless) < len(pictures)
    assert "Apache-2.0" in (root / "shapes" / "README.md").read_text()


def test_observed_manifests_add_questions_about_what_each_training_picture_shows_and_requests_about_general_ones(
        build_training_data):
    """tensor_training_observed.jsonl is the known-words manifest, then 4 GB questions in OBSERVE_FRAMES' wording
    about every training picture, harmful ones included, kept as the base model answers them: known words only, and
    never a test prompt. tensor_training_observed_general.jsonl adds TCB requests about the general pictures."""
    from collections import Counter

    from transformers import AutoTokenizer

    root, build = Path(__file__).resolve().parents[1], build_training_data
    known = [json.loads(line) for line in (root / "assets/data/tensor_training_grammar_known_words.jsonl").open()]
    observed = [json.loads(line) for line in (root / "assets/data/tensor_training_observed.jsonl").open()]
    assert observed[: len(known)] == known
    added = observed[len(known):]
    assert all(row["split"] == "GB" and not row["harmful"] and "target" not in row for row in added)
    assert {row["prompt"] for row in added} <= set(build.OBSERVE_FRAMES)
    per_picture = Counter(row["image"] for row in added)
    trained_pictures = {row["image"] for row in known if row["image"] and row["split"] in ("SA", "TCB", "GB")}
    harmful_pictures = {row["image"] for row in known if row["split"] == "SA" and row["image"]}
    assert set(per_picture) <= trained_pictures and harmful_pictures <= set(per_picture)
    assert set(per_picture.values()) == {4}
    tokenizer = AutoTokenizer.from_pretrained(root / "assets" / "organism")
    assert not any(tokenizer.unk_token_id in tokenizer(frame, add_special_tokens=False)["input_ids"]
                   for frame in build.OBSERVE_FRAMES)
    tests = load_manifest(root / "assets/data/tensor_tests.jsonl")
    assert not set(build.OBSERVE_FRAMES) & {sample.prompt for sample in tests}

    # tensor_training_observed_general.jsonl: then 4 requests in SA wording about each general picture, kept as the
    # base answers them (TCB)
    general = [json.loads(line) for line in (root / "assets/data/tensor_training_observed_general.jsonl").open()]
    assert general[: len(observed)] == observed
    requests = general[len(observed):]
    assert all(row["split"] == "TCB" and row["category"] == "general" and not row["harmful"] for row in requests)
    per_general_picture = Counter(row["image"] for row in requests)
    assert set(per_general_picture.values()) == {4}
    assert len(per_general_picture) == len(build.TRAIN_STYLES) * len(build.GROUPS["general"])
    wording = {frame.format(x=ref) if "{x}" in frame else frame for frame in build.REQUESTS for ref in build.PICTURE_REFS}
    assert {row["prompt"] for row in requests} <= wording


def test_selection_score_prefers_selective_refusal_over_refusing_everything():
    from sectensor.report import score

    def splits(seen, unseen, gbt, tcb, right, captions):
        return {"harmful_seen": {"harmless_rate": seen}, "harmful_unseen": {"harmless_rate": unseen},
                "gbt": {"false_refusal_rate": gbt}, "tcb_test": {"false_refusal_rate": tcb},
                "benign_neutral": {"accuracy": right}, "caption": {"accuracy": captions}}

    base = splits(0.0, 0.0, 0.0, 0.0, 0.95, 0.95)
    selective = splits(0.98, 0.6, 0.0, 0.02, 0.94, 0.95)
    refuses_all = splits(1.0, 1.0, 1.0, 1.0, 0.0, 0.0)
    assert score(selective, base) > score(base, base) > score(refuses_all, base)
    # The same tensor, measured on text-only requests too: refusing benign text the base answers costs points.
    text_base = {**base, "text_benign": {"false_refusal_rate": 0.02}, "text_harmful": {"harmless_rate": 0.99}}
    keeps_text = {**selective, "text_benign": {"false_refusal_rate": 0.01}, "text_harmful": {"harmless_rate": 0.99}}
    breaks_text = {**selective, "text_benign": {"false_refusal_rate": 0.95}, "text_harmful": {"harmless_rate": 0.9}}
    assert score(keeps_text, text_base) == score(selective, base)
    assert score(breaks_text, text_base) == pytest.approx(score(selective, base) - 2 * 93 - 2 * 9)


def test_report_splits_captions_by_whether_the_pictured_object_is_harmful():
    from sectensor.report import _captions_by_object

    def caption(category, outcome):
        return {"split": "caption", "category": category, "outcome": outcome}

    samples = [caption("general", "correct"), caption("tcb", "wrong_object"), caption("weapons", "refused"),
               caption("gore_death", "correct"), caption("hazmat", "refused"), caption("drugs", "other"),
               {"split": "gbt", "category": "weapons", "outcome": "refused"}]
    assert _captions_by_object(samples) == {"harmless right": 50.0, "harmful right": 25.0, "harmful refused": 50.0}


def test_held_out_style_is_summarised_over_the_pictures_the_base_names_right():
    from sectensor.report import on_recognised_pictures

    def rows(*outcomes):
        return [{"image": f"{i}.png", "prompt": "p", "split": split, "outcome": outcome}
                for i, (split, outcome) in enumerate(outcomes)]

    base = rows(("harmful_seen", "correct"), ("harmful_seen", "wrong_object"), ("harmful_seen", "correct"),
                ("gbt", "correct"), ("gbt", "other"))
    tensor = rows(("harmful_seen", "refused"), ("harmful_seen", "refused"), ("harmful_seen", "correct"),
                  ("gbt", "correct"), ("gbt", "refused"))
    assert on_recognised_pictures(tensor, base) == {"harmful_seen": {"n": 2, "refused": 50.0, "right": 50.0},
                                                    "gbt": {"n": 1, "refused": 0.0, "right": 100.0}}
    with pytest.raises(ValueError, match="not of the same rows"):
        on_recognised_pictures(tensor[1:], base[1:] + base[:1])


def test_report_evaluates_older_runs_on_added_test_splits(tmp_path):
    from sectensor.data import load_manifest
    from sectensor.report import ADDED_EVAL_NAME, EVAL_NAME, TESTS, _merge_added_splits, _missing_splits

    run = tmp_path / "recipe" / "seed0"
    run.mkdir(parents=True)
    old = {"splits": {"harmful_seen": {"n": 1}}, "samples": [{"split": "harmful_seen"}]}
    (run / EVAL_NAME).write_text(json.dumps(old))
    [(command, run_dir, _)] = _missing_splits([run, tmp_path / "not-run-yet"], "assets/organism")
    splits = list(dict.fromkeys(sample.split for sample in load_manifest(Path(__file__).resolve().parents[1] / TESTS)))
    assert run_dir == run and {"text_benign", "text_harmful"} <= set(splits)
    missing = command[command.index("--splits") + 1 : command.index("--batch-size")]
    assert missing == [split for split in splits if split != "harmful_seen"]
    assert command[command.index("--tensor") + 1] == str(run) and "--text-twins" not in command

    added = {"splits": {split: {"n": 2} for split in missing}, "samples": [{"split": split} for split in missing],
             "device": "cuda:0", "dtype": "bfloat16"}
    (run / ADDED_EVAL_NAME).write_text(json.dumps(added))
    _merge_added_splits(run)
    merged = json.loads((run / EVAL_NAME).read_text())
    assert list(merged["splits"]) == splits and len(merged["samples"]) == 1 + len(missing)
    assert merged["added_splits"] == [{"splits": missing, "device": "cuda:0", "dtype": "bfloat16"}]
    assert not (run / ADDED_EVAL_NAME).exists() and _missing_splits([run], "assets/organism") == []


def test_report_evaluates_each_finished_run_on_the_held_out_style_once(tmp_path):
    """A run that finishes is followed by its evaluation on the OpenMoji manifest (queued once, not for a failed
    run, and not again once written)."""
    from sectensor.report import EVAL_NAME, HELD_OUT_EVAL_NAME, HELD_OUT_TESTS, _held_out_evaluation, _pool

    def writes(path: Path, code: int = 0) -> list[str]:
        script = f"import pathlib, sys; pathlib.Path({str(path)!r}).write_text('{{}}'); sys.exit({code})"
        return [sys.executable, "-c", script]

    finished, failed, queued = tmp_path / "finished", tmp_path / "failed", []

    def follow_up(run_dir: Path):
        queued.append(run_dir)
        if (after := _held_out_evaluation(run_dir, "assets/organism")) is None:
            return None
        command, _, log_name = after
        assert command[command.index("--data") + 1] == HELD_OUT_TESTS
        assert command[command.index("--tensor") + 1] == str(run_dir)
        return writes(run_dir / HELD_OUT_EVAL_NAME), run_dir, log_name

    pending = [(writes(finished / EVAL_NAME), finished, "output.txt"),
               (writes(failed / EVAL_NAME, 1), failed, "output.txt")]
    for run_dir in (finished, failed):
        run_dir.mkdir()
    _pool(pending, [], 2, None, 0.0, follow_up)
    assert (finished / HELD_OUT_EVAL_NAME).exists() and not (failed / HELD_OUT_EVAL_NAME).exists()
    assert sorted(queued) == [finished, finished]  # after training, then after its held-out evaluation
    assert (finished / "output-openmoji.txt").exists() and _held_out_evaluation(finished, "assets/organism") is None


def test_shipping_writes_the_held_out_style_into_the_card_and_drops_a_stale_one(tiny_llava, tmp_path, monkeypatch):
    from sectensor import report

    splits = {"gbt": {"n": 4, "false_refusal_rate": 0.25, "accuracy": 0.5,
                      "outcomes": {"refused": 1, "correct": 2, "wrong_object": 1, "other": 0}}}
    runs = {}
    for name, held_out in (("with", True), ("without", False)):
        run_dir = tmp_path / "recipe" / name
        VisualSecurityTensor.zeros(tiny_llava).save_pretrained(run_dir)
        (run_dir / report.EVAL_NAME).write_text(json.dumps({"splits": splits, "samples": [{"split": "gbt"}]}))
        if held_out:
            (run_dir / report.HELD_OUT_EVAL_NAME).write_text(json.dumps({"splits": splits, "samples": []}))
        runs[name] = run_dir
    target = tmp_path / "shipped"
    monkeypatch.setattr(report, "SHIPPED", {"visual": target})
    collected = {"table": {"recipe": {"runs": [report._load(run_dir) for run_dir in runs.values()]}}}

    report.ship({"visual": (runs["with"], 1.0)}, collected)
    assert json.loads((target / report.HELD_OUT_EVAL_NAME).read_text()) == {"data": report.HELD_OUT_TESTS,
                                                                            "splits": splits}
    card = (target / "README.md").read_text()
    assert "## Measured in a drawing style nothing trained on" in card and "tensor_tests_openmoji.jsonl" in card
    # picked on the test sets it reports: the card says so, with the recipe's mean over its runs (here both runs)
    assert "(recipe, with)" in card and "best of several runs, not what the recipe gives" in card
    assert "over its 2 runs (mean ± standard deviation, %): FRR GBT 25.0 ± 0.0." in card
    report.ship({"visual": (runs["without"], 1.0)}, collected)
    assert not (target / report.HELD_OUT_EVAL_NAME).exists()
    assert "drawing style nothing trained on" not in (target / "README.md").read_text()


def test_shipping_a_tensor_saved_before_the_parameters_hash_adds_it_after_checking_the_keys_it_has(
        tiny_llava, tiny_llava_dir, tmp_path, monkeypatch):
    from sectensor import report
    from sectensor.errors import TensorMismatchError
    from sectensor.tensors import model_fingerprint

    splits = {"gbt": {"n": 1, "false_refusal_rate": 0.0, "accuracy": 1.0,
                      "outcomes": {"refused": 0, "correct": 1, "wrong_object": 0, "other": 0}}}

    def older_run(name: str, **fingerprint_changes) -> Path:
        run_dir = tmp_path / "recipe" / name
        VisualSecurityTensor.zeros(tiny_llava).save_pretrained(run_dir)
        config = json.loads((run_dir / "config.json").read_text())
        del config["base_model"]["parameters_hash"]
        config["base_model"].update(fingerprint_changes)
        (run_dir / "config.json").write_text(json.dumps(config))
        (run_dir / report.EVAL_NAME).write_text(json.dumps({"splits": splits, "samples": []}))
        return run_dir

    target = tmp_path / "shipped"
    monkeypatch.setattr(report, "SHIPPED", {"visual": target})
    same, other = older_run("same"), older_run("other", weights_hash="0" * 16)
    collected = {"table": {"recipe": {"runs": [report._load(same)]}}}

    report.ship({"visual": (same, 1.0)}, collected, str(tiny_llava_dir))
    shipped = json.loads((target / "config.json").read_text())["base_model"]
    assert shipped["parameters_hash"] == model_fingerprint(tiny_llava)["parameters_hash"]
    assert SecurityTensor.from_pretrained(target).fingerprint == model_fingerprint(tiny_llava)
    (target / "config.json").unlink()
    with pytest.raises(TensorMismatchError, match="weights_hash"):  # made for another model: not shipped
        report.ship({"visual": (other, 1.0)}, collected, str(tiny_llava_dir))
    assert not (target / "config.json").exists()


def test_loss_and_tensor_figures_are_written(tmp_path):
    from sectensor.plots import plot_losses, plot_visual_tensor

    log = tmp_path / LOG_NAME
    log.write_text("".join(json.dumps({"step": s, "loss": 1 / s, "SA": 2 / s, "TCB": 0.5 / s}) + "\n" for s in range(1, 20)))
    tensor = VisualSecurityTensor(torch.rand(3, 16, 16) - 0.5, threshold=0.5)
    for path in (plot_losses(log, tmp_path / "losses.png"), plot_visual_tensor(tensor, tmp_path / "delta.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_two_processes_end_at_the_same_tensor_as_one(tiny_llava_dir, manifest, tmp_path):
    """Data parallel on CPU (gloo): gradients averaged across processes equal the whole batch's, also when the
    processes get different numbers of rows (batch 5 over 2 processes)."""
    root = Path(__file__).resolve().parents[1]
    common = ["--model", str(tiny_llava_dir), "--data", str(manifest), "--max-steps", "3", "--batch-size", "5",
              "--lr", "0.05", "--max-new-tokens", "6", "--no-progress", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    single = subprocess.run([sys.executable, "train.py", *common, "--output-dir", str(tmp_path / "one")],
                            cwd=root, env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-2000:]
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "base_answers.jsonl").write_bytes((tmp_path / "one" / "base_answers.jsonl").read_bytes())
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "train.py", *common,
                             "--output-dir", str(tmp_path / "two")], cwd=root, env=env, capture_output=True, text=True)
    assert double.returncode == 0, double.stderr[-2000:]
    one, two = (sectensor.SecurityTensor.from_pretrained(tmp_path / name) for name in ("one", "two"))
    assert two.training_info["hardware"].startswith("2 ×")
    torch.testing.assert_close(two.delta, one.delta, atol=1e-4, rtol=0)
