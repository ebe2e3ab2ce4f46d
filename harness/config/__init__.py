"""Run configuration: a dataclass schema, YAML files with `base:` inheritance, dotted CLI overrides.

Validation happens before any compute: an unknown key, a wrong type or an impossible value is a
one-line ``ConfigError`` that names the key (and the file it came from).

    harness-train --config configs/demo/core.yaml train.steps=200 parallel.tp=2
"""

from harness.config.loading import from_dict, load, parse_override, to_dict
from harness.config.schema import (
    STAGES,
    ConfigError,
    DataConfig,
    DiffusionConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    RunConfig,
    TrainConfig,
)
from harness.config.validation import RANGES, profile_window, validate, validate_world

__all__ = ["STAGES", "ConfigError", "DataConfig", "DiffusionConfig", "ModelConfig", "OptimConfig", "ParallelConfig",
           "RANGES", "RunConfig", "TrainConfig", "from_dict", "load", "parse_override", "profile_window", "to_dict",
           "validate", "validate_world"]
