"""Text renderings of what the registry answers, for ``alcm registry``, ``alcm lineage`` and ``alcm audit``: each
function takes a command's view (:mod:`registry.views`, the same data ``--json`` prints) and gives the lines to
print. No I/O here."""

from __future__ import annotations

import json
import re
from typing import Any

from contracts.reasons import percentile_lines
from contracts.report import tables
from registry.views import unicode_text

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""What a terminal would act on rather than show: C0/C1 controls (ESC starts colour, cursor and title sequences),
DEL, and the bidirectional and line-separator marks that reorder or split what is shown."""


def plain(value: Any) -> str:
    """``value`` as text that is safe to print: every character of :data:`_UNSAFE` as a ``\\xNN``/``\\uNNNN``
    escape, and a lone surrogate (a file name that was not UTF-8) as its ``\\udcNN`` escape."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}",
                       unicode_text(value))  # fmt: skip


HEADLINE_ORDER = ("fvd", "fid", "clipsim", "latent_mse", "temporal")
"""Which eval figures at 4 steps a checkpoint's one-line headline shows, in order."""


def headline(entry: dict) -> str:
    """Row counts of a dataset; a checkpoint's eval figures at 4 steps (or its first three figures), of an entry's
    view (:func:`registry.views.entry_view`)."""
    h = entry["headline"]
    if entry["kind"] == "dataset":
        return " ".join(f"{k} {int(v)}" for k, v in h.items())
    keys = sorted((k for k in h if k.endswith("@4") and k.split("@")[0] in HEADLINE_ORDER),
                  key=lambda k: HEADLINE_ORDER.index(k.split("@")[0])) or list(h)[:3]  # fmt: skip
    return " ".join(f"{k} {h[k]:.4g}" for k in keys)


def entry_list(view: dict) -> list[str]:
    """``alcm registry list`` (:func:`registry.views.list_view`): one line per version: NAME@VERSION, type,
    headline, aliases."""
    entries = view["entries"]
    if not entries:
        return ["the registry is empty (flows register what they write; `alcm registry register DIR`)"]
    width = max(len(e["ref"]) for e in entries) + 2
    return [f"{e['ref']:<{width}}{e['type']:<24}{headline(e)}" + (f" [{', '.join(e['aliases'])}]" if e["aliases"]
            else "") for e in entries]  # fmt: skip


def entry_details(view: dict) -> list[str]:
    """``alcm registry show`` (:func:`registry.views.show_view`): where the version is, its aliases, parents,
    headline, last gate decision, and its eval tables."""
    e, gate, report = view["entry"], view["gate"], view["eval"]
    lines = [
        f"{e['ref']}  {e['type']}  {e['digest']}",
        f"  location: {e['location']}",
        f"  aliases:  {', '.join(e['aliases']) or 'none'}",
        "  parents:  " + (", ".join(f"{p['role']} {p['ref']}" for p in e["parents"]) or "none (raw inputs only)"),
        f"  headline: {headline(e) or 'none'}",
    ]
    if gate is not None:
        lines.append(f"  gate:     {'promoted' if gate['promoted'] else 'not promoted'} — {gate['reason']}")
    if report is None:
        lines.append("  not evaluated (alcm evaluate --checkpoint DIR)" if e["kind"] == "checkpoint" else "")
        return lines
    setup = report["setup"]
    lines.append(f"  eval:     {setup['num_prompts']} prompts, {setup['fd']}: {setup['extractor']}; "
                 f"reference: {setup['reference']}")  # fmt: skip
    lines.append(tables(report, report["metrics"]))
    return lines


def short(value: Any) -> str:
    """A value on one line of at most 80 characters."""
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def diff_lines(d: dict) -> list[str]:
    """``alcm registry diff`` (:func:`registry.views.diff_view`): what changed from A to B."""
    lines = [f"{d['a']} → {d['b']}", f"  digest:       {d['digest']['a']} → {d['digest']['b']}"]
    if d["code_version"]["a"] != d["code_version"]["b"]:
        lines.append(f"  code version: {d['code_version']['a']} → {d['code_version']['b']}")
    for section in ("config", "inputs", "metrics"):
        lines.append(f"  {section}:" + ("" if d[section] else " unchanged"))
        lines += [f"    {key}: {short(ab['a'])} → {short(ab['b'])}" for key, ab in d[section].items()]
    return lines


