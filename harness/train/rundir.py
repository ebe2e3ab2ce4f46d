"""The run directory check shared by training and the batch scripts' pre-flight (no heavy imports)."""

from __future__ import annotations

import os
from pathlib import Path


def unwritable_reason(run_dir: Path) -> str | None:
    """None if run_dir exists (or was created) and takes a file; else why not."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        return e.strerror or str(e)
    return None
