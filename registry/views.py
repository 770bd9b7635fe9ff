"""What ``alcm registry``, ``alcm lineage`` and ``alcm audit`` answer, as plain data: one view per command, built
from what a :class:`~registry.store.Registry` query (or :mod:`registry.audit`) returns. :mod:`registry.render` draws
the text from these views and ``--json`` prints them (:func:`document`, :func:`dumps`), so text and JSON always
say the same thing. No I/O here.

The JSON contract (README, "Machine-readable output"): a document is one JSON object whose first key, ``schema``,
is ``alcm.<command>/<version>`` (:data:`SCHEMAS`). The version goes up when a key is removed or renamed or changes
meaning, not when one is added, so a consumer checks the whole string and ignores keys it does not know. Values are
plain JSON: NaN and infinities are ``null``, paths and URIs strings, times ISO-8601 with their UTC offset, and every
string valid Unicode (a lone surrogate, what a file name that was not UTF-8 decodes to, is written as the text
``\\udcNN``, as text mode shows it). The document is ASCII: ``json.dumps`` escapes every control character and every
non-ASCII one, so no byte of it can act on a terminal.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from datetime import UTC, date, datetime
from datetime import time as time_of_day
from pathlib import PurePath
from typing import Any

from registry.store import TAG, Entry, flatten

SCHEMAS = {
    "registry.list": 1,
    "registry.show": 1,
    "registry.diff": 1,
    "lineage": 1,
    "audit.dataset": 1,
    "audit.consumers": 1,
    "audit.sample": 1,
}
"""Command → the version of its JSON document (``alcm.<command>/<version>``)."""


def iso_time(seconds: float | None) -> str | None:
    """A Unix time as ISO-8601 in UTC with milliseconds (``2025-01-31T12:00:00.000+00:00``); None for 0/None."""
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="milliseconds") if seconds else None


def entry_view(e: Entry) -> dict:
    """A registered version: reference, kind and type, digest, location, aliases, registered parents, stage,
    profile and code version (None where the job recorded none), headline figures, whether an eval report is
    attached, and when it was registered."""
    return {
        "ref": e.ref,
        "name": e.name,
        "version": e.version,
        "kind": e.kind,
        "type": e.type,
        "digest": e.digest,
        "location": e.location,
        "aliases": list(e.aliases),
        "parents": [{"role": p.role, "ref": p.ref} for p in e.parents],
        "stage": e.tags.get(TAG + "stage"),
        "profile": e.tags.get(TAG + "profile"),
        "code_version": e.tags.get(TAG + "code_version"),
        "headline": e.headline,
        "evaluated": e.evaluated,
        "created": iso_time(e.created),
    }


def list_view(entries: list[Entry], kind: str | None) -> dict:
    """``alcm registry list``: every version (of ``kind`` when given), by name then version."""
    return {"kind": kind, "entries": [entry_view(e) for e in entries]}


def default_metrics(report: dict) -> list[str]:
    """The eval tables ``alcm registry show`` gives without ``--metric``: the Fréchet distance, KID when the report
    has it, CLIPSIM and latency."""
    fd = report["setup"]["fd"]
    return [fd, *(["kid"] if "kid" in report["metrics"] else []), "clipsim", "latency_s"]


def eval_view(report: dict, metrics: list[str]) -> dict:
    """An eval report's setup and headline, and the figures of the ``metrics`` tables (default
    :func:`default_metrics`): per method and step count each figure, its 95% interval and N; the floor likewise.
    Shaped like ``report.json``, so :func:`contracts.report.tables` draws it."""
    shown = list(metrics) or default_metrics(report)

    def figures(per: dict) -> dict:
        intervals = per.get("ci95") or {}
        return {**{m: per[m] for m in shown if m in per}, "ci95": {m: intervals[m] for m in shown if m in intervals},
                "n": per.get("n")}  # fmt: skip

    return {
        "setup": report["setup"],
        "headline": report["headline"],
        "metrics": shown,
        "results": {
            method: {steps: figures(per) for steps, per in by_steps.items()}
            for method, by_steps in report["results"].items()
        },
        "floor": figures(report["floor"]) if report.get("floor") else None,
    }


def gate_view(e: Entry) -> dict | None:
    """The last promotion decision recorded with the version (:func:`registry.gate.promote`), its time ISO-8601."""
    if TAG + "promotion" not in e.tags:
        return None
    decision = json.loads(e.tags[TAG + "promotion"])
    if decision.get("time"):  # recorded as %Y-%m-%dT%H:%M:%S%z (+0000): the same instant with the offset's colon
        decision["time"] = datetime.fromisoformat(decision["time"]).isoformat()
    return decision


def show_view(e: Entry, report: dict | None, metrics: list[str]) -> dict:
    """``alcm registry show``: the version, its last gate decision, and its eval report's tables (None if none)."""
    return {"entry": entry_view(e), "gate": gate_view(e), "eval": eval_view(report, metrics) if report else None}