def lineage_lines(node: dict, prefix: str = "") -> list[str]:
    """``alcm lineage`` (:func:`registry.views.lineage_view`): each version with its digest, code version and
    config digest (every config key when the view has them), then its parents and raw inputs, drawn as a tree."""
    head = f"{node['role'] + ': ' if node['role'] else ''}{node['ref']}  {node['type']}"
    head += f"  stage {node['stage']}" if node["stage"] else ""
    head += f"  {headline(node)}" if node["headline"] else ""
    lines = [head, f"  digest {node['digest']}", f"  code {node['code_version'] or 'unknown'}  config "
             f"{node['config_digest']}  at {node['location']}"]  # fmt: skip
    if node["config"] is not None:
        lines += [f"    {k} = {json.dumps(v)}" for k, v in node["config"].items()]
    base = prefix.replace("├── ", "│   ").replace("└── ", "    ")
    out = [prefix + lines[0]] + [base + x for x in lines[1:]]
    children = [("node", p) for p in node["parents"]] + [("raw", r) for r in node["raw"]]
    for i, (kind, child) in enumerate(children):
        branch = "└── " if i == len(children) - 1 else "├── "
        if kind == "node":
            out += lineage_lines(child, base + branch)
        else:
            files = f"{len(child['files'])} weight files" if child["files"] else ""
            out.append(f"{base}{branch}{child['role']}: {child['location'] or ''}  {child['digest'] or files}")
    return out


def audit_lines(a: dict, reason: str | None, show: int) -> list[str]:
    """``alcm audit dataset`` (:func:`registry.audit.dataset_audit`, :func:`registry.views.audit_view`): counts per
    decision and reason, then the example rows."""
    lines = [f"{plain(a['ref'])}: {a['rows']} audited rows at {plain(a['location'])}",
             "  by decision: " + ", ".join(f"{k} {v}" for k, v in a["by_decision"].items())]  # fmt: skip
    if not a["consistent"]:
        lines.append(f"  the manifest says {a['manifest_by_decision']}: audit and manifest disagree")
    lines += [f"  {plain(r):<24} {n}" for r, n in a["by_reason"].items()]
    lines += [f"  top percent: {plain(line)}" for line in percentile_lines(a.get("percentiles"))]
    if reason is None and not show:
        return lines
    lines.append(f"\n{a['matching']} rows {'with reason ' + reason if reason else ''}; {len(a['examples'])} shown:")
    for ex in a["examples"]:
        scores = " ".join(f"{k} {v:.3g}" for k, v in ex.items() if isinstance(v, float))
        lines.append(f"  {plain(ex.get('key'))}  {ex.get('decision')} {plain(ex.get('reasons'))}  {scores}\n    "
                     f"{plain(repr(ex.get('caption')))}"
                     + (f"\n    error: {plain(ex['error'])}" if ex.get("error") else ""))  # fmt: skip
    return lines


def trace_lines(t: dict) -> list[str]:
    """``alcm audit sample`` (:func:`registry.views.trace_view`): where one raw sample went."""
    if not t["datasets"]:
        return [f"{plain(t['key'])}: in no registered dataset's audit table"]
    lines = [f"  {d['dataset']}: {d['decision']} {plain(d['reasons'] or '')} ({plain(d['id'])})" for d in t["datasets"]]
    lines.append(f"{len(t['checkpoints'])} checkpoint(s) trained on data that contained {plain(t['key'])}:")
    lines += [f"  {e['ref']}  {e['stage'] or ''}" for e in t["checkpoints"]]
    return lines


def consumers_lines(c: dict) -> list[str]:
    """``alcm audit consumers`` (:func:`registry.views.consumers_view`): every checkpoint trained on a version."""
    return [f"{len(c['checkpoints'])} checkpoint(s) made from {c['ref']}:",
            *(f"  {e['ref']}  {e['stage'] or ''}  {headline(e)}" for e in c["checkpoints"])]  # fmt: skip
