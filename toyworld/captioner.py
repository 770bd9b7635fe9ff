"""The toy captioner: a tiny BLIP trained on toy video frames with template captions, in both backends' formats.

What it learns to say, for one frame:

- a moving-shape clip frame: "a red circle on a black background";
- a dancer frame: "a person in a red shirt and blue pants dancing on a gray background".

A single frame shows colour, shape/person and background; it cannot show where a shape is heading, so direction
words are not in the frame captions (the clip captions of the text-video data keep them). "dancing" is the motion
word a frame of a dancer supports.

What it writes to ``toyworld/zoo/captioner/``:

- the transformers format: ``config.json`` (``BlipConfig``), ``model.safetensors``, ``generation_config.json``,
  ``preprocessor_config.json`` (``BlipImageProcessorPil``: 64×64, CLIP mean/std, as LAVIS's eval transform) and
  ``vocab.txt`` (a WordPiece vocabulary of the template words; BLIP's ``[DEC]``/``[ENC]`` are added after it, as real
  BLIP adds them after BERT's 30522 tokens);
- ``lavis/blip_caption_toy.pth``: the same weights in LAVIS's ``blip_caption`` layout (``{"model": state_dict}``,
  tensors only, so it loads with ``torch.load(weights_only=True)``), converted by :mod:`models.blip_convert`;
- ``manifest.json``: seeds, steps, wall time, validation attribute accuracy, sha256 of every file.

Architecture: ViT with 64×64 input, 8×8 patches, width 64, 2 layers, 4 heads, layer-norm eps 1e-6 (LAVIS's value);
text decoder width 64, 2 layers, 4 heads, cross-attention to the image tokens. Trained with BLIP's captioning loss
(next-token cross entropy with label smoothing 0.1, the prompt "a picture of" masked out).

Data: frames rendered on the fly with :func:`toyworld.videos.render_clip` and :func:`toyworld.dancers.render_dancer`
from seed stream ``[seed, 10, i]`` (training) and ``[seed, 11, i]`` (validation: never seen in training).
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from toyworld.dancers import PATTERNS, render_dancer
from toyworld.scenes import BACKGROUNDS, COLOURS, SHAPES
from toyworld.videos import DIRECTIONS, render_clip
from toyworld.zoo_common import warmup_cosine_lr

log = logging.getLogger(__name__)

DEFAULT_DIR = Path(__file__).resolve().parent / "zoo" / "captioner"
LAVIS_CHECKPOINT = "lavis/blip_caption_toy.pth"
"""Path of the LAVIS-layout checkpoint inside the captioner directory."""
PROMPT = "a picture of "
"""BLIP's captioning prompt (also the profiles' ``captioner.generation.prompt``)."""
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
WORDS = (
    "a",
    "picture",
    "of",
    "on",
    "background",
    "person",
    "in",
    "shirt",
    "and",
    "pants",
    "dancing",
    "moving",
    *COLOURS,
    *SHAPES,
    *(b for b in BACKGROUNDS if b not in COLOURS),
)
"""Whole-word vocabulary of the toy captions (WordPiece needs no sub-words for them)."""
SUBJECTS = (*SHAPES, "person")


def clip_frame_caption(colour: str, shape: str, background: str) -> str:
    """Caption of one frame of a moving-shape clip."""
    return f"a {colour} {shape} on a {background} background"


def dancer_frame_caption(shirt: str, pants: str, background: str) -> str:
    """Caption of one frame of a dancer."""
    return f"a person in a {shirt} shirt and {pants} pants dancing on a {background} background"


def caption_attributes(caption: str) -> dict[str, object]:
    """What a caption claims: colours (in order), subject (shape or person), motion word, background."""
    words = caption.lower().replace(",", " ").split()
    colours = [
        w for i, w in enumerate(words) if w in COLOURS and not (i + 1 < len(words) and words[i + 1] == "background")
    ]
    subject = next((w for w in words if w in SUBJECTS), None)
    motion = "dancing" if "dancing" in words else None
    background = next((words[i] for i in range(len(words) - 1) if words[i + 1] == "background"), None)
    return {"colours": colours, "subject": subject, "motion": motion, "background": background}


def attribute_hits(caption: str, truth: dict) -> tuple[int, int]:
    """(correct, total) attributes of ``caption`` against ``truth`` (keys colours, subject, motion, background).

    Scored: each true colour (in order: shirt then pants for a dancer), the subject, the background, and for
    dancers the motion word. A missing or extra word counts as wrong.
    """
    got = caption_attributes(caption)
    correct = total = 0
    true_colours = list(truth["colours"])
    for i, colour in enumerate(true_colours):
        total += 1
        correct += int(
            i < len(got["colours"]) and got["colours"][i] == colour and len(got["colours"]) == len(true_colours)
        )
    for name in ("subject", "background"):
        total += 1
        correct += int(got[name] == truth[name])
    if truth.get("motion"):
        total += 1
        correct += int(got["motion"] == truth["motion"])
    return correct, total


def truth_for_clip(colour: str, shape: str, background: str) -> dict:
    """Ground-truth attributes of a clip frame."""
    return {"colours": [colour], "subject": shape, "motion": None, "background": background}


def truth_for_dancer(shirt: str, pants: str, background: str) -> dict:
    """Ground-truth attributes of a dancer frame."""
    return {"colours": [shirt, pants], "subject": "person", "motion": "dancing", "background": background}


@dataclass(frozen=True)
class CaptionerTrainingConfig:
    """Settings of the toy captioner's training."""

    seed: int = 0
    """Seed of data and initialisation."""
    train_clips: int = 1500
    """Moving-shape clips rendered for training (``frames_per_clip`` frames used from each)."""
    train_dancers: int = 1500
    """Dancer sequences rendered for training."""
    val_clips: int = 150
    """Held-out clips for validation."""
    val_dancers: int = 150
    """Held-out dancers for validation."""
    frames_per_clip: int = 4
    """Frames taken from each rendered sequence."""
    steps: int = 4000
    """Optimiser steps."""
    batch_size: int = 64
    """Frames per step."""
    lr: float = 1e-3
    """Peak learning rate (AdamW, linear warmup, cosine decay)."""
    warmup: int = 100
    """Warmup steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    threads: int = 2
    """torch threads."""
    size: int = 64
    """Frame side in pixels."""


def write_vocab(path: Path) -> list[str]:
    """Write the toy WordPiece vocabulary and return it."""
    vocab = [*SPECIALS, *WORDS]
    if len(set(vocab)) != len(vocab):
        raise ValueError("duplicate words in the toy vocabulary")
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return vocab


def blip_config(vocab_size: int, *, size: int = 64):
    """The toy BLIP architecture (``vocab_size`` includes ``[DEC]`` and ``[ENC]``)."""
    from transformers import BlipConfig

    bos, sep = vocab_size - 2, SPECIALS.index("[SEP]")
    return BlipConfig(
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": size,
            "patch_size": 8,
            "layer_norm_eps": 1e-6,
        },
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "encoder_hidden_size": 64,
            "max_position_embeddings": 64,
            "bos_token_id": bos,
            "sep_token_id": sep,
            "eos_token_id": sep,
            "pad_token_id": SPECIALS.index("[PAD]"),
        },
    )


def render_frames(seed: int, stream: int, n_clips: int, n_dancers: int, per: int, size: int):
    """Frames (N, size, size, 3) uint8, their captions and ground-truth attributes."""
    frames, captions, truths = [], [], []
    for i in range(n_clips):
        rng = np.random.default_rng([seed, stream, 0, i])
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = COLOURS[int(rng.integers(len(COLOURS)))]
        direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
        background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        clip = render_clip(shape, colour, direction, background, rng, frames=16, size=size)
        for t in rng.choice(16, size=per, replace=False):
            frames.append(clip[t])
            captions.append(clip_frame_caption(colour, shape, background))
            truths.append(truth_for_clip(colour, shape, background))
    for i in range(n_dancers):
        rng = np.random.default_rng([seed, stream, 1, i])
        pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
        shirt_id, pants_id = rng.choice(len(COLOURS), size=2, replace=False)
        shirt, pants = COLOURS[int(shirt_id)], COLOURS[int(pants_id)]
        background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        images, _ = render_dancer(
            pattern,
            shirt,
            pants,
            background,
            rng,
            speed=float(rng.uniform(0.5, 1.5)),
            phase=float(rng.uniform(0.0, 2.0 * np.pi)),
            frames=16,
            size=size,
        )
        for t in rng.choice(16, size=per, replace=False):
            frames.append(images[t])
            captions.append(dancer_frame_caption(shirt, pants, background))
            truths.append(truth_for_dancer(shirt, pants, background))
    return np.stack(frames), captions, truths


def _targets(tokenizer, captions: list[str], bos: int, prompt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer([PROMPT + c for c in captions], padding="longest", return_tensors="pt")
    ids = enc["input_ids"].clone()
    ids[:, 0] = bos
    labels = ids.masked_fill(enc["attention_mask"] == 0, -100)
    labels[:, :prompt_len] = -100  # BLIP does not train on the prompt
    return ids, labels


def evaluate(captioner, frames: np.ndarray, truths: list[dict]) -> dict:
    """Attribute accuracy of a captioner's captions on ``frames`` (overall, per kind, exact-match rate)."""
    captions = captioner.generate(list(frames))
    hits = {"clip": [0, 0], "dancer": [0, 0]}
    exact = 0
    for caption, truth in zip(captions, truths, strict=True):
        c, t = attribute_hits(caption, truth)
        kind = "dancer" if truth["subject"] == "person" else "clip"
        hits[kind][0] += c
        hits[kind][1] += t
        exact += int(c == t)
    total_c = sum(h[0] for h in hits.values())
    total_t = sum(h[1] for h in hits.values())
    return {
        "attribute_accuracy": total_c / max(1, total_t),
        "clip_attribute_accuracy": hits["clip"][0] / max(1, hits["clip"][1]),
        "dancer_attribute_accuracy": hits["dancer"][0] / max(1, hits["dancer"][1]),
        "all_attributes_correct": exact / max(1, len(captions)),
        "frames": len(captions),
        "examples": captions[:3] + captions[-3:],
    }


