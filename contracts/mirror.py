"""Local copies of committed object-store outputs, for the readers that need files on disk (weights, pipelines).

A job that loads a checkpoint's weights (stage 1's LoRA in stage 2, stage 2's pipeline in stage 3 and in the
evaluation) reads a local directory. When the checkpoint is an object-store URI, :func:`local_copy` copies its
committed files (the attempt its manifest names, nothing else under the prefix) into
``$ALCM_MIRROR_DIR/<key>/`` (default ``~/.cache/alcm/mirror``), checks every file against the digest its manifest
recorded, and returns that directory; a local path is returned as it is. ``key`` covers the URI and the manifest's
digest and attempt, so an overwritten output is copied anew and an unchanged one is copied once per machine: the
driver that checks the input and every training worker that loads it call the same function, each on its own node.

The copy is made in a temporary directory and renamed into place with its ``manifest.json`` already in it, so a
directory under the mirror root with a manifest is complete; concurrent callers on one machine both copy and the
first rename wins. Datasets are not copied: Ray Data's read tasks read their Parquet files from the URI directly.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from contracts import storage
from contracts.digests import json_digest
from contracts.manifest import MANIFEST, output_root, read_manifest, verify_files

MIRROR_ENV = "ALCM_MIRROR_DIR"


def mirror_root() -> Path:
    """Where local copies live (``$ALCM_MIRROR_DIR``, else ``~/.cache/alcm/mirror``)."""
    return Path(os.environ.get(MIRROR_ENV) or Path.home() / ".cache" / "alcm" / "mirror")


def local_copy(location: str | Path) -> Path:
    """A local directory holding the committed output at ``location`` (see the module docstring)."""
    if not storage.is_uri(location):
        return Path(location)
    location = storage.normalize(location)
    manifest = read_manifest(location)
    key = json_digest({"location": location, "digest": manifest.get("digest"),
                       "root": manifest.get("storage_root")}, 24)  # fmt: skip
    target = mirror_root() / key
    if (target / MANIFEST).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=target.parent))
    try:
        root = output_root(location, manifest)
        listed = manifest.get("files")
        names = sorted(listed) if isinstance(listed, dict) else [rel for rel, _ in storage.list_files(root)]
        for rel in names:
            storage.download(storage.join(root, rel), tmp / rel)
        verify_files(tmp, manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / MANIFEST).is_file():  # not another caller that finished the same copy first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
