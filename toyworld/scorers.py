"""The toy zoo's image scorers: tiny models trained on the toy world, whose weights are committed under
``toyworld/zoo/scorers/``.

This module trains the image scorers used by toy curation (``models.scorers``), reproducibly, on 2 CPU cores in a few
minutes, and writes them with a manifest to ``toyworld/zoo/scorers/``:

- ``clip.safetensors``: open_clip ``alcm-toy-clip`` (64-d joint space; image tower: open_clip's ModifiedResNet, the
  RN50 CLIP design, at width 16 with one block per stage and attention pooling; text tower: 3-layer transformer of
  width 64 over the standard 49408-token BPE vocabulary, context 32), stored in fp16 (~10 MB, mostly the token
  embedding).
- ``aesthetic.safetensors``: `models.scorers.AestheticMLP` (input 64, hidden 128/64/32/16) on the toy CLIP's
  L2-normalised image embeddings.
- ``watermark.safetensors``: `models.scorers.ToyWatermarkCNN` (arch ``toy_cnn``, 64x64 input, "watermarked" at logit 0
  like LAION's detector).
- ``manifest.json``: what was trained, seeds, steps, wall times, the training settings, the toy ``ScorersConfig``,
  sha256 of every file and of the code that made them, validation metrics and the recommended thresholds (image
  curation's in ``thresholds``, video curation's ``clip_min`` in ``video_thresholds``).

How, and why:

- Data. One pool of images rendered from ``toyworld.scenes`` with seed ``[seed, 0]``: every scene clean, and
  degraded copies (``toyworld.degrade``) of a random subset: watermarked, blurred, noisy, near-duplicate. Every image
  keeps its scene's TRUE caption. Low-resolution images are left out: curation rejects them by size before their
  scores matter. Validation uses fresh scenes from seed ``[seed, 1]``, never seen in training.
- Video frames. Video curation scores a clip's middle frame against the clip's caption ("a red circle moving left on
  a black background"). Trained on image captions alone, where "left"/"right"/"top"/"bottom" are POSITIONS, the
  CLIP read "moving left" as a place (clean clips captioned "moving left" scored -40..0, "moving right" ~70), so no
  video threshold could separate wrong captions from right ones. So the pool also holds one random frame of each of
  ``pool_clips`` clean clips rendered with ``toyworld.videos.render_clip``, clip i from ``[seed, 20, i]`` (a stream
  no toy world and no validation uses), captioned with its full video caption (``video_caption``); every CLIP step
  adds ``batch_video`` of them to its images (20% of the batch). Their hard negatives swap the colour or the shape
  word (``video_mismatched_caption``), never the direction: one frame cannot show where a shape is heading, so a
  direction-swapped caption is not wrong for a frame, and as a negative it would only teach noise.
- CLIP. Contrastive InfoNCE in both directions with a learnable logit scale (open_clip's), plus HARD NEGATIVES: each
  image's caption with one colour or shape word swapped (``mismatched_caption``, resampled every step) is added to the
  text side, because curation must catch exactly that kind of wrong caption. Curation decides by a FIXED threshold on
  ``clip_score``, which InfoNCE (a ranking loss) does not calibrate, so a second term, a sigmoid loss on the cosine of
  (image, true caption) vs (image, mismatched caption) with a learnable scale and bias (SigLIP-style; both are training
  only and not saved), pushes every true pair above and every mismatched pair below one common cosine. Captions that
  are literally identical to an image's own caption are masked out of its negatives. Degraded images take part in
  InfoNCE so the embeddings stay meaningful on them; blurred and noisy ones are left out of the sigmoid term (their
  small shapes can be blurred beyond recognition, so "mismatched" is not decidable there). Shape is what the tiny
  model learns last (colour mismatches are caught almost perfectly early on), so each image also gets a caption with
  a SHAPE word swapped as an extra hard negative. Clip frames take part in both terms like clean images (their
  negatives: one colour-or-shape swap, ``shape_negatives`` shape swaps); they are left out of the aesthetic term.
- Aesthetic. Trained jointly with CLIP on the image embedding (gradient into the image tower), because a contrastive
  loss alone teaches the tower to IGNORE blur and noise (the caption stays the same), which would leave nothing for an
  aesthetic head to read. Targets: 1.0 for clean, near-duplicate and watermarked images (a watermark is the watermark
  detector's business, not an aesthetic defect), 0.0 for blurred and noisy ones; MSE, so the score lives in about
  [0, 1], higher is better. After CLIP training the head is fine-tuned alone on embeddings of the saved (fp16) CLIP,
  so that it matches the weights that ship.
- Watermark. ``toy_cnn`` trained with cross-entropy on balanced batches: watermarked images vs everything else in the
  pool (clean, blurred, noisy, near-duplicate), so blur or noise does not read as a watermark; a quarter of each
  batch (either class) is turned greyscale, so greyscale inputs (L or 16-bit images) do not read as one either.
- Reproducibility. numpy ``default_rng`` and ``torch.manual_seed`` from ``seed``, deterministic torch algorithms,
  2 torch threads; the same seed on the same machine gives the same weights (checked: two runs wrote bit-identical
  ``clip.safetensors``; a different thread count or CPU may change the low bits of float sums).
- Calibration (validation seed, through `models.scorers.ImageTextScorer` loading the saved files): ``clip_min`` is the
  3rd percentile of correct-caption clip scores on clean images (keeps 97% of correct pairs, leaving room in the
  5% false-rejection budget for the other filters), rounded down.
  ``aesthetic_min`` sits in the middle of the gap between the 3rd percentile of clean scores and the 97th percentile
  of blurred/noisy scores, and never above that clean percentile (so at most 3% clean false rejections): the 3rd
  percentile itself would sit at the edge of the tight clean cluster and reject a third of the near-duplicates
  (measured), whose JPEG/crop artifacts lower their score a little. ``watermark_max`` is 0.5. Each is reported with
  the recall it achieves and the false rejections it causes on every image kind. Video ``clip_min`` follows the
  ``clip_min`` rule on clip frames: clean frames of fresh clips (``[seed, 21, i]``) against their true video caption
  (3rd percentile, rounded down), reported with the correct-pair 3rd/5th percentiles, the mismatched (colour- or
  shape-swapped caption) 95th percentile, the mismatch recall and the clean false rejections it gives.

Code: the toy profile and the training settings are in `toyworld.scorer_config`, the image pool and the training
loops in `toyworld.scorer_training`, the clip frames in `toyworld.clip_frames`; this module validates, calibrates
and writes the files.

Run: ``python -m toyworld.scorers --only scorers --out toyworld/zoo/scorers --seed 0`` (the project CLI calls
`train_scorers`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch

from contracts.digests import sha256_file
from models.scorers import BUNDLED_OPEN_CLIP_CONFIG_DIR, ImageTextScorer, build_clip, save_weights
from toyworld.clip_frames import VIDEO_VAL_STREAM, make_video_pool, make_video_validation_set
from toyworld.scorer_config import DEFAULT_SCORERS_DIR, KINDS, ScorerTrainingConfig, toy_scorers_config
from toyworld.scorer_training import (
    embed_images,
    finetune_aesthetic,
    make_pool,
    make_validation_set,
    to_greyscale,
    train_clip,
    train_watermark,
)
from toyworld.videos import DIRECTIONS
from toyworld.zoo_common import REPO_ROOT

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------- validation


def validate_scorers(
    scorer: ImageTextScorer, val: dict[str, Any], *, clip_keep_quantile: float = 0.03
) -> tuple[dict[str, Any], dict[str, float]]:
    """Score the validation set; return (metrics, recommended thresholds)."""
    captions, mismatched = val["captions"], val["mismatched"]
    scores = {
        kind: scorer.score(val[kind], captions) for kind in ("clean", "watermark", "blur", "noise", "near_duplicate")
    }
    wrong = scorer.score(val["clean"], mismatched)
    every = np.ones(len(captions), dtype=bool)
    grey_clean = scorer.score(list(to_greyscale(np.stack(val["clean"]), every)), captions)
    grey_watermarked = scorer.score(list(to_greyscale(np.stack(val["watermark"]), every)), captions)
    wrong_watermarked = scorer.score(val["watermark"], mismatched)

    clip_true = scores["clean"]["clip_score"]
    clip_min = math.floor(float(np.quantile(clip_true, clip_keep_quantile)) * 100) / 100

    def below(values: np.ndarray, threshold: float) -> float:
        return float(np.mean(values < threshold))

    clip_metrics = {
        "threshold_rule": f"{clip_keep_quantile:.0%} quantile of correct-caption clip_score on clean validation "
        "images (reject below)",
        "clip_min": clip_min,
        "correct_kept_clean": 1.0 - below(clip_true, clip_min),
        "mismatch_recall_clean": below(wrong["clip_score"], clip_min),
        "correct_kept_watermarked": 1.0 - below(scores["watermark"]["clip_score"], clip_min),
        "mismatch_recall_watermarked": below(wrong_watermarked["clip_score"], clip_min),
        "correct_kept_near_duplicate": 1.0 - below(scores["near_duplicate"]["clip_score"], clip_min),
        "correct_kept_blur": 1.0 - below(scores["blur"]["clip_score"], clip_min),
        "correct_kept_noise": 1.0 - below(scores["noise"]["clip_score"], clip_min),
        "mean_correct_clean": float(clip_true.mean()),
        "mean_mismatched_clean": float(wrong["clip_score"].mean()),
        "top1_caption_accuracy_clean": float(np.mean(clip_true > wrong["clip_score"])),
    }

    aesthetic_clean = scores["clean"]["aesthetic_score"]
    low_quality = np.concatenate([scores["blur"]["aesthetic_score"], scores["noise"]["aesthetic_score"]])
    clean_q03, low_q97 = float(np.quantile(aesthetic_clean, 0.03)), float(np.quantile(low_quality, 0.97))
    aesthetic_min = math.floor(min(clean_q03, 0.5 * (clean_q03 + low_q97)) * 1000) / 1000
    aesthetic_metrics = {
        "threshold_rule": "middle of the gap between the 3rd percentile of clean and the 97th percentile of "
        "blurred/noisy aesthetic_score, at most the clean 3rd percentile (reject below)",
        "aesthetic_min": aesthetic_min,
        "clean_p03": clean_q03,
        "blur_noise_p97": low_q97,
        "clean_false_rejection": below(aesthetic_clean, aesthetic_min),
        "blur_noise_recall": below(low_quality, aesthetic_min),
        "blur_recall": below(scores["blur"]["aesthetic_score"], aesthetic_min),
        "noise_recall": below(scores["noise"]["aesthetic_score"], aesthetic_min),
        "watermarked_false_rejection": below(scores["watermark"]["aesthetic_score"], aesthetic_min),
        "near_duplicate_false_rejection": below(scores["near_duplicate"]["aesthetic_score"], aesthetic_min),
        "mean_clean": float(aesthetic_clean.mean()),
        "mean_blur_noise": float(low_quality.mean()),
    }

    threshold = 0.5
    positive = scores["watermark"]["watermark_prob"] >= threshold
    clean_flagged = scores["clean"]["watermark_prob"] >= threshold
    true_pos, false_pos = int(positive.sum()), int(clean_flagged.sum())
    watermark_metrics = {
        "threshold_rule": "0.5 on watermark_prob (reject at or above); watermarked vs clean, 1:1",
        "watermark_max": threshold,
        "recall": true_pos / len(positive),
        "precision": true_pos / max(1, true_pos + false_pos),
        "clean_false_positive_rate": false_pos / len(clean_flagged),
        "blur_false_positive_rate": float(np.mean(scores["blur"]["watermark_prob"] >= threshold)),
        "noise_false_positive_rate": float(np.mean(scores["noise"]["watermark_prob"] >= threshold)),
        "near_duplicate_false_positive_rate": float(np.mean(scores["near_duplicate"]["watermark_prob"] >= threshold)),
        "recall_at_0.8": float(np.mean(scores["watermark"]["watermark_prob"] >= 0.8)),
        "clean_false_positive_rate_at_0.8": float(np.mean(scores["clean"]["watermark_prob"] >= 0.8)),
        "greyscale_clean_false_positive_rate": float(np.mean(grey_clean["watermark_prob"] >= threshold)),
        "greyscale_watermarked_recall": float(np.mean(grey_watermarked["watermark_prob"] >= threshold)),
    }
    metrics = {
        "validation_scenes": len(captions),
        "clip": clip_metrics,
        "aesthetic": aesthetic_metrics,
        "watermark": watermark_metrics,
    }
    thresholds = {"clip_min": clip_min, "aesthetic_min": aesthetic_min, "watermark_max": threshold}
    return metrics, thresholds


def validate_video_clip(
    scorer: ImageTextScorer,
    val: dict[str, Any],
    *,
    clip_keep_quantile: float = 0.03,
    image_clip_min: float | None = None,
) -> tuple[dict[str, Any], float]:
    """Score clean clip frames against their true video caption and a colour/shape-swapped one; return (metrics,
    recommended ``curate_videos.filters.clip_min``), chosen like the image ``clip_min``."""
    right = scorer.score(val["frames"], val["captions"])["clip_score"]
    wrong = scorer.score(val["frames"], val["mismatched"])["clip_score"]
    clip_min = math.floor(float(np.quantile(right, clip_keep_quantile)) * 100) / 100
    swapped = np.asarray(val["swapped"])
    directions = np.asarray([clip.direction for clip in val["clips"]])

    def below(values: np.ndarray, threshold: float) -> float:
        return float(np.mean(values < threshold))

    metrics: dict[str, Any] = {
        "threshold_rule": f"{clip_keep_quantile:.0%} quantile of correct-caption clip_score on clean validation clip "
        "frames (reject below)",
        "validation_clips": len(right),
        "clip_min": clip_min,
        "correct_p03": float(np.quantile(right, 0.03)),
        "correct_p05": float(np.quantile(right, 0.05)),
        "correct_median": float(np.median(right)),
        "mismatched_p95": float(np.quantile(wrong, 0.95)),
        "mismatched_median": float(np.median(wrong)),
        "mismatch_recall": below(wrong, clip_min),
        "mismatch_recall_colour_swapped": below(wrong[swapped == "colour"], clip_min),
        "mismatch_recall_shape_swapped": below(wrong[swapped == "shape"], clip_min),
        "clean_false_rejection": below(right, clip_min),
        "top1_caption_accuracy": float(np.mean(right > wrong)),
        "correct_p05_by_direction": {d: float(np.quantile(right[directions == d], 0.05)) for d in DIRECTIONS},
    }
    if image_clip_min is not None:
        metrics["at_image_clip_min"] = {
            "clip_min": image_clip_min,
            "mismatch_recall": below(wrong, image_clip_min),
            "clean_false_rejection": below(right, image_clip_min),
        }
    return metrics, clip_min


# --------------------------------------------------------------------------------------------------- entry point


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path.resolve())


def train_scorers(
    out_dir: Path = DEFAULT_SCORERS_DIR,
    *,
    seed: int = 0,
    steps_clip: int = ScorerTrainingConfig.steps_clip,
    log_every: int = 50,
    **settings: Any,
) -> dict:
    """Train the toy CLIP, aesthetic head and watermark CNN; write weights + ``manifest.json`` to ``out_dir``.

    ``settings`` overrides other `ScorerTrainingConfig` fields (e.g. ``steps_watermark``, ``pool_scenes``). Files are
    written to a temporary folder next to ``out_dir`` and moved into place at the end, so a failed run leaves the
    previous weights intact. Returns the manifest.
    """
    cfg = ScorerTrainingConfig(seed=seed, steps_clip=steps_clip, **settings)
    if log_every < 1:
        raise ValueError(f"log_every={log_every!r}: must be a positive integer")
    out_dir = Path(out_dir)
    previous_threads = torch.get_num_threads()
    previous_deterministic = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    t_start = time.monotonic()
    wall: dict[str, float] = {}
    try:
        logger.info("toy scorers: rendering a pool of %d scenes (seed [%d, 0])", cfg.pool_scenes, seed)
        t = time.monotonic()
        pool = make_pool(np.random.default_rng([seed, 0]), cfg.pool_scenes, cfg.degraded_fraction)
        counts = {kind: int(len(pool.indices(kind))) for kind in KINDS}
        videos = make_video_pool(seed, cfg.pool_clips)
        counts["video_frames"] = len(videos)
        wall["pool_s"] = time.monotonic() - t
        logger.info("pool: %d images %s in %.1f s", len(pool), counts, wall["pool_s"])

        train_rng = np.random.default_rng([seed, 2])
        t = time.monotonic()
        clip_model, aesthetic = train_clip(pool, cfg, train_rng, log_every=log_every, videos=videos)
        wall["clip_s"] = time.monotonic() - t

        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        save_weights(clip_model, tmp / "clip.safetensors", dtype=torch.float16)
        # the head is fitted to the CLIP weights as they ship (fp16-rounded), not to the fp32 ones in memory
        scorers_cfg = toy_scorers_config(str(tmp), model_config_dir=str(BUNDLED_OPEN_CLIP_CONFIG_DIR))
        shipped_clip, _, _ = build_clip(scorers_cfg.clip)
        t = time.monotonic()
        embeddings = embed_images(shipped_clip, pool.images)
        aesthetic = finetune_aesthetic(aesthetic, embeddings, pool.kinds, cfg, train_rng, log_every=log_every)
        wall["aesthetic_s"] = time.monotonic() - t
        save_weights(aesthetic, tmp / "aesthetic.safetensors", dtype=torch.float16)

        t = time.monotonic()
        detector = train_watermark(pool, cfg, train_rng, log_every=log_every)
        wall["watermark_s"] = time.monotonic() - t
        save_weights(detector.net, tmp / "watermark.safetensors", dtype=torch.float16)
        del pool, embeddings, videos

        t = time.monotonic()
        logger.info("validating on %d fresh scenes (seed [%d, 1])", cfg.val_scenes, seed)
        val = make_validation_set(np.random.default_rng([seed, 1]), cfg.val_scenes)
        scorer = ImageTextScorer(dataclasses.replace(scorers_cfg, torch_threads=cfg.threads, batch_size=256))
        metrics, thresholds = validate_scorers(scorer, val, clip_keep_quantile=cfg.clip_keep_quantile)
        logger.info("validating on %d fresh clips (seed [%d, %d, i])", cfg.val_clips, seed, VIDEO_VAL_STREAM)
        val_videos = make_video_validation_set(seed, cfg.val_clips)
        metrics["video_clip"], video_clip_min = validate_video_clip(
            scorer, val_videos, clip_keep_quantile=cfg.clip_keep_quantile, image_clip_min=thresholds["clip_min"]
        )
        wall["validation_s"] = time.monotonic() - t
        wall["total_s"] = time.monotonic() - t_start

        files = {}
        for name in ("clip", "aesthetic", "watermark"):
            path = tmp / f"{name}.safetensors"
            files[name] = {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}
        manifest = {
            "name": "toyworld-scorers",
            "description": "toy CLIP (alcm-toy-clip), aesthetic MLP and toy_cnn watermark detector for toy curation",
            "seed": seed,
            "training": _jsonable(dataclasses.asdict(cfg)),
            "steps": {"clip": cfg.steps_clip, "aesthetic": cfg.steps_aesthetic, "watermark": cfg.steps_watermark},
            "pool_counts": counts,
            "wall_time_s": {k: round(v, 1) for k, v in wall.items()},
            "scorers_config": toy_scorers_config(_relative(out_dir)).to_dict(),
            "files": files,
            "thresholds": thresholds,
            "video_thresholds": {"clip_min": video_clip_min},
            "metrics": metrics,
            "code": {
                rel: sha256_file(REPO_ROOT / rel)
                for rel in (
                    "toyworld/scorers.py",
                    "toyworld/scorer_config.py",
                    "toyworld/scorer_training.py",
                    "toyworld/clip_frames.py",
                    "toyworld/zoo_common.py",
                    "models/scorers.py",
                    "models/open_clip_configs/alcm-toy-clip.json",
                    "toyworld/scenes.py",
                    "toyworld/degrade.py",
                    "toyworld/videos.py",
                )
            },  # fmt: skip
            "environment": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "open_clip": open_clip.__version__,
                "numpy": np.__version__,
                "torch_threads": cfg.threads,
            },
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(tmp.iterdir()):
            path.chmod(0o644)  # files in a mkdtemp folder are private; the zoo is shared, read-only data
            os.replace(path, out_dir / path.name)
        shutil.rmtree(tmp)
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic[0], warn_only=previous_deterministic[1])
    logger.info(
        "toy scorers written to %s in %.0f s; thresholds %s, video clip_min %.2f; clip mismatch recall %.3f "
        "(videos %.3f), aesthetic blur/noise recall %.3f, watermark recall %.3f precision %.3f",
        out_dir, wall["total_s"], thresholds, video_clip_min, metrics["clip"]["mismatch_recall_clean"],
        metrics["video_clip"]["mismatch_recall"], metrics["aesthetic"]["blur_noise_recall"],
        metrics["watermark"]["recall"], metrics["watermark"]["precision"],
    )  # fmt: skip
    return manifest


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Train the toy model zoo.")
    parser.add_argument("--only", choices=["scorers"], default="scorers", help="which zoo members to train")
    parser.add_argument("--out", type=Path, default=DEFAULT_SCORERS_DIR, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps-clip", type=int, default=ScorerTrainingConfig.steps_clip)
    parser.add_argument("--steps-watermark", type=int, default=ScorerTrainingConfig.steps_watermark)
    parser.add_argument("--steps-aesthetic", type=int, default=ScorerTrainingConfig.steps_aesthetic)
    parser.add_argument("--pool-scenes", type=int, default=ScorerTrainingConfig.pool_scenes)
    parser.add_argument("--val-scenes", type=int, default=ScorerTrainingConfig.val_scenes)
    parser.add_argument("--pool-clips", type=int, default=ScorerTrainingConfig.pool_clips)
    parser.add_argument("--val-clips", type=int, default=ScorerTrainingConfig.val_clips)
    parser.add_argument("--log-every", type=int, default=50)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in ("__main__", "toyworld", "models"):
        logging.getLogger(name).setLevel(logging.INFO)
    if args.only == "scorers":
        train_scorers(
            args.out,
            seed=args.seed,
            steps_clip=args.steps_clip,
            log_every=args.log_every,
            steps_watermark=args.steps_watermark,
            steps_aesthetic=args.steps_aesthetic,
            pool_scenes=args.pool_scenes,
            val_scenes=args.val_scenes,
            pool_clips=args.pool_clips,
            val_clips=args.val_clips,
        )
    else:
        raise ValueError(f"--only={args.only!r}: must be one of scorers")
