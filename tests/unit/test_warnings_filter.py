"""harness/warnings_filter.py hides the listed third-party warnings by message and nothing else."""

from __future__ import annotations

import configparser
import warnings
from pathlib import Path

from harness import warnings_filter
from harness.train.continuity import ContinuityWarning

REPO = Path(__file__).resolve().parents[2]


def _shown(*emit) -> list[tuple[type, str]]:
    """What reaches the user when `emit` warns, with only the harness's filters installed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        warnings_filter.install()
        for message, category in emit:
            warnings.warn(message, category)
    return [(w.category, str(w.message)) for w in caught]


def test_harness_warnings_stay_visible_and_listed_megatron_ones_are_hidden():
    shown = _shown(("the loss jumped 3.0x at the stage boundary", ContinuityWarning),
                   ("Transformer Engine and Apex are not installed. Falling back to Torch optimizers.", UserWarning),
                   ("Apex is not installed. Falling back to Torch Norm", UserWarning),
                   ("barrier(): using the device under current context. You can specify `device_id` ...", UserWarning),
                   ("Warning: tp_group is None, using default tp group. Passing tp_group will be mandatory soon",
                    DeprecationWarning),
                   ("some other Megatron warning", UserWarning),
                   ("a deprecation nobody listed", DeprecationWarning))
    assert shown == [(ContinuityWarning, "the loss jumped 3.0x at the stage boundary"),
                     (UserWarning, "some other Megatron warning"),
                     (DeprecationWarning, "a deprecation nobody listed")]
    assert not warnings_filter.is_filtered("the loss jumped", ContinuityWarning)
    assert warnings_filter.is_filtered("full scope is deprecated. Use empty cuda_graph_scope", UserWarning)


def test_a_listed_message_is_hidden_only_in_its_category():
    assert _shown(("full scope is deprecated.", RuntimeWarning)) == [(RuntimeWarning, "full scope is deprecated.")]


def test_pytest_filters_in_setup_cfg_are_the_same_list():
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(REPO / "setup.cfg")
    lines = [line.strip() for line in cfg["tool:pytest"]["filterwarnings"].strip().splitlines() if line.strip()]
    assert lines == warnings_filter.pytest_filters()
