"""Jobs of the toy world: generate a seeded world, its evaluation prompt sets, and train the toy model zoo.

These wrap :mod:`toyworld` (pure generators and trainers) with the job contract: a typed ``run``-style function
and a ``python -m pipelines.toy_world`` entry point. The toy world is the embedded default data source of every
later job, so ``pipelines`` may import ``toyworld``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import yaml

from contracts.manifest import code_version
from pipelines.config import Config

log = logging.getLogger(__name__)

ZOO_PARTS = ("scorers", "captioner", "image-teacher", "motion-teacher", "style-teacher")


def generate(
    cfg: Config,
    out: Path,
    *,
    seed: int | None = None,
    images: int | None = None,
    videos: int | None = None,
    dancers: int | None = None,
) -> dict:
    """Write a toy world under ``out`` (images/, videos/, dancers/, world.json); arguments override the config."""
    from toyworld.generate import generate_world

    tw = cfg.toyworld
    t = time.monotonic()
    summary = generate_world(
        Path(out),
        seed=tw.seed if seed is None else seed,
        images=tw.images if images is None else images,
        videos=tw.videos if videos is None else videos,
        dancers=tw.dancers if dancers is None else dancers,
        image_size=tw.image_size,
    )
    log.info("toy world written to %s in %.1f s", out, time.monotonic() - t)
    return summary


def eval_sets(cfg: Config, out: Path, *, frames: int | None = None) -> dict[str, dict]:
    """Write the toy world's prompt sets for evaluation (``image/`` and ``video/`` under ``out``,
    :mod:`toyworld.eval_set`) for ``cfg.evaluate``'s seed, prompts and seeds per prompt, the videos at ``frames``
    frames (default: ``distill_video.frames``, what stage 2 trains on)."""
    from toyworld.eval_set import write_eval_sets

    e = cfg.evaluate
    sets = write_eval_sets(Path(out), seed=e.seed, prompts=e.num_prompts, videos_per_prompt=e.videos_per_prompt,
                           frames=frames or cfg.distill_video.frames)  # fmt: skip
    log.info("toy prompt sets written to %s (%d prompts × %d seeds)", out, e.num_prompts, e.videos_per_prompt)
    return sets


SETTABLE = {
    "image-teacher": "toyworld.image_teacher:ImageTeacherTrainingConfig",
    "motion-teacher": "toyworld.motion_teacher:MotionTeacherTrainingConfig",
    "style-teacher": "toyworld.style_teacher:StyleTeacherTrainingConfig",
}
"""The zoo parts whose training settings ``--set`` can change, and the dataclass that holds them."""


def zoo_settings(parts: list[str], pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (values parsed as YAML scalars) checked against every requested part's training
    settings: a key that one of them lacks, or a part that takes no settings, is an error naming it."""
    import dataclasses
    import importlib

    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set steps=1500")
        settings[key.strip()] = yaml.safe_load(value)
    for part in parts if settings else []:
        if part not in SETTABLE:
            raise ValueError(f"--set: the {part} part takes no settings; --set works with {', '.join(SETTABLE)}")
        module, name = SETTABLE[part].split(":")
        fields = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name))} - {"seed"}
        for key in settings:
            if key not in fields:
                raise ValueError(f"--set {key}: not a training setting of the {part} ({', '.join(sorted(fields))})")
    return settings


def train_zoo(out_root: Path, *, only: list[str] | None = None, seed: int = 0, sets: list[str] | None = None) -> dict:
    """Train the requested parts of the toy zoo (``scorers``, ``captioner``, ``image-teacher``, ``motion-teacher``,
    ``style-teacher``); each goes to ``out_root/<part>`` with ``-`` as ``_`` (the image teacher to
    ``out_root/image_teacher``). The motion and style teachers build on the image teacher under ``out_root``.
    ``sets``: ``KEY=VALUE`` training settings for the teachers (:func:`zoo_settings`), recorded in their manifests
    (how the committed ones were continued from their predecessors: ``init_from``)."""
    parts = list(only or ZOO_PARTS)
    unknown = [p for p in parts if p not in ZOO_PARTS]
    if unknown:
        raise ValueError(f"unknown zoo part(s) {unknown}; choose from {', '.join(ZOO_PARTS)}")
    settings = zoo_settings(parts, list(sets or []))
    results = {}
    for part in parts:
        if part == "scorers":
            from toyworld.scorers import train_scorers

            results[part] = train_scorers(Path(out_root) / "scorers", seed=seed)
        elif part == "captioner":
            from toyworld.captioner import train_captioner

            results[part] = train_captioner(Path(out_root) / "captioner", seed=seed)
        elif part == "image-teacher":
            from toyworld.image_teacher import train_image_teacher

            results[part] = train_image_teacher(Path(out_root) / "image_teacher", seed=seed, **settings)
        elif part == "motion-teacher":
            from toyworld.motion_teacher import train_motion_teacher

            results[part] = train_motion_teacher(
                Path(out_root) / "motion_teacher", image_teacher=Path(out_root) / "image_teacher", seed=seed, **settings
            )
        elif part == "style-teacher":
            from toyworld.style_teacher import train_style_teacher

            results[part] = train_style_teacher(
                Path(out_root) / "style_teacher", image_teacher=Path(out_root) / "image_teacher", seed=seed, **settings
            )
        else:
            raise ValueError(f"unknown zoo part {part!r}; choose from {', '.join(ZOO_PARTS)}")
    return {"parts": results, "code_version": code_version()}


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.toy_world data --out DIR``, ``... eval-set --out DIR`` or ``... train-zoo``."""
    from pipelines.runtime import job_config

    parser = argparse.ArgumentParser(prog="python -m pipelines.toy_world")
    sub = parser.add_subparsers(dest="cmd", required=True)
    data = sub.add_parser("data")
    data.add_argument("--out", required=True, type=Path)
    data.add_argument("--seed", type=int)
    data.add_argument("--images", type=int)
    data.add_argument("--videos", type=int)
    data.add_argument("--dancers", type=int)
    evalset = sub.add_parser("eval-set")
    evalset.add_argument("--out", required=True, type=Path)
    evalset.add_argument("--frames", type=int)
    zoo = sub.add_parser("train-zoo")
    zoo.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "toyworld" / "zoo")
    zoo.add_argument("--only", action="append")
    zoo.add_argument("--seed", type=int, default=0)
    zoo.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--config", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.cmd == "data":
        generate(
            job_config(args.config, []),
            args.out,
            seed=args.seed,
            images=args.images,
            videos=args.videos,
            dancers=args.dancers,
        )
    elif args.cmd == "eval-set":
        eval_sets(job_config(args.config, []), args.out, frames=args.frames)
    elif args.cmd == "train-zoo":
        train_zoo(args.out, only=args.only, seed=args.seed, sets=args.sets)
    else:
        raise ValueError(f"unknown command {args.cmd!r}; choose data, eval-set or train-zoo")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
