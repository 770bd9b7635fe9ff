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


def dataset_audit(registry: Registry, ref: str, *, reason: str | None = None, show: int = 5) -> dict:
    """Counts per decision and per reason (read from the audit table, checked against the manifest), the manifest's
    top-percent thresholds (``percentiles``, empty when none was set) and up to
    ``show`` example rows, of rows carrying ``reason`` when given (``kept`` for kept rows)."""
    entry = registry.get(ref)
    table = audit_table(entry)
    rows = table.to_pylist()
    by_decision = Counter(r["decision"] for r in rows)
    by_reason = Counter(reason_ for r in rows for reason_ in (r.get("reasons") or []))
    manifest = registry.manifest(entry)
    expected = (manifest.get("counts") or {}).get("by_decision")
    if reason is not None and reason != "kept" and reason not in by_reason:
        raise RegistryError(f"{entry.ref}: no row has reason {reason!r}; reasons here: {sorted(by_reason)} (or kept)")
    chosen = [r for r in rows if reason is None or (reason == "kept" and r["decision"] == "kept")
              or reason in (r.get("reasons") or [])]  # fmt: skip
    score_columns = [f.name for f in table.schema if str(f.type) in ("float", "double")]
    examples = [{c: r.get(c) for c in (*EXAMPLE_COLUMNS, *score_columns) if c in r} for r in chosen[:show]]
    return {
        "ref": entry.ref,
        "location": entry.location,
        "rows": len(rows),
        "by_decision": dict(sorted(by_decision.items())),
        "by_reason": dict(sorted(by_reason.items(), key=lambda kv: -kv[1])),
        "manifest_by_decision": expected,
        "consistent": expected is None or {k: v for k, v in expected.items() if v} == dict(by_decision),
        "reason": reason,
        "matching": len(chosen),
        "examples": examples,
        "input_root": manifest.get("input_root"),
        "percentiles": manifest.get("percentiles") or {},
    }


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