def diff_view(d: dict) -> dict:
    """``alcm registry diff`` (:meth:`Registry.diff`): each changed key as ``{"a": old, "b": new}``."""

    def pair(values: tuple[Any, Any]) -> dict:
        return {"a": values[0], "b": values[1]}

    return {
        "a": d["a"],
        "b": d["b"],
        "digest": pair(d["digest"]),
        "code_version": pair(d["code_version"]),
        **{
            section: {key: pair(values) for key, values in d[section].items()}
            for section in ("config", "inputs", "metrics")
        },
    }


def lineage_view(node: dict, show_config: bool = False, role: str | None = None) -> dict:
    """``alcm lineage`` (:meth:`Registry.lineage`): the version as :func:`entry_view` gives it (stage and code
    version from its manifest), the role it played for its child, the digest of its config (every key, flattened,
    with ``show_config``), then its parents as nodes like this one and its raw inputs."""
    e, m = node["entry"], node["manifest"]
    config = m.get("config") or {}
    canonical = json.dumps(config, sort_keys=True)
    view = {
        "role": role,
        **entry_view(e),
        "stage": m.get("stage"),
        "code_version": m.get("code_version"),
        "config_digest": "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:16],
        "config": flatten(config) if show_config else None,
    }
    view["parents"] = [lineage_view(p["node"], show_config, p["role"]) for p in node["parents"]]
    view["raw"] = [raw_input_view(r, m.get("input_root")) for r in node["raw"]]
    return view


def raw_input_view(record: dict, input_root: str | None) -> dict:
    """A raw input of a manifest (a shard, teacher weights): its role, where it is (a dataset's raw files under the
    manifest's ``input_root``), its digest, or the digests of its files."""
    where = record.get("path") or record.get("pretrained_dir") or ""
    if record["role"] == "raw" and input_root:
        where = input_root if where in (".", "") else f"{input_root}/{where}"
    return {"role": record["role"], "location": where or None, "digest": record.get("digest") or None,
            "files": record.get("digests") or None}  # fmt: skip


def audit_view(a: dict, thumbnails: dict[str, str] | None = None, sheet: dict | None = None) -> dict:
    """``alcm audit dataset`` (:func:`registry.audit.dataset_audit`), with ``key → thumbnail written (or why
    not)`` when thumbnails were asked for, and the contact sheet written (files and counts) when one was."""
    return {**a, "thumbnails": thumbnails, "sheet": sheet}


def consumers_view(dataset: Entry, checkpoints: list[Entry]) -> dict:
    """``alcm audit consumers``: the version asked about and every checkpoint trained on it, transitively."""
    return {"ref": dataset.ref, "checkpoints": [entry_view(e) for e in checkpoints]}


def trace_view(t: dict) -> dict:
    """``alcm audit sample`` (:func:`registry.audit.sample_trace`): the sample's row in every dataset version that
    holds it, the versions that kept it, and every checkpoint trained on one of those."""
    return {"key": t["key"], "datasets": t["datasets"], "kept_in": t["kept_in"],
            "checkpoints": [entry_view(e) for e in t["checkpoints"]]}  # fmt: skip


def unicode_text(value: Any) -> str:
    """``value`` as valid Unicode: a lone surrogate (a name that was not UTF-8) as the text ``\\udcNN``."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON data (see the module docstring); a type with no such form raises TypeError."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str | PurePath):
        return unicode_text(value)
    if isinstance(value, datetime | date | time_of_day):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {unicode_text(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    raise TypeError(f"a {type(value).__name__} ({value!r}) has no plain JSON form: convert it in its view")


def document(command: str, view: dict) -> dict:
    """The JSON document of ``command`` (a key of :data:`SCHEMAS`): ``schema`` first, then the view's keys."""
    if command not in SCHEMAS:
        raise ValueError(f"command {command!r}: choose one of {', '.join(SCHEMAS)}")
    return {"schema": f"alcm.{command}/{SCHEMAS[command]}", **json_safe(view)}


def dumps(doc: dict) -> str:
    """The document as indented, ASCII-only JSON text (NaN is refused: :func:`json_safe` has made it null)."""
    return json.dumps(doc, indent=2, allow_nan=False)
