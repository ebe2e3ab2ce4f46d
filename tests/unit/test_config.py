"""Config schema: YAML + overrides, and one-line errors that name the key before any compute."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.config import ConfigError, load, parse_override, validate_world


def test_defaults_and_overrides(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("model:\n  size: tiny\ntrain:\n  steps: 7\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\ntrain:\n  run_dir: runs/x\n")
    cfg = load(child, ["train.steps=9", "optim.lr=1e-3", "model.level_channels=[8, 16]"])
    assert cfg.model.size == "tiny" and cfg.train.steps == 9 and cfg.train.run_dir == "runs/x"
    assert cfg.optim.lr == 1e-3 and cfg.model.level_channels == [8, 16]
    assert parse_override("a.b.c=3") == {"a": {"b": {"c": 3}}}


@pytest.mark.parametrize("override, message", [
    (["model.hiden=3"], "unknown key model.hiden"),
    (["trian.steps=3"], "unknown key trian"),
    (["train.steps=many"], "train.steps: expected int"),
    (["train.steps=0"], "train.steps must be >= 1"),
    (["model.size=huge"], "model.size must be one of"),
    (["parallel.tp=3", "model.size=tiny"], "parallel.tp (3) must divide the core's 2 attention heads"),
    (["parallel.pp=3", "model.size=tiny"], "parallel.pp (3) cannot exceed the core's 2 layers"),
    (["parallel.global_batch=10", "parallel.micro_batch=4"], "parallel.global_batch (10) must be a multiple"),
    (["model.resolution_px=100"], "model.resolution_px"),
    (["train.stage=grow-frozen"], "does not fit model.arch 'shallow'"),
    (["train.verify=1"], "unknown key train.verify"),
    (["data.verify_checksums=3"], "expected true or false"),
    (["diffusion.detail_base_px=64"], "diffusion.detail_base_px must be 0 (no interpolation) or above"),
])
def test_bad_values_are_one_line_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load(None, override)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown key optim.lrr \(did you mean optim.lr\?\)"):
        load(typo)


def test_layout_must_divide_world():
    cfg = load(None, ["model.size=tiny", "parallel.tp=2", "parallel.global_batch=8", "parallel.micro_batch=4"])
    assert validate_world(cfg, 4) == 2
    with pytest.raises(ConfigError, match="does not divide the world size 3"):
        validate_world(cfg, 3)
    with pytest.raises(ConfigError, match="multiple of parallel.micro_batch \\* dp"):
        validate_world(cfg, 8)


REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_repository_configs_validate_at_their_world_size(path):
    """Every config (its `base:` chain included) validates, and its layout fits the world size its
    `# world_size: N` comment documents; tools/check_config.py passes on it (paths not checked)."""
    sizes = re.findall(r"^# world_size: (\d+)$", path.read_text(), re.M)
    assert len(sizes) == 1, f"{path}: needs one '# world_size: N' comment"
    cfg = load(path)
    validate_world(cfg, int(sizes[0]))
    # File names say the stage and, when not the stage's default, the resolution: the loaded config
    # must agree (core is the Shallow-UViT at 64 px, growth stages a grown UNet above it).
    stage = next(s for s in ("core", "grow-frozen", "grow-finetune") if path.stem.startswith(s))
    assert cfg.train.stage == stage and cfg.model.arch == ("shallow" if stage == "core" else "grown"), path
    px = [int(part) for part in path.stem.split("-") if part.isdigit()]
    assert cfg.model.resolution_px == (px[0] if px else 64 if stage == "core" else 128), path
    result = subprocess.run([sys.executable, "tools/check_config.py", "--config", str(path), "--world-size", sizes[0],
                             "--skip-paths"], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.strip().endswith("paths not checked"), result.stderr


def test_cluster_stages_write_out_their_data_and_schedule():
    """Each cluster stage names its own data set and learning-rate schedule (nothing inherited by
    accident through `base:`), and the 1024 px stages read a set stored for 1024 px."""
    for path in (p for p in CONFIGS if p.parent.name == "cluster"):
        own = yaml.safe_load(path.read_text())
        assert {"path", "heldout_path"} <= own["data"].keys(), path
        assert {"lr", "min_lr", "warmup_steps", "decay_steps"} <= own["optim"].keys(), path
        cfg = load(path)
        assert cfg.optim.decay_steps == cfg.train.steps, path
        assert f"-{cfg.model.resolution_px if cfg.model.resolution_px > 256 else 256}/" in cfg.data.path, path


def test_check_config_refuses_data_stored_below_the_stage_resolution(tiny_overrides):
    """A 256 px stage pointed at a set stored at 128 px fails the pre-flight, naming the key."""
    result = subprocess.run([sys.executable, "tools/check_config.py", "--config", "configs/tiny/grow-frozen.yaml",
                             *tiny_overrides, "model.resolution_px=256"], cwd=REPO, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("stored at 128 px, which model.resolution_px 256 does not divide "
                                          "(store the set at or above the stage's resolution)"), result.stderr
