"""Flows ``evaluate`` and ``promote-checkpoint``: evaluate a checkpoint into a report, record both in the
registry, and (on request) run the promotion gate.

``evaluate``: validate → run the eval job (here against Ray, or submitted) → register the checkpoint
(and what it was made from) → attach the report → point the ``candidate`` alias at it → optionally run the gate →
publish the report's tables and plot links as a Prefect artifact.

``promote-checkpoint``: run the gate (``promotion.video`` or ``promotion.image`` rules of the profile) for a
registered, evaluated checkpoint; the decision and its numbers are recorded with the candidate.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from pydantic import Field

from contracts import storage
from contracts.manifest import output_root
from flows.common import FormChecked, IOJobParams, apply_env_defaults, open_registry, run_io_job
from flows.record import record_output, with_run_name
from flows.retry import retry_condition
from pipelines.config import Config, load_config
from pipelines.stages import EVALUATED, canonical
from pipelines.stages import stage as stage_named

EVALUATE = stage_named("evaluate")


class EvaluateParams(IOJobParams):
    """Parameters of the ``evaluate`` flow."""

    input_dir: str = Field(description="The checkpoint: a stage-1 or stage-2 output directory (manifest.json).")
    output_dir: str = Field(description="New directory for report.json, report.md, plots/ and the sample grid.")
    record: bool = Field(True, description="Record the checkpoint and attach the report in the registry.")
    promote: bool = Field(False, description="Run the promotion gate after evaluating (needs record).")


class PromoteParams(FormChecked):
    """Parameters of the ``promote-checkpoint`` flow."""

    checkpoint: str = Field(description="A registered checkpoint, NAME@VERSION or NAME@candidate.")
    profile: str = Field("toy", description="Config profile whose promotion rules apply.")
    overrides: list[str] = Field(default_factory=list, description="Config overrides, key=value.")


@task(name="run-eval-job", cache_policy=NONE)
def run_eval_job(cfg: Config, params: EvaluateParams) -> dict:
    """Run the eval job (here, or submitted to the cluster) and return its manifest."""
    return run_io_job(EVALUATE.name, cfg, params)


@task(name="attach-eval-report", cache_policy=NONE, retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=retry_condition)  # fmt: skip
def attach_report(checkpoint_ref: str, report_dir: str) -> str:
    """Attach the report to the checkpoint's version and make it the ``candidate``."""
    registry = open_registry()
    registry.attach_eval(checkpoint_ref, report_dir)
    return registry.set_alias(checkpoint_ref, "candidate").ref


def gate_rules(cfg: Config, stage: str):
    """The promotion rules for a checkpoint of ``stage``: (rules against production, rules against the teacher)."""
    kind = EVALUATED.get(canonical(stage) or "")
    if kind in ("video", "image"):
        return list(getattr(cfg.promotion, kind)), list(getattr(cfg.promotion, f"{kind}_teacher"))
    raise ValueError(f"no promotion rules for stage {stage!r}; choose a checkpoint of {', '.join(EVALUATED)}")


@task(name="promotion-gate", cache_policy=NONE, retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=retry_condition)  # fmt: skip
def run_gate(cfg: Config, checkpoint_ref: str) -> dict:
    """The gate's decision (recorded with the candidate)."""
    from registry.gate import promote

    registry = open_registry()
    entry = registry.get(checkpoint_ref)
    rules, teacher_rules = gate_rules(cfg, entry.tags.get("alcm.stage", ""))
    return promote(registry, entry.ref, rules, teacher_rules)


