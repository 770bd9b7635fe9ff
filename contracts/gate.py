"""The promotion gate's rules: a checkpoint becomes ``production`` only if its eval beats the current production's.

A gate is a list of rules, each ``metric@steps`` (a headline figure of the eval report: the checkpoint's own
sampler at that step count), a direction (``lower`` or ``higher`` is better) and a margin in the metric's units: the
candidate passes a rule when ``candidate <= production - margin`` (lower) or ``candidate >= production + margin``
(higher). Every rule must pass. How a decision is taken and recorded is the registry's (``registry.gate``).
"""

from __future__ import annotations

from dataclasses import dataclass

DIRECTIONS = ("lower", "higher")


@dataclass(frozen=True)
class GateRule:
    """One comparison of the gate."""

    metric: str
    """A headline figure of the eval report, ``metric@steps`` (e.g. ``fvd@4``, ``clipsim@4``)."""
    direction: str = "lower"
    """``lower`` or ``higher``: which way is better."""
    margin: float = 0.0
    """How much better than production the candidate must be, in the metric's units (0: at least as good)."""

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"gate rule {self.metric}: direction {self.direction!r}; choose lower or higher")
        if "@" not in self.metric:
            raise ValueError(f"gate rule metric {self.metric!r}: expected metric@steps, e.g. fvd@4")
        if self.margin < 0:
            raise ValueError(f"gate rule {self.metric}: margin {self.margin} must be ≥ 0")


def check(rule: GateRule, candidate: float, production: float) -> bool:
    """Whether ``candidate`` beats ``production`` under ``rule``."""
    if rule.direction == "lower":
        return candidate <= production - rule.margin
    if rule.direction == "higher":
        return candidate >= production + rule.margin
    raise ValueError(f"direction {rule.direction!r}: choose one of {', '.join(DIRECTIONS)}")
