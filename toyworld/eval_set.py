"""The toy world's prompt sets for evaluation (:mod:`contracts.evalset`): held-out prompts with ground-truth renders.

``image/``: one-object prompts of the image teacher's held-out stream
(:func:`toyworld.image_teacher.validation_prompts`) rendered as the scene the caption describes; ``video/``:
moving-shape prompts of the motion teacher's held-out stream (:func:`toyworld.motion_teacher.validation_prompts`)
rendered as a clip of ``frames`` frames. Set A (``reference/``) renders each item from the item's seed
(:func:`contracts.evalset.item_seed`) through the world's own renderer, which shares nothing with the samplers'
noise; set B (``reference_b/``) renders the same items from seeds :data:`SET_B_OFFSET` away, so A against B is the
floor of the set-level figures (two draws of the real distribution).

The toy profile evaluates with the set committed under ``toyworld/eval`` (:data:`DEFAULT_DIR`, made by
``alcm toy eval-set`` with the profile's ``evaluate`` settings: seed 1, 8 prompts, 1 video each, 8 frames).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from contracts.digests import json_digest
from contracts.evalset import KINDS, PROMPTS, REFERENCE_B, clear_set, item_seed, write_reference
from contracts.manifest import Manifest, code_version, files_map, write_manifest

DEFAULT_DIR = Path(__file__).resolve().parent / "eval"
SET_B_OFFSET = 500_000
"""Set B's render seeds are the items' seeds plus this (disjoint from set A's for any set under 500,000 items)."""


def ground_truth(kind: str, prompt: dict, seed: int, frames: int) -> np.ndarray:
    """The render of ``prompt`` for an item with noise seed ``seed``: uint8 (F, 64, 64, 3) (F = 1 for images)."""
    if kind == "image":
        from toyworld.image_teacher import render_prompt

        return render_prompt(prompt, seed)[None]
    if kind == "video":
        from toyworld.motion_teacher import VAL_STREAM, render_prompt_clip

        return render_prompt_clip(prompt, np.random.default_rng([seed, VAL_STREAM, 1]), frames=frames, stride=1)
    raise ValueError(f"kind={kind!r}: choose one of {', '.join(KINDS)}")


def write_eval_set(out: Path, kind: str, *, seed: int, prompts: int, videos_per_prompt: int, frames: int) -> dict:
    """Write the ``kind`` prompt set of ``prompts`` held-out prompts, ``videos_per_prompt`` renders each, under
    ``out``; return its manifest."""
    if kind == "image":
        from toyworld.image_teacher import validation_prompts
    elif kind == "video":
        from toyworld.motion_teacher import validation_prompts
    else:
        raise ValueError(f"kind={kind!r}: choose one of {', '.join(KINDS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clear_set(out)  # a set written here before is replaced whole
    chosen = validation_prompts(seed, prompts)
    (out / PROMPTS).write_text(yaml.safe_dump(chosen, sort_keys=False))
    frames = frames if kind == "video" else 1
    for i, prompt in enumerate(chosen):
        for j in range(videos_per_prompt):
            index = i * videos_per_prompt + j
            write_reference(out, index, ground_truth(kind, prompt, item_seed(seed, index), frames))
            write_reference(out, index, ground_truth(kind, prompt, item_seed(seed, index) + SET_B_OFFSET, frames),
                            REFERENCE_B)  # fmt: skip
    settings = {"seed": seed, "prompts": prompts, "videos_per_prompt": videos_per_prompt, "frames": frames,
                "size": 64}  # fmt: skip
    files = files_map(out)
    manifest = Manifest(name=f"toy-eval-{kind}", kind="eval-set", job="toy_world", inputs={}, config=settings,
                        digest="sha256:" + json_digest(files), code_version=code_version(), files=files)
    write_manifest(out, manifest)
    return json.loads((out / "manifest.json").read_text())


def write_eval_sets(out: Path, *, seed: int, prompts: int, videos_per_prompt: int, frames: int) -> dict[str, dict]:
    """Both kinds' sets, under ``out/image`` and ``out/video``."""
    return {kind: write_eval_set(Path(out) / kind, kind, seed=seed, prompts=prompts,
                                 videos_per_prompt=videos_per_prompt, frames=frames) for kind in KINDS}  # fmt: skip