def decision_markdown(decision: dict) -> str:
    """The gate's decision as a short table."""
    lines = [f"**{'promoted' if decision['promoted'] else 'not promoted'}**: {decision['candidate']} "
             f"(production before: {decision['production_before'] or 'none'}) — {decision['reason']}"]  # fmt: skip
    if decision.get("teacher_checks"):
        lines += ["", "| against the teacher | candidate | teacher | passed |", "|---|---|---|---|"]
        for c in decision["teacher_checks"]:
            lines.append(f"| {c['metric']} vs {c['against']} ({c['direction']}, intervals "
                         f"{'separated' if c['separated'] else 'not required apart'}) | {_with_ci(c, 'candidate')} | "
                         f"{_with_ci(c, 'teacher')} | {'yes' if c['passed'] else 'no: ' + c['why']} |")  # fmt: skip
    if decision["checks"]:
        lines += ["", "| rule | candidate | production | passed |", "|---|---|---|---|"]
        for c in decision["checks"]:
            lines.append(
                f"| {c['metric']} {c['direction']} by ≥ {c['margin']:g} | {c['candidate']:.4g} | "
                f"{c['production']:.4g} | {'yes' if c['passed'] else 'no'} |"
            )
    return "\n".join(lines)


def _with_ci(check: dict, side: str) -> str:
    value, ci = check[side], check[f"{side}_ci"]
    if value is None:
        return "–"
    return f"{value:.4g}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "")


@flow(name=EVALUATE.flow)
def evaluate_flow(params: EvaluateParams) -> dict:
    """Evaluate a checkpoint: validate → run the job → register → attach the report → (gate) → publish."""
    apply_env_defaults()
    params = with_run_name(params)
    logger = get_run_logger()
    if params.promote and not params.record:
        raise ValueError("promote=true needs record=true (the gate compares registered versions)")
    cfg = load_config(params.profile, params.overrides)
    manifest = run_eval_job(cfg, params)
    out = {"manifest": manifest, "checkpoint": None, "decision": None}
    report_md = storage.read_bytes(storage.join(output_root(params.output_dir), "report.md")).decode()
    if params.record:
        ref = record_output(params.input_dir)
        out["checkpoint"] = attach_report(ref, params.output_dir)
        logger.info("report attached to %s (alias candidate)", ref)
        if params.promote:
            out["decision"] = run_gate(cfg, ref)
            report_md += "\n### Promotion gate\n\n" + decision_markdown(out["decision"]) + "\n"
    plots = plot_links(manifest, params.output_dir, out["checkpoint"])
    create_markdown_artifact(
        key="eval-report",
        markdown=report_md + "\n### Files\n\n" + "\n".join(plots) + "\n",
        description=f"Eval report of {manifest['inputs']['checkpoint']['name']}",
    )
    logger.info("eval report in %s: %s", params.output_dir, manifest["headline"])
    return out


def plot_links(manifest: dict, report_dir: str, checkpoint: str | None) -> list[str]:
    """The report's page (``report.html``), plots and samples as Markdown: served over HTTP by MLflow once the
    report is attached to a registered checkpoint and an MLflow UI is reachable (images inline, so they open in the
    Prefect UI; a browser blocks ``file://`` links from a web page), else links to the files where the job wrote
    them."""
    files = [p for p in manifest["files"] if p == "report.html" or p.startswith(("plots/", "samples"))]
    registry = open_registry() if checkpoint else None
    entry = registry.get(checkpoint) if registry else None
    lines = []
    for p in files:
        url = registry.artifact_url(entry, f"eval/{p}") if registry else None
        if url is None:
            root = output_root(report_dir)
            lines.append(f"- [{p}]({root if storage.is_uri(root) else Path(root).resolve().as_uri()}/{p})")
        elif p.endswith(".png"):
            lines.append(f"- {p}\n\n  ![{p}]({url})")
        else:
            lines.append(f"- [{p}]({url})")
    return lines


@flow(name="promote-checkpoint")
def promote_flow(params: PromoteParams) -> dict:
    """Run the promotion gate for a registered checkpoint and publish the decision."""
    apply_env_defaults()
    cfg = load_config(params.profile, params.overrides)
    decision = run_gate(cfg, params.checkpoint)
    create_markdown_artifact(key="promotion-decision", markdown=decision_markdown(decision),
                             description=f"Promotion gate for {decision['candidate']}")  # fmt: skip
    get_run_logger().info("gate: %s", decision["reason"])
    return decision
