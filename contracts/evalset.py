"""A prompt set for evaluation: the contract between whoever makes one (the toy world, or a team with real videos
for its prompts) and the evaluation job, which reads it as data.

A prompt set is either a YAML file (a list of prompts: strings or ``{caption: ...}``), or a directory::

    prompts.yaml        the prompts, in order (each ``{caption: ...}``; other fields are kept for people)
    reference/NNNNN.png one reference render per evaluation item (item N: prompt N // videos_per_prompt, noise
                        seed number N % videos_per_prompt), a video as its frames side by side: set A, what
                        the methods' samples are compared with
    reference_b/...     optionally, set B: other renders of the same items (drawn independently of set A);
                        set A against set B is the floor of the set-level figures
    manifest.json       kind ``eval-set``: the ``seed``, ``videos_per_prompt``, ``frames`` and ``size`` the renders
                        were made for, and the digest of every file

A directory may also hold one such set per checkpoint kind, in ``image/`` and ``video/``.

Items are numbered and seeded the same way by both sides (:func:`item_seed`): item ``index`` of an evaluation with
seed ``seed`` samples from noise seed ``seed · 1_000_003 + index``, and its reference render was made with the same
seed. The first N prompts of a set are a set of N prompts with the same items, so a set serves any ``num_prompts``
up to its size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PROMPTS = "prompts.yaml"
REFERENCE = "reference"
REFERENCE_B = "reference_b"
KINDS = ("image", "video")


TEACHER_OFFSET = 700_000
"""The evaluation's unpaired teacher reference samples item ``index`` from noise seed ``item_seed(seed, index) +
700_000``: disjoint from every item's own seed (and from a toy set B's, 500,000 away) for sets of up to 200,000
items, so no method is compared with the teacher's output from its own starting noise."""


def item_seed(seed: int, index: int) -> int:
    """The noise seed of evaluation item ``index`` (and of its reference render)."""
    return seed * 1_000_003 + index


def reference_file(root: Path, index: int, which: str = REFERENCE) -> Path:
    """Where item ``index``'s reference render is in set ``which`` (A: ``reference``, B: ``reference_b``) of the
    prompt set at ``root``."""
    if which not in (REFERENCE, REFERENCE_B):
        raise ValueError(f"reference set {which!r}: choose {REFERENCE} or {REFERENCE_B}")
    return Path(root) / which / f"{index:05d}.png"


def has_set_b(root: Path | None) -> bool:
    """Whether the prompt set at ``root`` has a second reference set (for the floor)."""
    return root is not None and (Path(root) / REFERENCE_B).is_dir()


def clear_set(root: Path) -> None:
    """Remove a prompt set written at ``root`` before (its manifest, prompts and both reference sets), so that a set
    written there is replaced whole."""
    import shutil

    root = Path(root)
    for stale in (root / "manifest.json", root / PROMPTS):
        stale.unlink(missing_ok=True)
    for stale in (REFERENCE, REFERENCE_B):
        shutil.rmtree(root / stale, ignore_errors=True)


def write_reference(root: Path, index: int, frames: np.ndarray, which: str = REFERENCE) -> Path:
    """Save item ``index``'s reference render (uint8 (F, H, W, 3); F = 1 for an image) as one PNG, frames side by
    side."""
    from PIL import Image

    path = reference_file(root, index, which)
    path.parent.mkdir(parents=True, exist_ok=True)
    f, h, w, _ = frames.shape
    Image.fromarray(frames.transpose(1, 0, 2, 3).reshape(h, f * w, 3)).save(path, optimize=True)
    return path


def read_reference(root: Path, index: int, size: int, which: str = REFERENCE) -> np.ndarray:
    """Item ``index``'s reference render in set ``which``: uint8 (F, size, size, 3)."""
    from PIL import Image

    path = reference_file(root, index, which)
    if not path.is_file():
        raise FileNotFoundError(f"prompt set {root}: no reference render {path.name} for item {index}")
    strip = np.asarray(Image.open(path).convert("RGB"))
    h, width, _ = strip.shape
    if h != size or width % size:
        raise ValueError(f"prompt set {root}: {path.name} is {width}×{h}, not frames of {size}×{size} side by side")
    return strip.reshape(h, width // size, size, 3).transpose(1, 0, 2, 3).copy()
