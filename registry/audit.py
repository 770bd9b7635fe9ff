"""Audit queries over registered dataset versions: why rows were dropped, and where one raw sample went.

A dataset version's audit table (``audit/`` under its location, a directory or an object-store output's committed
attempt, every input row with its decision and reasons, as
the curation and recaptioning jobs write it) answers both questions; the registry's lineage turns "which dataset
versions kept this sample" into "which checkpoints were trained on it" (the takedown question).
"""

from __future__ import annotations

from collections import Counter

from contracts import storage
from contracts.publish import output_root
from registry.store import DATASET, Entry, Registry, RegistryError

#: Columns printed for example rows besides the score columns (every float column of the audit table).
EXAMPLE_COLUMNS = ("id", "key", "source", "caption", "decision", "reasons", "error")


def audit_table(entry: Entry, columns: list[str] | None = None, filter=None):
    """The version's audit table (pyarrow Table), only non-binary columns unless ``columns`` is given."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    if entry.kind != DATASET:
        raise RegistryError(f"{entry.ref} is a {entry.type}: audits are kept for datasets")
    root = storage.join(output_root(entry.location), "audit")
    try:
        fs, path = storage.filesystem(root)
        listed = any(rel.endswith(".parquet") for rel, _ in storage.list_files(root))
    except OSError as exc:
        raise RegistryError(f"{entry.ref}: its audit table at {root} cannot be read ({exc})") from exc
    if not listed:
        raise RegistryError(f"{entry.ref}: no audit table at {root} (the dataset was moved or deleted)")
    data = ds.dataset(path, format="parquet", filesystem=fs)
    if columns is None:
        columns = [f.name for f in data.schema if not pa.types.is_binary(f.type) and not pa.types.is_large_binary(
            f.type) and not (pa.types.is_list(f.type) and pa.types.is_binary(f.type.value_type))]  # fmt: skip
    return data.to_table(columns=columns, filter=filter)


def _read_audit(registry: Registry, ref: str):
    """(entry, audit table, its rows, manifest, counts per decision, counts per reason) of a dataset version."""
    entry = registry.get(ref)
    table = audit_table(entry)
    rows = table.to_pylist()
    by_decision = Counter(r["decision"] for r in rows)
    by_reason = Counter(reason_ for r in rows for reason_ in (r.get("reasons") or []))
    return entry, table, rows, registry.manifest(entry), by_decision, by_reason


def _score_columns(table) -> list[str]:
    return [f.name for f in table.schema if str(f.type) in ("float", "double")]


def _consistent(manifest: dict, by_decision: Counter) -> tuple[dict | None, bool]:
    expected = (manifest.get("counts") or {}).get("by_decision")
    return expected, expected is None or {k: v for k, v in expected.items() if v} == dict(by_decision)


def dataset_audit(registry: Registry, ref: str, *, reason: str | None = None, show: int = 5) -> dict:
    """Counts per decision and per reason (read from the audit table, checked against the manifest), the manifest's
    top-percent thresholds (``percentiles``, empty when none was set) and up to ``show`` example rows, of rows
    carrying ``reason`` when given (``kept`` for kept rows)."""
    entry, table, rows, manifest, by_decision, by_reason = _read_audit(registry, ref)
    expected, consistent = _consistent(manifest, by_decision)
    if reason is not None and reason != "kept" and reason not in by_reason:
        raise RegistryError(f"{entry.ref}: no row has reason {reason!r}; reasons here: {sorted(by_reason)} (or kept)")
    chosen = [r for r in rows if reason is None or (reason == "kept" and r["decision"] == "kept")
              or reason in (r.get("reasons") or [])]  # fmt: skip
    score_columns = _score_columns(table)
    examples = [{c: r.get(c) for c in (*EXAMPLE_COLUMNS, *score_columns) if c in r} for r in chosen[:show]]
    return {
        "ref": entry.ref,
        "location": entry.location,
        "rows": len(rows),
        "by_decision": dict(sorted(by_decision.items())),
        "by_reason": dict(sorted(by_reason.items(), key=lambda kv: -kv[1])),
        "manifest_by_decision": expected,
        "consistent": consistent,
        "reason": reason,
        "matching": len(chosen),
        "examples": examples,
        "input_root": manifest.get("input_root"),
        "percentiles": manifest.get("percentiles") or {},
    }


#: Audit columns a contact-sheet example carries besides :data:`EXAMPLE_COLUMNS` and the scores: where a video
#: clip starts in its input (the raw row is ``parent_id``).
CLIP_COLUMNS = ("parent_id", "segment_start", "frame_indices")


def sheet_audit(registry: Registry, ref: str, *, per_reason: int = 6) -> dict:
    """What ``alcm audit dataset --sheet`` draws: the counts, and a group per row kind — ``kept`` first, then each
    reason that occurs, most rows first (ties by name) — with its count and its first ``per_reason`` rows by key
    (then id), so the same version always shows the same examples. A row with several reasons is an example of
    each. ``payloads``: the kept examples' image bytes (image datasets) or first frame (PNG, video datasets), read
    from the version's kept data; rejected and quarantined rows have none there (the audit holds no pixels)."""
    if per_reason < 0:
        raise ValueError(f"--per-reason {per_reason}: must be ≥ 0")
    entry, table, rows, manifest, by_decision, by_reason = _read_audit(registry, ref)
    expected, consistent = _consistent(manifest, by_decision)
    columns = [c for c in (*EXAMPLE_COLUMNS, *CLIP_COLUMNS, *_score_columns(table)) if c in table.column_names]
    ordered = sorted(rows, key=lambda r: (str(r.get("key") or ""), str(r["id"])))
    reasons = sorted(by_reason, key=lambda name: (-by_reason[name], name))
    groups = [{"name": "kept", "count": by_decision.get("kept", 0),
               "rows": [r for r in ordered if r["decision"] == "kept"]}]  # fmt: skip
    groups += [{"name": name, "count": by_reason[name],
                "rows": [r for r in ordered if name in (r.get("reasons") or [])]} for name in reasons]  # fmt: skip
    for group in groups:
        group["examples"] = [{c: r.get(c) for c in columns} for r in group.pop("rows")[:per_reason]]
    video = "parent_id" in table.column_names
    kept_ids = [r["id"] for r in groups[0]["examples"]]
    return {
        "ref": entry.ref,
        "location": entry.location,
        "rows": len(rows),
        "by_decision": dict(sorted(by_decision.items())),
        "by_reason": {name: by_reason[name] for name in reasons},
        "manifest_by_decision": expected,
        "consistent": consistent,
        "kind": "video" if video else "image",
        "per_reason": per_reason,
        "groups": groups,
        "input_root": manifest.get("input_root"),
        "payloads": kept_payloads(entry, manifest, kept_ids, "frames" if video else "image") if kept_ids else {},
    }


