"""Layout-independent initialisation: each module is built with the RNG seeded by (seed, its name).

A pipeline stage builds only its own modules; seeding by name gives them the same weights they
have in the whole model, whatever was built before them.
"""

from __future__ import annotations

import hashlib

import torch


def derived_seed(seed: int, name: str) -> int:
    """A 63-bit seed for one module from the run seed and the module's name."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little") >> 1


def seeded(seed: int, name: str, build):
    """Build a module with the CPU RNG seeded by (seed, name), leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(seed, name))
        return build()
