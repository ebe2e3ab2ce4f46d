"""The console scripts of setup.cfg: each names an importable callable whose `--help` exits 0, and
tools/<name>.py runs the same tool."""

from __future__ import annotations

import configparser
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def console_scripts() -> dict[str, str]:
    """{script name: "module:function"} from setup.cfg [options.entry_points]."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=", 1)) for line in lines if line.strip())


def test_every_user_facing_tool_has_a_console_script():
    scripts = console_scripts()
    for tool in ("train", "grow", "reshard", "sample", "evaluate", "plan", "make-shards", "inspect-ckpt",
                 "check-config", "verify-data", "train-tokenizer", "embed-captions"):
        assert f"harness-{tool}" in scripts
    for name in (p.stem for p in (REPO / "harness" / "cli").glob("*.py") if p.stem != "__init__"):
        assert scripts.get(f"harness-{name.replace('_', '-')}") == f"harness.cli.{name}:cli"
        assert (REPO / "tools" / f"{name}.py").is_file(), f"tools/{name}.py (the script path) is missing"


@pytest.mark.parametrize("script", sorted(console_scripts()))
def test_console_script_resolves_and_help_exits_0(script, monkeypatch, capsys):
    module, _, function = console_scripts()[script].partition(":")
    entry = getattr(importlib.import_module(module), function)
    assert callable(entry)
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as exit_:
        entry() if function == "cli" else entry(["--help"])
    assert exit_.value.code in (0, None)
    assert "usage:" in capsys.readouterr().out


def test_tools_script_is_the_same_tool():
    result = subprocess.run([sys.executable, "tools/plan.py", "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "usage: plan.py" in result.stdout and "--size" in result.stdout
