"""Eval report tables (torch- and Ray-free): the markdown of ``report.md`` and of ``alcm registry show``.

A report (``report.json``, written by the eval job) holds ``results[method][steps][metric]`` (steps as strings),
with the 95% bootstrap interval of each figure in ``results[method][steps]["ci95"][metric]`` and the number of
samples in ``["n"]``; a table per metric has one row per method and one column per step count, each cell the figure
and its interval, ``–`` where a method was not run. ``floor`` (when the prompt set has a second reference set): the
same set-level figures of reference set A against set B, what no method can beat.
"""

from __future__ import annotations

LOWER_IS_BETTER = ("fvd", "fid", "kid", "fvd_teacher", "fid_teacher", "latent_mse", "latency_s", "peak_mem_mb")
METRIC_FORMATS = {"fvd": "{:.3f}", "fid": "{:.3f}", "kid": "{:.4f}", "fvd_teacher": "{:.3f}", "fid_teacher": "{:.3f}",
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
        cells = [_cell(per[str(s)], metric, fmt) if str(s) in per and metric in per[str(s)] else "–" for s in steps]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    floor = (report.get("floor") or {}).get(metric)
    if floor is not None:
        lines.append("| floor: reference A vs B | " + " | ".join(
            [_cell(report["floor"], metric, fmt)] * len(steps)) + " |")  # fmt: skip
    return lines


def _cell(figures: dict, metric: str, fmt: str) -> str:
    """The figure and, when the report has one, its 95% interval: ``1.234 [1.100, 1.400]``."""
    text = fmt.format(figures[metric])
    lo, hi = (figures.get("ci95") or {}).get(metric) or (None, None)
    if lo is None or lo != lo or hi != hi:  # no interval, or NaN (nothing to resample)
        return text
    return f"{text} [{fmt.format(lo)}, {fmt.format(hi)}]"


def tables(report: dict, metrics: list[str] | None = None) -> str:
    """``### title`` + table for each metric (default: every metric of the report)."""
    out: list[str] = []
    for metric in metrics or report["metrics"]:
        out += ["", f"### {metric_title(metric)}", "", *metric_table(report, metric)]
    return "\n".join(out)
