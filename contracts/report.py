"""Eval report tables (torch- and Ray-free): ``report.md``, ``report.html`` and the tables of ``alcm registry show``.

A report (``report.json``, written by the eval job) holds ``results[method][steps][metric]`` (steps as strings),
with the 95% bootstrap interval of each figure in ``results[method][steps]["ci95"][metric]`` and the number of
samples in ``["n"]``; a table per metric has one row per method and one column per step count, each cell the figure
and its interval, ``–`` where a method was not run. ``floor`` (when the prompt set has a second reference set): the
same set-level figures of reference set A against set B, what no method can beat.
"""

from __future__ import annotations

import re
from pathlib import Path

from contracts.html import data_uri, esc, page, table

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


def metric_rows(report: dict, metric: str) -> tuple[list[str], list[list[str]]]:
    """One metric's table as text cells: the header (``method``, then each step count) and a row per method
    (then the floor's, when the report has one for ``metric``)."""
    steps = sorted({s for per in report["results"].values() for s in map(int, per)})
    fmt = METRIC_FORMATS.get(metric, "{:.4g}")
    rows = []
    for method, per in report["results"].items():
        rows.append([method, *(_cell(per[str(s)], metric, fmt) if str(s) in per and metric in per[str(s)] else "–"
                               for s in steps)])  # fmt: skip
    if (report.get("floor") or {}).get(metric) is not None:
        rows.append(["floor: reference A vs B", *[_cell(report["floor"], metric, fmt)] * len(steps)])
    return ["method", *map(str, steps)], rows


def metric_table(report: dict, metric: str) -> list[str]:
    """The markdown table of one metric: rows = method, columns = steps."""
    header, rows = metric_rows(report, metric)
    return ["| " + " | ".join(header) + " |", "|---|" + "---|" * (len(header) - 1),
            *("| " + " | ".join(row) + " |" for row in rows)]  # fmt: skip


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


def summary(report: dict) -> list[str]:
    """What was evaluated, one item each (markdown: names and paths in backticks)."""
    ck, setup = report["checkpoint"], report["setup"]
    return [
        f"checkpoint: `{ck['path']}` `{ck['digest']}`",
        f"prompts: {setup['prompts']} ({setup['num_prompts']} × {setup['videos_per_prompt']} seeds), "
        f"{setup['frames'] or 1} frame(s) at {setup['size']}×{setup['size']}",
        f"{setup['fd']}: {setup['extractor']}; reference: {setup['reference']}",
        f"teacher CFG guidance_scale {setup['guidance_scale']:g}; the checkpoint samples without CFG",
        *([f"N = {setup['n']} samples per method and step count; [lo, hi]: {setup['intervals']}"]
          if "n" in setup else []),
        *(["floor (reference set A against set B): " + ", ".join(
            f"{m} {report['floor'][m]:.4g}" for m in (setup["fd"], "kid") if m in report["floor"])]
          if report.get("floor") else []),
        f"speed-up of the checkpoint at 4 steps over teacher DDIM {setup['reference_steps']} (CFG): "
        + (f"{report['speedup'].get('4', float('nan')):.1f}×" if "4" in report["speedup"] else "n/a"),
    ]  # fmt: skip


def markdown(report: dict) -> str:
    """``report.md``: what was evaluated, then a table per metric (rows = method, columns = steps)."""
    ck = report["checkpoint"]
    lines = [f"# Eval report: `{ck['name']}` ({ck['stage']})", "", *(f"- {item}" for item in summary(report))]
    lines.append(tables(report))
    lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in plot_files(report)),
              f"Samples: `{report['samples']}` ({report['samples_layout']})"]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot_files(report: dict) -> list[str]:
    """The report's plots, relative to its directory, in the order of its metrics."""
    return [f"plots/{m}.png" for m in report["metrics"] if m != "unet_evals"]


def report_title(report: dict) -> str:
    """``Eval report: NAME (STAGE)``, the page title of ``report.html``."""
    return f"Eval report: {report['checkpoint']['name']} ({report['checkpoint']['stage']})"


def _inline(text: str) -> str:
    """A summary item as HTML: escaped, its backtick spans as ``<code>``."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", esc(text))


def report_html(report: dict, root: str | Path) -> str:
    """``report.html``: report.md's summary and tables, then the plots and the samples (read from the report
    directory ``root``, embedded as ``data:`` URIs), in one page that loads nothing else (:mod:`contracts.html`):
    a browser and MLflow's artifact view open it as it is. A plot or sample file the directory lacks is named as
    missing, not skipped."""
    root = Path(root)
    parts = ["<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in summary(report)) + "</ul>"]
    for metric in report["metrics"]:
        header, rows = metric_rows(report, metric)
        table_html = table(header, rows, right=range(1, len(header)))
        parts += [f'<h3 id="metric-{esc(metric)}">{esc(metric_title(metric))}</h3>', table_html]
    parts.append("<h2>Plots</h2>")
    parts.append('<div class="figures">' + "".join(_figure(root, rel, rel) for rel in plot_files(report)) + "</div>")
    parts.append("<h2>Samples</h2>")
    parts.append(_figure(root, report["samples"], report["samples_layout"]))
    return page(report_title(report), "\n".join(parts))


def _figure(root: Path, rel: str, caption: str) -> str:
    path = root / rel
    if not path.is_file():
        return f"<p>{esc(rel)}: missing from {esc(root)}</p>"
    return (f'<figure><img src="{data_uri(path.read_bytes(), rel)}" alt="{esc(rel)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")  # fmt: skip