def kept_payloads(entry: Entry, manifest: dict, ids: list[str], column: str) -> dict[str, bytes]:
    """``id → bytes`` of kept rows ``ids`` from the version's kept data (``outputs.kept`` or ``outputs.captioned``
    of its manifest, else ``kept/``): column ``column``, its first element for a list column (a clip's frames)."""
    import pyarrow.dataset as ds

    outputs = manifest.get("outputs") or {}
    kept_dir = str(outputs.get("kept") or outputs.get("captioned") or "kept/").strip("/")
    root = storage.join(output_root(entry.location), kept_dir)
    try:
        fs, path = storage.filesystem(root)
        data = ds.dataset(path, format="parquet", filesystem=fs)
        table = data.to_table(columns=["id", column], filter=ds.field("id").isin(ids))
    except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError: no such column, not Parquet
        raise RegistryError(f"{entry.ref}: its kept rows at {root} cannot be read ({exc})") from exc
    out = {}
    for rid, value in zip(table.column("id").to_pylist(), table.column(column).to_pylist(), strict=True):
        value = value[0] if isinstance(value, list) and value else value
        if isinstance(value, bytes):
            out[rid] = value
    return out


def sample_trace(registry: Registry, key: str) -> dict:
    """Every dataset version whose audit table holds raw sample ``key`` (its decision and reasons there), and
    every checkpoint trained, transitively, on a version that kept it."""
    import pyarrow.dataset as ds

    found = []
    for entry in registry.list(DATASET):
        try:
            table = audit_table(entry, ["id", "key", "decision", "reasons"], filter=ds.field("key") == key)
        except RegistryError:
            continue
        for row in table.to_pylist():
            found.append({"dataset": entry.ref, **row})
    kept = sorted({f["dataset"] for f in found if f["decision"] == "kept"})
    return {"key": key, "datasets": found, "kept_in": kept, "checkpoints": registry.consumers_of_any(kept)}
