"""What every part of the toy model zoo shares: where the repository is, how a trained part is published under
``toyworld/zoo/``, and the learning-rate schedule the parts train with."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The repository root: zoo manifests record file digests and paths relative to it."""


def warmup_cosine_lr(
    step: int, total: int, warmup: int, peak: float = 1.0, *, pi_first: bool = False, peak_first: bool = False
) -> float:
    """Learning rate at 0-based ``step`` of ``total``: linear warm-up over the first ``warmup`` steps (``(step + 1) /
    warmup`` of ``peak``, so the first step does not train at 0 and step ``warmup - 1`` reaches ``peak``), then half
    a cosine from ``peak`` down to 0 at step ``total``; ``warmup`` 0 starts on the cosine.

    ``pi_first`` and ``peak_first`` only choose the order of the float operations. They change the last bit of some
    learning rates, and each committed zoo part was trained with one order, which a bit-identical retrain from its
    seed needs again: ``pi_first`` takes the cosine's angle as
    ``pi * (step - warmup) / span`` (image, motion and style teachers) rather than ``pi * ((step - warmup) / span)``
    (scorers, captioner); ``peak_first`` takes the warm-up as ``peak * (step + 1) / warmup`` (captioner) rather than
    ``peak * ((step + 1) / warmup)``.
    """
    if step < warmup:
        return peak * (step + 1) / warmup if peak_first else peak * ((step + 1) / warmup)
    span = max(1, total - warmup)
    angle = math.pi * (step - warmup) / span if pi_first else math.pi * ((step - warmup) / span)
    return peak * (0.5 * (1.0 + math.cos(angle)))


def publish_part(tmp: Path, out_dir: Path, manifest: dict) -> None:
    """Finish a zoo part written into the temporary folder ``tmp`` (next to ``out_dir``): write its
    ``manifest.json``, make it world-readable (a mkdtemp folder is private; the zoo is shared, read-only data) and
    move it into place, replacing the previous version."""
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for path in tmp.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    tmp.chmod(0o755)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
