"""The promotion gate: a checkpoint becomes ``production`` only if its eval beats the current production's.

The rules (:mod:`contracts.gate`): each ``metric@steps`` (a headline figure of the eval report: the checkpoint's own
sampler at that step count), a direction (``lower`` or ``higher`` is better) and a margin in the metric's units: the
candidate passes a rule when ``candidate <= production - margin`` (lower) or ``candidate >= production + margin``
(higher). Every rule must pass. Before them, the absolute rules (:class:`contracts.gate.TeacherRule`): on its own
report the candidate must beat its teacher's sampler at the same step count, with separated intervals; these hold
for the first candidate too. With no production version yet, a candidate that passes them is promoted. A candidate
without an eval report, or without a figure a rule names, is refused (never promoted by default).

Every decision, promoted or not, is recorded with the candidate (tag ``alcm.promotion`` and a JSON artifact under
``promotion/``): the rules, both sides' figures and the outcome. It is recorded before the alias moves, so a gate
that fails part-way (the registry went away) leaves the aliases as they were, and every alias move has its decision.

Decisions are compare-and-set: the whole read-decide-record-move runs in the registry's transaction (on an embedded
store, its lock: no other promotion interleaves), and the ``production`` holder is read again just before the move;
if another promotion moved it meanwhile, the candidate is judged again against the new holder. So two concurrent
promotions end with the better candidate in ``production`` and both decisions recorded.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from contracts.gate import GateRule, TeacherRule, check, check_teacher
from registry.store import CHECKPOINT, Registry, RegistryError


def promote(registry: Registry, ref: str, rules: list[GateRule], teacher_rules: list[TeacherRule] = ()) -> dict:
    """Run the gate for checkpoint ``ref``: ``teacher_rules`` on its own report, then ``rules`` against its name's
    current ``production`` version; on success move the ``production`` alias to it (compare-and-set, see the module
    docstring). Returns (and records, before any alias moves) the decision, with both sides of every check."""
    candidate = registry.get(ref)
    if candidate.kind != CHECKPOINT:
        raise RegistryError(f"{candidate.ref} is a {candidate.type}: only checkpoints are promoted")
    if not rules:
        raise RegistryError("the promotion gate has no rules (promotion.rules in the profile)")
    report = registry.eval_report(candidate)
    with registry.transaction():
        for _ in range(_MAX_ROUNDS):
            current = registry.alias_holder(candidate.name, "production")
            decision = _decide(registry, candidate, report, current, rules, teacher_rules)
            holder = registry.alias_holder(candidate.name, "production") if decision["promoted"] else current
            if _ref(holder) != _ref(current):
                continue  # another promotion moved production while this one decided: judge again against it
            registry.record_decision(candidate, decision)
            if decision["promoted"]:
                registry.set_alias(candidate.ref, "production")
            return decision
    raise RegistryError(f"{candidate.ref}: production of {candidate.name} kept moving during {_MAX_ROUNDS} decisions; "
                        "nothing was changed, run the gate again")  # fmt: skip


_MAX_ROUNDS = 5


def _ref(entry) -> str | None:
    return entry.ref if entry is not None else None


def _decide(registry: Registry, candidate, report: dict | None, current, rules, teacher_rules) -> dict:
    """The gate's decision for ``candidate`` (its eval ``report``) against ``current`` production (or None)."""
    decision: dict = {
        "candidate": candidate.ref,
        "production_before": _ref(current),
        "rules": [asdict(r) for r in rules],
        "teacher_rules": [asdict(r) for r in teacher_rules],
        "teacher_checks": [check_teacher(r, report) for r in teacher_rules] if report is not None else [],
        "checks": [],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if report is None:
        decision.update(promoted=False, reason="candidate has no eval report (run alcm eval first)")
    elif current is not None and current.ref == candidate.ref:
        decision.update(promoted=False, reason="candidate is already production")
    elif any(not c["passed"] for c in decision["teacher_checks"]):
        decision.update(promoted=False, reason="does not beat its teacher: " + "; ".join(
            f"{c['metric']} against {c['against']}: {c['why']}" for c in decision["teacher_checks"]
            if not c["passed"]))  # fmt: skip
    elif current is None:
        decision.update(promoted=True, reason="no production version yet")
    else:
        theirs = registry.eval_report(current) or {}
        missing = []
        for rule in rules:
            ours_v = report["headline"].get(rule.metric)
            theirs_v = theirs.get("headline", {}).get(rule.metric)
            if ours_v is None or theirs_v is None:
                missing.append(f"{rule.metric} ({'candidate' if ours_v is None else 'production'} has none)")
                continue
            decision["checks"].append({"metric": rule.metric, "direction": rule.direction, "margin": rule.margin,
                                       "candidate": ours_v, "production": theirs_v,
                                       "passed": check(rule, ours_v, theirs_v)})  # fmt: skip
        if missing:
            decision.update(promoted=False, reason="missing figures: " + ", ".join(missing))
        else:
            failed = [c["metric"] for c in decision["checks"] if not c["passed"]]
            decision.update(promoted=not failed,
                            reason=f"worse than production on {', '.join(failed)}" if failed
                            else "beats production on every rule")  # fmt: skip
    return decision
