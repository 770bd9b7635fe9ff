"""A prompt set of real videos for evaluation (:mod:`contracts.evalset`), made from a curated text-video dataset: the
unpaired reference a production evaluation needs (the paper's UCF-101 role), where the toy world has its renders.

Rows are grouped by caption, in the order of each caption's first row; a caption is a prompt when it has at least
``2 × videos_per_prompt`` clips. Its first ``videos_per_prompt`` clips (dataset order) are its items' set A
(``reference/``), the next ``videos_per_prompt`` its set B (``reference_b/``): A against B is the floor, two draws of
the real distribution at this N. Each clip's first ``frames`` frames are resized to ``size`` × ``size`` (a clip
with fewer frames is skipped, and counted). The first ``prompts`` prompts are written; fewer is an error naming
how many the dataset has. The manifest records the dataset's digest as the set's input, and the ``seed``,
``videos_per_prompt``, ``frames`` and ``size`` the evaluation checks (the seed only numbers the items: real clips
are not drawn from it).

``alcm eval-set --input CURATED --out DIR --prompts N --videos-per-prompt K --frames F --size S --seed SEED``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

from contracts.digests import json_digest
from contracts.evalset import PROMPTS, REFERENCE_B, clear_set, write_reference
from contracts.manifest import Manifest, code_version, files_map, write_manifest

log = logging.getLogger(__name__)


def clip_frames(row: dict, frames: int, size: int) -> np.ndarray | None:
    """The first ``frames`` frames of a curated row (PNG bytes), resized to ``size``²: uint8 (F, size, size, 3);
    None when the clip is shorter."""
    from PIL import Image

    from models.video_io import decode_png

    if len(row["frames"]) < frames:
        return None
    out = []
    for data in row["frames"][:frames]:
        image = Image.fromarray(decode_png(data))
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        out.append(np.asarray(image, dtype=np.uint8))
    return np.stack(out)


def write_video_eval_set(input_dir: str | Path, out: Path, *, prompts: int, videos_per_prompt: int, frames: int,
                         size: int, seed: int) -> dict:  # fmt: skip
    """Write the prompt set (module docstring) under ``out``; return its manifest."""
    from pipelines.stage_job import read_dataset

    for name, value in (("prompts", prompts), ("videos_per_prompt", videos_per_prompt), ("frames", frames),
                        ("size", size)):  # fmt: skip
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} {value}: must be ≥ 1")
    dataset = read_dataset(input_dir, columns=("caption", "frames"), what="a curated text-video dataset")
    by_caption: dict[str, list[np.ndarray]] = {}
    short = 0
    for file in dataset.files:
        table = pq.read_table(file, columns=["caption", "frames"])
        for row in table.to_pylist():
            clips = by_caption.setdefault(row["caption"], [])
            if len(clips) >= 2 * videos_per_prompt:
                continue
            video = clip_frames(row, frames, size)
            if video is None:
                short += 1
            else:
                clips.append(video)
    chosen = [c for c, clips in by_caption.items() if len(clips) >= 2 * videos_per_prompt][:prompts]
    if len(chosen) < prompts:
        raise ValueError(f"--input {input_dir}: {len(chosen)} captions have {2 * videos_per_prompt} clips of at least "
                         f"{frames} frames (--videos-per-prompt {videos_per_prompt}, sets A and B), --prompts asks "
                         f"for {prompts}")  # fmt: skip
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clear_set(out)  # a set written here before is replaced whole
    (out / PROMPTS).write_text(yaml.safe_dump([{"caption": c} for c in chosen], sort_keys=False))
    for i, caption in enumerate(chosen):
        clips = by_caption[caption]
        for j in range(videos_per_prompt):
            write_reference(out, i * videos_per_prompt + j, clips[j])
            write_reference(out, i * videos_per_prompt + j, clips[videos_per_prompt + j], REFERENCE_B)
    settings = {"seed": seed, "prompts": prompts, "videos_per_prompt": videos_per_prompt, "frames": frames,
                "size": size, "skipped_short_clips": short}  # fmt: skip
    files = files_map(out)
    manifest = Manifest(name="video-eval-set", kind="eval-set", job="video_eval_set", inputs={"dataset":
                        dataset.record()}, config=settings, digest="sha256:" + json_digest(files),
                        code_version=code_version(), files=files)  # fmt: skip
    write_manifest(out, manifest)
    log.info("eval set of %d prompts × %d clips (sets A and B) written to %s (%d short clips skipped)", prompts,
             videos_per_prompt, out, short)  # fmt: skip
    return json.loads((out / "manifest.json").read_text())
