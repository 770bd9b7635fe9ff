"""Eval report tables (torch- and Ray-free): the markdown of ``report.md`` and of ``alcm registry show``.

A report (``report.json``, written by the eval job) holds ``results[method][steps][metric]`` (steps as strings);
a table per metric has one row per method and one column per step count, ``–`` where a method was not run.
"""

from __future__ import annotations

LOWER_IS_BETTER = ("fvd", "fid", "fvd_teacher", "fid_teacher", "latent_mse", "latency_s", "peak_mem_mb")
METRIC_FORMATS = {"fvd": "{:.3f}", "fid": "{:.3f}", "fvd_teacher": "{:.3f}", "fid_teacher": "{:.3f}",
                  "latent_mse": "{:.4f}", "clipsim": "{:.1f}", "temporal": "{:.3f}", "latency_s": "{:.3f}",
                  "peak_mem_mb": "{:.0f}", "unet_evals": "{:d}"}  # fmt: skip


def metric_title(metric: str) -> str:
    """``fvd (lower is better)`` etc."""
    if metric == "unet_evals":
        return metric
    if metric == "temporal":
        return f"{metric} (1 = a still video; compare with the teacher's)"
    return f"{metric} ({'lower' if metric in LOWER_IS_BETTER else 'higher'} is better)"


def metric_table(report: dict, metric: str) -> list[str]:
    """The markdown table of one metric: rows = method, columns = steps."""
    steps = sorted({s for per in report["results"].values() for s in map(int, per)})
    fmt = METRIC_FORMATS.get(metric, "{:.4g}")
    lines = ["| method | " + " | ".join(str(s) for s in steps) + " |", "|---|" + "---|" * len(steps)]
    for method, per in report["results"].items():
        cells = [fmt.format(per[str(s)][metric]) if str(s) in per and metric in per[str(s)] else "–" for s in steps]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def tables(report: dict, metrics: list[str] | None = None) -> str:
    """``### title`` + table for each metric (default: every metric of the report)."""
    out: list[str] = []
    for metric in metrics or report["metrics"]:
        out += ["", f"### {metric_title(metric)}", "", *metric_table(report, metric)]
    return "\n".join(out)
