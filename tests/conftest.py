"""Shared fixtures: a one-process Megatron world and a small real data set written with the harness."""

from __future__ import annotations

import os

import numpy as np
import pytest

from harness import warnings_filter

os.environ.setdefault("OMP_NUM_THREADS", "2")
warnings_filter.install()    # setup.cfg's filterwarnings repeats the list for pytest's per-test filters

WORDS = ["red", "blue", "green", "yellow", "circle", "square", "big", "small", "cat", "dog", "tree", "house"]


@pytest.fixture(scope="session")
def world():
    """torch.distributed (gloo, world of one) and Megatron's process groups at TP=PP=1."""
    from harness.distributed.launch import init_distributed
    from harness.parallel.layout import initialize_layout

    init_distributed()
    return initialize_layout(1, 1)


def _samples(n: int, seed: int, size: int = 128):
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = np.full((size, size, 3), 255, np.uint8)
        colour, (x, y) = rng.integers(0, 255, 3), rng.integers(0, size // 2, 2)
        img[y:y + size // 3, x:x + size // 3] = colour
        yield img, " ".join(rng.choice(WORDS, 3)), f"s{seed}-{i}"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A train set (96 samples in 3 shards) + held-out set (16) stored at 128 px (64 px models read it
    area-down-sampled) + tokenizer, written with harness.data."""
    from harness.data.reader import iter_captions
    from harness.data.tokenizer import train_tokenizer
    from harness.data.writer import write_dataset

    root = tmp_path_factory.mktemp("tiny_data")
    write_dataset(_samples(96, 0), root / "train", resolution_px=128, samples_per_shard=32, progress=False)
    write_dataset(_samples(16, 1), root / "heldout", resolution_px=128, samples_per_shard=32, progress=False)
    train_tokenizer(iter_captions(root / "train"), root / "train" / "tokenizer.model", vocab_size=64)
    return root


@pytest.fixture
def tiny_overrides(tiny_data, tmp_path):
    """Overrides for a seconds-long tiny training run on `tiny_data`."""
    return [f"data.path={tiny_data / 'train'}", f"data.heldout_path={tiny_data / 'heldout'}",
            f"train.run_dir={tmp_path / 'run'}", "model.size=tiny", "parallel.global_batch=8",
            "parallel.micro_batch=4", "train.log_every_steps=1", "train.sample_every_steps=0",
            "train.num_samples=2", "diffusion.sample_steps=2", "optim.warmup_steps=2",
            "train.matmul_precision=highest", "train.continuity_samples=8"]
