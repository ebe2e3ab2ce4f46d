"""YAML files with `base:` inheritance, dotted CLI overrides, conversion to and from plain values."""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from pathlib import Path

import yaml

from harness.config.schema import ConfigError, RunConfig
from harness.config.validation import validate


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader without YAML 1.1's base-60 numbers (YAML 1.2 dropped them): `2:4` stays
    the string train.profile_steps wants instead of the integer 124."""


_BASE_60 = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_Loader.yaml_implicit_resolvers = {
    first: [(tag, re.compile(r"(?!.*:)" + regexp.pattern, regexp.flags) if tag in _BASE_60 else regexp)
            for tag, regexp in resolvers]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def _check_type(key: str, value, annotation):
    """Return value converted to the annotated type, or raise ConfigError naming the key."""
    origin = typing.get_origin(annotation)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(annotation)
        return [_check_type(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:
            return float(value)           # YAML 1.1 reads 1e-3 (no dot) as a string
        except ValueError:
            pass
    if annotation is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}")
    if annotation in (int, float, str) and not isinstance(value, annotation):
        raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}")
    return value


def _merge(obj, values: dict, prefix: str, source: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"{source}: unknown key {key}{hint}")
        if dataclasses.is_dataclass(hints[name]):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
            _merge(getattr(obj, name), value, f"{key}.", source)
        else:
            try:
                setattr(obj, name, _check_type(key, value, hints[name]))
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None


def _load_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML config, resolving `base:` (relative to the file) recursively."""
    if path in seen:
        raise ConfigError(f"{path}: `base:` cycle through {', '.join(map(str, seen))}")
    try:
        values = yaml.load(path.read_text(), _Loader) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = values.pop("base", None)
    if base is None:
        return values
    merged = _load_yaml((path.parent / base).resolve(), seen + (path,))
    _deep_update(merged, values)
    return merged


def _deep_update(into: dict, values: dict) -> None:
    for k, v in values.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _deep_update(into[k], v)
        else:
            into[k] = v


def parse_override(text: str) -> dict:
    """`a.b=value` -> {"a": {"b": value}}, value parsed as a YAML scalar or list."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.load(raw, _Loader) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def from_dict(values: dict, source: str = "config", overrides: list[str] = ()) -> RunConfig:
    """Build and validate a RunConfig from nested plain values (e.g. a checkpoint's), then overrides."""
    cfg = RunConfig()
    _merge(cfg, values, "", source)
    for text in overrides:
        _merge(cfg, parse_override(text), "", "command line")
    validate(cfg, source)
    return cfg


def load(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Load a YAML config (or the defaults when path is None), apply overrides, validate."""
    cfg = RunConfig()
    if path is not None:
        _merge(cfg, _load_yaml(Path(path).resolve()), "", str(path))
    for text in overrides:
        _merge(cfg, parse_override(text), "", "command line")
    validate(cfg, str(path) if path else "config")
    return cfg


def to_dict(cfg: RunConfig) -> dict:
    """Plain nested values (for meta.json and logs)."""
    return dataclasses.asdict(cfg)
