"""The promotion gate's rules: a checkpoint becomes ``production`` only if its eval beats its teacher's few-step
sampler and the current production's.

A gate is a list of rules, each ``metric@steps`` (a headline figure of the eval report: the checkpoint's own
sampler at that step count), a direction (``lower`` or ``higher`` is better) and a margin in the metric's units: the
candidate passes a rule when ``candidate <= production - margin`` (lower) or ``candidate >= production + margin``
(higher). Every rule must pass.

Besides these relative rules, :class:`TeacherRule` is absolute, read from the candidate's own report: at
``metric@steps`` its sampler (without CFG) must beat the teacher's ``against`` sampler (with CFG) at the same step
count, by the figure and, with ``separated``, by 95% intervals that do not overlap (:func:`check_teacher`). It
holds for the first candidate too, so a checkpoint worse than its teacher's own few-step sampler is never promoted.
How a decision is taken and recorded is the registry's (``registry.gate``).
"""

from __future__ import annotations

from dataclasses import dataclass

DIRECTIONS = ("lower", "higher")
TEACHER_SAMPLERS = ("ddim", "dpmsolver++")
"""The teacher's samplers an eval report may hold (``evaluate.teacher_methods``)."""


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


@dataclass(frozen=True)
class TeacherRule:
    """The candidate against its teacher's sampler at the same step count, on its own eval report."""

    metric: str
    """``metric@steps`` of the report's results (e.g. ``fvd@4``)."""
    against: str = "ddim"
    """The teacher's sampler it must beat (a method of the report: ``ddim``, ``dpmsolver++``)."""
    direction: str = "lower"
    separated: bool = True
    """Require the two 95% intervals not to overlap (else the figures alone decide)."""

    def __post_init__(self):
        GateRule(self.metric, self.direction)  # the same checks of metric@steps and direction
        if self.against not in TEACHER_SAMPLERS:
            raise ValueError(f"gate rule {self.metric}: against {self.against!r}; choose one of "
                             f"{', '.join(TEACHER_SAMPLERS)}")  # fmt: skip


def apart(better: tuple[float, float], worse: tuple[float, float], direction: str) -> bool:
    """Whether interval ``better`` lies entirely on the better side of interval ``worse`` (``direction``: which way
    is better); overlapping or undefined (NaN) intervals are not apart."""
    if any(v != v for v in (*better, *worse)):
        return False
    return better[1] < worse[0] if direction == "lower" else better[0] > worse[1]


def check_teacher(rule: TeacherRule, report: dict) -> dict:
    """The check of ``rule`` on an eval report (``results[method][steps]`` with ``ci95``; the checkpoint's method is
    ``student``, or the one method that is not a teacher sampler): both sides' figures and intervals, ``passed`` and,
    if not, ``why``."""
    name, steps = rule.metric.split("@", 1)
    results = report.get("results") or {}
    student = report.get("student") or next((m for m in results if m not in TEACHER_SAMPLERS), None)
    ours, theirs = (results.get(m, {}).get(steps) for m in (student, rule.against))
    out = {"metric": rule.metric, "against": f"{rule.against}@{steps}", "direction": rule.direction,
           "separated": rule.separated, "candidate": None, "teacher": None, "candidate_ci": None,
           "teacher_ci": None}  # fmt: skip
    if ours is None or theirs is None or name not in ours or name not in theirs:
        missing = "the candidate" if ours is None or name not in ours else f"the teacher's {rule.against}"
        return {**out, "passed": False, "why": f"the report has no {name} at {steps} steps for {missing}"}
    out.update(candidate=ours[name], teacher=theirs[name], candidate_ci=(ours.get("ci95") or {}).get(name),
               teacher_ci=(theirs.get("ci95") or {}).get(name))  # fmt: skip
    better = ours[name] < theirs[name] if rule.direction == "lower" else ours[name] > theirs[name]
    if not better:
        return {**out, "passed": False, "why": f"{name} {ours[name]:.4g} is not {rule.direction} than the teacher's "
                                               f"{rule.against}@{steps} {theirs[name]:.4g}"}  # fmt: skip
    if rule.separated:
        a, b = out["candidate_ci"], out["teacher_ci"]
        if not a or not b or any(v != v for v in (*a, *b)):  # NaN: nothing was resampled
            return {**out, "passed": False, "why": "the report has no intervals for it (re-run the evaluation)"}
        if not apart(a, b, rule.direction):
            return {**out, "passed": False, "why": f"{name} [{a[0]:.4g}, {a[1]:.4g}] overlaps the teacher's "
                                                   f"{rule.against}@{steps} [{b[0]:.4g}, {b[1]:.4g}]"}  # fmt: skip
    return {**out, "passed": True, "why": ""}
