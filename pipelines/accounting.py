"""Row accounting and dataset digests shared by the video jobs' manifests."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pyarrow as pa

from filters.reasons import KEPT, QUARANTINED, REJECTED
from registry.manifest import IntegrityError, file_digest


def check_accounting(audit: pa.Table, kept_keys: list[str]) -> Counter:
    """Raise if the audit does not account for every clip exactly once; return the decision counts."""
    ids = audit.column("id").to_pylist()
    decisions = Counter(audit.column("decision").to_pylist())
    if len(set(ids)) != len(ids):
        raise RuntimeError(f"row accounting broken: {len(ids)} audit rows but {len(set(ids))} distinct ids")
    if set(decisions) - {KEPT, REJECTED, QUARANTINED} or sum(decisions.values()) != len(ids):
        raise RuntimeError(f"row accounting broken: decisions {dict(decisions)} for {len(ids)} clips")
    if decisions[KEPT] != len(kept_keys) or len(set(kept_keys)) != len(kept_keys):
        raise RuntimeError(f"row accounting broken: {decisions[KEPT]} kept in audit, {len(kept_keys)} written")
    return decisions


def inputs_with_digests(root: Path, sources) -> list[dict]:
    """Manifest ``inputs``: each source with a content digest of what it read."""
    out = []
    for s in sources:
        if s.kind == "tar":
            out.append({"path": s.path, "kind": s.kind, "digest": file_digest(root / s.path)})
        elif s.kind in ("video", "tiktok"):
            h = hashlib.sha256()
            for rel in s.items:
                p = root / rel
                files = sorted(q for q in p.rglob("*") if q.is_file() and not q.is_symlink()) if p.is_dir() else [p]
                for f in files:
                    try:
                        h.update(f"{f.relative_to(root).as_posix()}\0{file_digest(f)}\n".encode())
                    except OSError:
                        h.update(f"{f.relative_to(root).as_posix()}\0unreadable\n".encode())
            out.append({"path": s.path, "kind": s.kind, "items": len(s.items), "digest": "sha256:" + h.hexdigest()})
        else:
            out.append({"path": s.path, "kind": s.kind, "digest": None})
    return out


def dataset_digest(table: pa.Table, columns: list[str]) -> str:
    """Order-independent digest of the kept rows' identifying columns."""
    h = hashlib.sha256()
    for row in sorted(zip(*(table.column(c).to_pylist() for c in columns), strict=True)):
        h.update(("\0".join("" if v is None else str(v) for v in row) + "\n").encode())
    return "sha256:" + h.hexdigest()


def files_map(root: Path, dirs: tuple[str, ...]) -> dict[str, str]:
    """``files`` of a dataset manifest: every file under ``root/<dir>`` (relative path → sha256 hex), which the
    stages that read the dataset check on load (:func:`registry.manifest.verify_files`), as they do checkpoints'."""
    out = {}
    for d in dirs:
        for f in sorted((Path(root) / d).rglob("*")):
            if f.is_file():
                out[f.relative_to(root).as_posix()] = file_digest(f).removeprefix("sha256:")
    return out


def check_listed(input_dir: Path, manifest: dict, files: list[Path]) -> None:
    """Refuse data files the dataset's manifest does not list (added after the job published it, so its digest and
    audit do not cover them); a manifest without a per-file map (older datasets) lists nothing to check against."""
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        return
    extra = [f for f in files if f.relative_to(input_dir).as_posix() not in listed]
    if extra:
        names = ", ".join(f.relative_to(input_dir).as_posix() for f in extra[:5])
        raise IntegrityError(f"{input_dir}: {len(extra)} data file(s) not listed in its manifest.json ({names}): "
                             "added after the job published the dataset, so its digest and audit do not cover them")

