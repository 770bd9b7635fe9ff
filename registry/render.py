"""Text renderings of what the registry answers, for ``alcm registry``, ``alcm lineage`` and ``alcm audit``: each
function takes what a :class:`~registry.store.Registry` query (or :mod:`registry.audit`) returns and gives the lines
to print. No I/O here."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from contracts.reasons import percentile_lines
from contracts.report import tables
from registry.store import Entry, flatten

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""What a terminal would act on rather than show: C0/C1 controls (ESC starts colour, cursor and title sequences),
DEL, and the bidirectional and line-separator marks that reorder or split what is shown."""


def plain(value: Any) -> str:
    """``value`` as text that is safe to print: every character of :data:`_UNSAFE` as a ``\\xNN``/``\\uNNNN``
    escape, and a lone surrogate (a file name that was not UTF-8) as its ``\\udcNN`` escape."""
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return _UNSAFE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


HEADLINE_ORDER = ("fvd", "fid", "clipsim", "latent_mse", "temporal")
"""Which eval figures at 4 steps a checkpoint's one-line headline shows, in order."""


def headline(entry: Entry) -> str:
    """Row counts of a dataset; a checkpoint's eval figures at 4 steps (or its first three figures)."""
    h = entry.headline
    if entry.kind == "dataset":
        return " ".join(f"{k} {int(v)}" for k, v in h.items())
    keys = sorted((k for k in h if k.endswith("@4") and k.split("@")[0] in HEADLINE_ORDER),
                  key=lambda k: HEADLINE_ORDER.index(k.split("@")[0])) or list(h)[:3]  # fmt: skip
    return " ".join(f"{k} {h[k]:.4g}" for k in keys)


def entry_list(entries: list[Entry]) -> list[str]:
    """One line per version: NAME@VERSION, type, headline, aliases."""
    if not entries:
        return ["the registry is empty (flows register what they write; `alcm registry register DIR`)"]
    width = max(len(e.ref) for e in entries) + 2
    return [f"{e.ref:<{width}}{e.type:<24}{headline(e)}" + (f" [{', '.join(e.aliases)}]" if e.aliases else "")
            for e in entries]  # fmt: skip


def entry_details(e: Entry, report: dict | None, metrics: list[str]) -> list[str]:
    """One version: where it is, its aliases, parents, headline, last gate decision, and its eval tables."""
    lines = [
        f"{e.ref}  {e.type}  {e.digest}",
        f"  location: {e.location}",
        f"  aliases:  {', '.join(e.aliases) or 'none'}",
        "  parents:  " + (", ".join(f"{p.role} {p.ref}" for p in e.parents) or "none (raw inputs only)"),
        f"  headline: {headline(e) or 'none'}",
    ]
    if "alcm.promotion" in e.tags:
        d = json.loads(e.tags["alcm.promotion"])
        lines.append(f"  gate:     {'promoted' if d['promoted'] else 'not promoted'} — {d['reason']}")
    if report is None:
        lines.append("  not evaluated (alcm evaluate --checkpoint DIR)" if e.kind == "checkpoint" else "")
        return lines
    fd = report["setup"]["fd"]
    lines.append(f"  eval:     {report['setup']['num_prompts']} prompts, {fd}: {report['setup']['extractor']}; "
                 f"reference: {report['setup']['reference']}")  # fmt: skip
    lines.append(tables(report, metrics or [fd, *(["kid"] if "kid" in report["metrics"] else []), "clipsim",
                                            "latency_s"]))  # fmt: skip
    return lines


def short(value: Any) -> str:
    """A value on one line of at most 80 characters."""
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def diff_lines(d: dict) -> list[str]:
    """What :meth:`Registry.diff` found changed from A to B."""
    lines = [f"{d['a']} → {d['b']}", f"  digest:       {d['digest'][0]} → {d['digest'][1]}"]
    if d["code_version"][0] != d["code_version"][1]:
        lines.append(f"  code version: {d['code_version'][0]} → {d['code_version'][1]}")
    for section in ("config", "inputs", "metrics"):
        lines.append(f"  {section}:" + ("" if d[section] else " unchanged"))
        lines += [f"    {key}: {short(old)} → {short(new)}" for key, (old, new) in d[section].items()]
    return lines


def lineage_lines(node: dict, show_config: bool = False, prefix: str = "", role: str | None = None) -> list[str]:
    """The tree of :meth:`Registry.lineage`: each version with its digest, code version and config digest (every
    config key with ``show_config``), then its parents and raw inputs, drawn as a tree."""
    e, m = node["entry"], node["manifest"]
    config = json.dumps(m.get("config") or {}, sort_keys=True)
    head = f"{role + ': ' if role else ''}{e.ref}  {e.type}"
    head += f"  stage {m['stage']}" if m.get("stage") else ""
    head += f"  {headline(e)}" if e.headline else ""
    lines = [head, f"  digest {e.digest}", f"  code {m.get('code_version', 'unknown')}  config sha256:"
             f"{hashlib.sha256(config.encode()).hexdigest()[:16]}  at {e.location}"]  # fmt: skip
    if show_config:
        lines += [f"    {k} = {json.dumps(v)}" for k, v in flatten(m.get("config") or {}).items()]
    children = [("p", p) for p in node["parents"]] + [("r", r) for r in node["raw"]]
    base = prefix.replace("├── ", "│   ").replace("└── ", "    ")
    out = [prefix + lines[0]] + [base + x for x in lines[1:]]
    for i, (kind, child) in enumerate(children):
        branch = "└── " if i == len(children) - 1 else "├── "
        if kind == "p":
            out += lineage_lines(child["node"], show_config, base + branch, child["role"])
        else:
            digest = child.get("digest") or (f"{len(child['digests'])} weight files" if child.get("digests") else "")
            where = child.get("path") or child.get("pretrained_dir") or ""
            root = node["manifest"].get("input_root")
            if child["role"] == "raw" and root:
                where = root if where in (".", "") else f"{root}/{where}"
            out.append(f"{base}{branch}{child['role']}: {where}  {digest}")
    return out


def audit_lines(a: dict, reason: str | None, show: int) -> list[str]:
    """A dataset version's audit (:func:`registry.audit.dataset_audit`): counts per decision and reason, then the
    example rows."""
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
    """Where one raw sample went (:func:`registry.audit.sample_trace`)."""
    if not t["datasets"]:
        return [f"{plain(t['key'])}: in no registered dataset's audit table"]
    lines = [f"  {d['dataset']}: {d['decision']} {plain(d['reasons'] or '')} ({plain(d['id'])})" for d in t["datasets"]]
    lines.append(f"{len(t['checkpoints'])} checkpoint(s) trained on data that contained {plain(t['key'])}:")
    lines += [f"  {e.ref}  {e.tags.get('alcm.stage', '')}" for e in t["checkpoints"]]
    return lines
