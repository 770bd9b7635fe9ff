"""The promotion gate: a checkpoint becomes ``production`` only if its eval beats the current production's.

The rules (:mod:`contracts.gate`): each ``metric@steps`` (a headline figure of the eval report: the checkpoint's own
sampler at that step count), a direction (``lower`` or ``higher`` is better) and a margin in the metric's units: the
candidate passes a rule when ``candidate <= production - margin`` (lower) or ``candidate >= production + margin``
(higher). Every rule must pass. With no production version yet, the first evaluated candidate is promoted. A
candidate without an eval report, or without a figure a rule names, is refused (never promoted by default).

Every decision, promoted or not, is recorded with the candidate (tag ``alcm.promotion`` and a JSON artifact under
``promotion/``): the rules, both sides' figures and the outcome.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from contracts.gate import GateRule, check
from registry.store import CHECKPOINT, Registry, RegistryError


def promote(registry: Registry, ref: str, rules: list[GateRule]) -> dict:
    """Run the gate for checkpoint ``ref`` against its name's current ``production`` version; on success move the
    ``production`` alias to it. Returns (and records) the decision."""
    candidate = registry.get(ref)
    if candidate.kind != CHECKPOINT:
        raise RegistryError(f"{candidate.ref} is a {candidate.type}: only checkpoints are promoted")
    if not rules:
        raise RegistryError("the promotion gate has no rules (promotion.rules in the profile)")
    report = registry.eval_report(candidate)
    current = registry.alias_holder(candidate.name, "production")
    decision: dict = {
        "candidate": candidate.ref,
        "production_before": current.ref if current else None,
        "rules": [asdict(r) for r in rules],
        "checks": [],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if report is None:
        decision.update(promoted=False, reason="candidate has no eval report (run alcm eval first)")
    elif current is not None and current.ref == candidate.ref:
        decision.update(promoted=False, reason="candidate is already production")
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
    if decision["promoted"]:
        registry.set_alias(candidate.ref, "production")
    registry.record_decision(candidate, decision)
    return decision
