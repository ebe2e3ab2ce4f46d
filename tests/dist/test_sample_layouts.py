"""tools/sample.py at other layouts: the same images from one process, DP=2 and TP=2 (2 gloo processes)."""

import numpy as np
from launching import REPO, launch
from PIL import Image

from harness.config import load
from harness.train.loop import train

PROMPTS = ["red cat", "blue dog tree", "big house", "small green circle", "yellow square"]


def test_sample_is_the_same_at_any_layout(world, tiny_data, tmp_path):
    run = tmp_path / "run"
    train(load(None, [f"data.path={tiny_data / 'train'}", f"data.heldout_path={tiny_data / 'heldout'}",
                      f"train.run_dir={run}", "model.size=tiny", "parallel.global_batch=8", "parallel.micro_batch=4",
                      "train.sample_every_steps=0", "train.num_samples=2", "diffusion.sample_steps=2",
                      "optim.warmup_steps=2", "train.matmul_precision=highest", "train.steps=2"]))
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    common = [str(REPO / "tools/sample.py"), "--ckpt", str(run), "--prompts-file", str(tmp_path / "prompts.txt"),
              "--steps", "3", "--batch", "2"]
    launch("torchrun", 1, common + ["--out", str(tmp_path / "one")])
    launch("torchrun", 2, common + ["--out", str(tmp_path / "dp2")])                      # prompts 0,2,4 | 1,3
    launch("torchrun", 2, common + ["--out", str(tmp_path / "tp2"), "parallel.tp=2"])
    for i in range(len(PROMPTS)):
        one = np.asarray(Image.open(tmp_path / "one" / f"{i:04d}.png")).astype(int)
        for other in ("dp2", "tp2"):
            image = np.asarray(Image.open(tmp_path / other / f"{i:04d}.png")).astype(int)
            assert np.abs(image - one).max() <= 1, (other, i)
