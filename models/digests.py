"""Content digests of weight files (models/ may not import the registry, whose ``file_digest`` is the same idea)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def digest_file(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes (for manifests, lineage and model ids)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest16(path: str | Path) -> str:
    """First 16 hex digits of :func:`digest_file` (identifies weights in a model id)."""
    return digest_file(path)[:16]
