"""The two tiers every backend serves: `heavy` for complex analysis, `light` for simpler tasks.

Inside agentic a tier is always a `Tier` string; the guide's `manager.get(heavy=True)` is the one place a
bool is accepted, turned into a tier by `tier_of`.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["TIERS", "Tier", "tier_of"]

Tier = Literal["heavy", "light"]
TIERS: tuple[Tier, Tier] = ("heavy", "light")


def tier_of(heavy: bool) -> Tier:
    """The tier the guide's `heavy=` flag names."""
    return "heavy" if heavy else "light"
