"""Content digests: of files (streamed), of file trees, of rows, and of JSON-able settings.

A digest is ``sha256:<hex>`` where it is recorded as an identity (manifests, lineage, the registry) and the bare hex
where a manifest maps files to their content (``files``) or a weight directory is fingerprinted. Every function here
reads bytes or canonical JSON (sorted keys), never object identity, so the same content gives the same digest on any
machine and in any process.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    """``sha256:<hex>`` of a file's bytes."""
    return "sha256:" + sha256_file(path)


def tree_digest(paths: list[Path], root: Path) -> str:
    """``sha256:<hex>`` over the sorted (relative path, file digest) pairs of ``paths``."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda q: q.relative_to(root).as_posix()):
        h.update(f"{p.relative_to(root).as_posix()}\0{file_digest(p)}\n".encode())
    return "sha256:" + h.hexdigest()


def rows_digest(rows: Iterable[tuple]) -> str:
    """Order-independent ``sha256:<hex>`` of rows (tuples of values; None reads as the empty string)."""
    h = hashlib.sha256()
    for row in sorted(rows):
        h.update(("\0".join("" if v is None else str(v) for v in row) + "\n").encode())
    return "sha256:" + h.hexdigest()


def json_digest(value: Any, length: int | None = None) -> str:
    """The sha256 hex digest of ``value`` as canonical JSON (sorted keys; ``str`` for what JSON lacks), cut to
    ``length`` hex digits when given: the identity of a set of settings and inputs (cache keys, run names)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
