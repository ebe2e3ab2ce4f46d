"""Growth rules as data, and the accounting of every parameter when a model grows.

From the Shallow-UViT, the grown UNet keeps the text/time conditioning and the core and replaces
everything else. From a grown UNet, a larger one also keeps every existing level (level names
count outwards from the core, so they do not change) and replaces only the RGB entry and exit.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GrowthRule:
    carry: tuple[str, ...]   # source parameters with these prefixes are copied bit for bit
    drop: tuple[str, ...]    # source parameters with these prefixes are discarded

    def carried(self, source: dict) -> list[str]:
        """The source parameters this rule copies."""
        return sorted(k for k in source if k.startswith(self.carry))


RULES: dict[tuple[str, str], GrowthRule] = {
    ("shallow", "grown"): GrowthRule(carry=("cond.", "core."), drop=("stem.", "enc.", "dec.", "head.")),
    ("grown", "grown"): GrowthRule(carry=("cond.", "core.", "mid.", "enc.", "down.", "up.", "dec."),
                                   drop=("stem.", "head.")),
}


class GrowthError(ValueError):
    """The source and target models do not fit a growth rule; the message lists every offending key."""


@dataclass(frozen=True)
class GrowthPlan:
    carried: tuple[str, ...]   # in both models, same shape: copied
    dropped: tuple[str, ...]   # in the source only, by rule
    new: tuple[str, ...]       # in the target only: freshly initialised


def rule_for(source_arch: str, target_arch: str) -> GrowthRule:
    """The rule that grows a `source_arch` model into a `target_arch` one."""
    rule = RULES.get((source_arch, target_arch))
    if rule is None:
        raise GrowthError(f"no growth rule from a {source_arch} model to a {target_arch} model "
                          f"(known: {', '.join(f'{a} -> {b}' for a, b in RULES)})")
    return rule


def plan_growth(source: dict[str, tuple[int, ...]], target: dict[str, tuple[int, ...]], source_arch: str,
                target_arch: str, source_px: int, target_px: int) -> GrowthPlan:
    """Account for every parameter of both models (name -> global shape); raise listing all problems."""
    rule = rule_for(source_arch, target_arch)
    if target_px <= source_px:
        raise GrowthError(f"the grown model must have a higher resolution than the source ({source_px} px), "
                          f"got model.resolution_px={target_px}")
    carried = rule.carried(source)
    dropped = sorted(k for k in source if k.startswith(rule.drop) and not k.startswith(rule.carry))
    problems = []
    unaccounted = sorted(set(source) - set(carried) - set(dropped))
    if unaccounted:
        problems.append(f"{len(unaccounted)} source parameters match no rule: {', '.join(unaccounted)}")
    missing = [k for k in carried if k not in target]
    if missing:
        problems.append(f"{len(missing)} carried parameters have no place in the target: {', '.join(missing)}")
    mismatched = [f"{k} {source[k]} -> {target[k]}" for k in carried if k in target and source[k] != target[k]]
    if mismatched:
        problems.append(f"{len(mismatched)} carried parameters change shape: {', '.join(mismatched)}")
    new = sorted(set(target) - set(carried))
    if problems:
        raise GrowthError("; ".join(problems))
    return GrowthPlan(tuple(carried), tuple(dropped), tuple(new))


def frozen_for_stage(stage: str, start_meta: dict | None) -> list[str]:
    """Parameters that get no gradient in `stage`: in grow-frozen, those its start checkpoint lists."""
    if stage != "grow-frozen":
        return []
    frozen = (start_meta or {}).get("frozen")
    if not frozen:
        raise GrowthError("train.stage=grow-frozen starts from a checkpoint written by tools/grow.py (its meta.json "
                          "lists the frozen parameters); set train.run_dir to grow.py's output or train.init_from")
    return list(frozen)