def train_captioner(out: Path = DEFAULT_DIR, *, seed: int = 0, cfg: CaptionerTrainingConfig | None = None) -> dict:
    """Train the toy captioner and write it (both formats) to ``out``; return the manifest."""
    from transformers import BlipForConditionalGeneration, BlipImageProcessorPil

    from contracts.digests import sha256_file
    from models.blip_convert import export_lavis_checkpoint
    from models.captioner import TransformersCaptioner, load_blip_tokenizer
    from models.captioner_config import CaptionerConfig, GenerationConfig

    cfg = cfg or CaptionerTrainingConfig(seed=seed)
    t0 = time.monotonic()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    out = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=".captioner-", dir=out.parent if out.parent.exists() else None))
    try:
        vocab = write_vocab(tmp / "vocab.txt")
        config = blip_config(len(vocab) + 2, size=cfg.size)
        tokenizer = load_blip_tokenizer(tmp / "vocab.txt", vocab_size=config.text_config.vocab_size)
        bos = config.text_config.bos_token_id
        prompt_len = len(tokenizer(PROMPT)["input_ids"]) - 1  # [DEC] + prompt words, without [SEP]
        processor = BlipImageProcessorPil(size={"height": cfg.size, "width": cfg.size})
        model = BlipForConditionalGeneration(config)
        t = time.monotonic()
        frames, captions, _ = render_frames(
            cfg.seed, 10, cfg.train_clips, cfg.train_dancers, cfg.frames_per_clip, cfg.size
        )
        val_frames, _, val_truths = render_frames(cfg.seed, 11, cfg.val_clips, cfg.val_dancers, 1, cfg.size)
        log.info("rendered %d training frames in %.1f s", len(frames), time.monotonic() - t)
        from PIL import Image

        pixels = processor(images=[Image.fromarray(f) for f in frames], return_tensors="pt")["pixel_values"]
        ids_all, labels_all = _targets(tokenizer, captions, bos, prompt_len)
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embeddings" not in n]
        no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embeddings" not in n)]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
        )
        rng = np.random.default_rng([cfg.seed, 12])
        model.train()
        t = time.monotonic()
        losses = []
        for step in range(cfg.steps):
            idx = torch.as_tensor(rng.choice(len(frames), size=cfg.batch_size, replace=False))
            lr = warmup_cosine_lr(step, cfg.steps, cfg.warmup, cfg.lr, peak_first=True)
            for group in opt.param_groups:
                group["lr"] = lr
            ids, labels = ids_all[idx], labels_all[idx]
            keep = int((ids != config.text_config.pad_token_id).sum(1).max())
            loss = model(pixel_values=pixels[idx], input_ids=ids[:, :keep], labels=labels[:, :keep]).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            if step % 100 == 0 or step == cfg.steps - 1:
                rate = (step + 1) * cfg.batch_size / (time.monotonic() - t)
                log.info("step %d/%d loss %.4f lr %.2e %.0f frames/s", step, cfg.steps, loss, lr, rate)
        train_s = time.monotonic() - t
        model.eval()
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        export_lavis_checkpoint(tmp, tmp / LAVIS_CHECKPOINT)
        greedy = CaptionerConfig(weights=str(tmp), generation=GenerationConfig(num_beams=1, min_new_tokens=0))
        validation = evaluate(TransformersCaptioner(greedy), val_frames, val_truths)
        beam = CaptionerConfig(weights=str(tmp), generation=GenerationConfig())
        validation_beam = evaluate(TransformersCaptioner(beam), val_frames, val_truths)
        log.info(
            "validation attribute accuracy: greedy %.3f, beam-3 %.3f",
            validation["attribute_accuracy"],
            validation_beam["attribute_accuracy"],
        )
        manifest = {
            "part": "captioner",
            "training": asdict(cfg),
            "final_loss": float(np.mean(losses[-50:])),
            "train_s": round(train_s, 1),
            "total_s": round(time.monotonic() - t0, 1),
            "validation_greedy": validation,
            "validation_beam3_min5": validation_beam,
            "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": cfg.threads},
            "files": {
                p.relative_to(tmp).as_posix(): sha256_file(p)[:16]
                for p in sorted(tmp.rglob("*"))
                if p.is_file() and p.name != "manifest.json"
            },
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
