"""The toy image teacher: a tiny Stable-Diffusion-like text-to-image model trained on the toy world's images.

Stage 1 distils an LCM-LoRA from a frozen Stable Diffusion teacher. On the toy profile that teacher is this model,
trained on 2 CPU cores and committed with the zoo as a diffusers ``StableDiffusionPipeline`` directory
(``toyworld/zoo/image_teacher/``: ``vae/``, ``text_encoder/``, ``tokenizer/``, ``unet/``, ``scheduler/``,
``model_index.json``, and a ``manifest.json`` with how it was trained and how well it draws). The same code paths
load it and SD v1-5 (:func:`models.factory.build_teacher`).

The parts:

- **Tokenizer**: SD's ``CLIPTokenizer`` (49,408 BPE tokens, context 77), written offline from the BPE vocabulary
  that open_clip ships (:func:`write_clip_tokenizer`); its merges build every word from characters, which
  transformers 5 needs for whole-word tokens.
- **VAE**: ``AutoencoderKL`` with (16, 32, 64) channels, two downsamplings (64×64×3 → 4×16×16 latents), no
  mid-block attention; trained on MSE with a small KL term; ``scaling_factor`` 1/std of the training latents (SD's
  0.18215 belongs to SD's VAE). A continued teacher may fine-tune its parent's (:mod:`toyworld.vae_tune`).
- **Text encoder**: a 2-layer ``CLIPTextModel`` of width 64 over the full vocabulary, trained jointly with the UNet
  (a frozen random encoder carries colour words but not much else).
- **UNet**: ``UNet2DConditionModel`` (32, 64, 128) channels, one layer per block, cross-attention at 8×8 and 4×4
  (attention at 16×16 tripled the step time for no gain in what the model learns in budget), ε-prediction on SD
  v1-5's schedule (scaled_linear 0.00085 → 0.012, 1000 steps), 10% of captions dropped to the empty prompt (the
  unconditional prompt of classifier-free guidance), weights saved as an EMA.
- **Scheduler**: ``DDIMScheduler`` with SD v1-5's betas, ``set_alpha_to_one=False``, ``steps_offset=1``.

Data: clean renders of ``toyworld.scenes.sample_scene`` (what image curation keeps of a toy world: its kept rows
are clean scenes with their true captions) from the stream ``[seed, 30]``, plus one frame of each of a set of clean
moving-shape clips with their video captions (``[seed, 32, i]``, 20% of every batch), so the spatial base that
stage 2 inflates already draws the video set's frames. Validation uses fresh one-object scenes and clips
(``[seed, 31]``), never trained on.

Validation, on the weights as saved: 50-step DDIM samples with CFG for held-out prompts, read back from pixels
(colour: nearest named colour of the median foreground pixel; position: nearest named position of the foreground
centroid) and by the toy CLIP (does the sample score higher with its prompt than with its colour word, or shape word,
swapped for every other), with the VAE's reconstruction MSE and colour preservation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from contracts.digests import sha256_file
from toyworld.image_teacher_data import (
    DANCER_VAL_STREAM,
    IMAGE_SIZE,
    VAL_STREAM,
    dancer_fidelity,
    dancer_frames,
    render_prompt,
    render_training_set,
    validation_prompts,
)
from toyworld.scenes import BACKGROUND_LEVEL, COLOUR_RGB, COLOURS, POSITION_XY, POSITIONS, SHAPES
from toyworld.scorer_config import toy_scorers_config
from toyworld.vae_tune import tune_vae
from toyworld.zoo_common import REPO_ROOT, publish_part, warmup_cosine_lr

logger = logging.getLogger(__name__)

DEFAULT_DIR = Path(__file__).resolve().parent / "zoo" / "image_teacher"
CODE = (
    "toyworld/image_teacher.py", "toyworld/image_teacher_data.py", "toyworld/scenes.py", "toyworld/videos.py",
    "toyworld/vae_tune.py",
)  # fmt: skip
SD15_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}
"""SD v1-5's training noise schedule; the toy teacher uses the same one, so the consistency math sees SD's ᾱ_t."""


@dataclass(frozen=True)
class ImageTeacherTrainingConfig:
    """How the toy image teacher is trained (defaults: the committed teacher)."""

    seed: int = 0
    threads: int = 2
    train_scenes: int = 24000
    train_clips: int = 6000
    train_dancers: int = 0
    """Dancer frames (one per fresh sequence) drawn in the clip-frame share of each batch, with the clip frames."""
    clip_fraction: float = 0.2
    init_from: str | None = None
    """A teacher directory to continue from: its VAE, tokenizer and scaling are kept (the VAE fine-tuned only for
    ``vae_tune_steps``) and its UNet and text encoder trained further for ``unet_steps``; None trains from scratch."""
    vae_tune_steps: int = 0
    """With ``init_from``: :func:`toyworld.vae_tune.tune_vae` steps on the parent's VAE (lr ``vae_tune_lr``, latent
    anchor ``vae_tune_anchor``, batch ``vae_batch``, KL ``vae_kl_weight``) before the UNet continues."""
    vae_tune_lr: float = 3e-4
    vae_tune_anchor: float = 1.0
    vae_steps: int = 1500
    vae_batch: int = 24
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    unet_steps: int = 5000
    unet_batch: int = 48
    unet_lr: float = 5e-4
    text_lr: float = 5e-4
    warmup: int = 200
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    val_prompts: int = 48
    val_steps: int = 50
    val_guidance: float = 5.0

    def __post_init__(self) -> None:
        for name in ("train_scenes", "vae_steps", "vae_batch", "unet_steps", "unet_batch", "val_prompts", "val_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 1")
        if not 0.0 <= self.clip_fraction < 1.0 or not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError("clip_fraction and caption_dropout must be in [0, 1)")
        if self.train_dancers < 0 or self.vae_tune_steps < 0:
            raise ValueError(f"train_dancers={self.train_dancers!r}, vae_tune_steps={self.vae_tune_steps!r}: need ≥ 0")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay={self.ema_decay!r}: must be in (0, 1)")


def write_clip_tokenizer(out_dir: Path) -> Any:
    """Write SD's CLIP tokenizer (49,408 tokens) to ``out_dir`` from open_clip's bundled BPE vocabulary, offline."""
    import open_clip.tokenizer
    from transformers import CLIPTokenizer

    bpe = open_clip.tokenizer.SimpleTokenizer()
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {names.get(token, token): i for token, i in bpe.encoder.items()}
    merges = [" ".join(pair) for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda item: item[1])]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(str(out_dir / "vocab.json"), str(out_dir / "merges.txt"), model_max_length=77)
    if len(tokenizer) != 49408 or (tokenizer.bos_token_id, tokenizer.eos_token_id) != (49406, 49407):
        raise RuntimeError(f"the tokenizer built from open_clip's vocabulary has {len(tokenizer)} tokens, not 49408")
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def build_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
        mid_block_add_attention=False,
    )


def build_text_encoder(tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=256,
            projection_dim=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def build_unet() -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=4,
        norm_num_groups=8,
    )


def build_scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SD15_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 N×H×W×3 → float N×3×H×W in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def from_pixels(x: torch.Tensor) -> np.ndarray:
    """float N×3×H×W in [-1, 1] → uint8 N×H×W×3."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def read_object(image: np.ndarray, background: str) -> dict[str, Any]:
    """The drawn object's colour and position, read from pixels: foreground = pixels far from the named background
    level; colour = nearest named colour to the median foreground pixel; position = nearest named position to the
    foreground centroid. ``colour``/``position`` are None when nothing is drawn (fewer than 12 foreground pixels)."""
    img = image.astype(np.float64)
    level = BACKGROUND_LEVEL[background]
    distance = np.abs(img - level).max(axis=-1)
    mask = distance > 60.0
    if mask.sum() < 12:
        return {"colour": None, "position": None, "foreground": int(mask.sum())}
    median = np.median(img[mask], axis=0)
    colour = min(COLOURS, key=lambda c: float(np.sum((np.asarray(COLOUR_RGB[c]) - median) ** 2)))
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean() / image.shape[1], ys.mean() / image.shape[0]
    position = min(POSITIONS, key=lambda p: (POSITION_XY[p][0] - cx) ** 2 + (POSITION_XY[p][1] - cy) ** 2)
    return {"colour": colour, "position": position, "foreground": int(mask.sum())}


def swapped_captions(prompt: dict[str, str], attribute: str) -> list[str]:
    """The prompt's caption with its colour (or shape) word replaced by every other colour (or shape)."""
    words = COLOURS if attribute == "colour" else SHAPES
    true = prompt[attribute]
    return [prompt["caption"].replace(f" {true} ", f" {other} ", 1) for other in words if other != true]


def prompt_fidelity(images: list[np.ndarray], prompts: list[dict[str, str]], scorer: Any) -> dict[str, float]:
    """How often samples show what their prompts say: pixel colour/position accuracy, and toy-CLIP accuracy (the
    prompt scores above every colour-swapped / shape-swapped variant), plus the mean toy-CLIP score ×100."""
    read = [read_object(img, p["background"]) for img, p in zip(images, prompts, strict=True)]
    image_emb = scorer.image_embeddings(images)
    true_emb = scorer.text_embeddings([p["caption"] for p in prompts])
    true_sim = np.sum(image_emb * true_emb, axis=1)
    wins = {}
    for attribute in ("colour", "shape"):
        ok = []
        for i, p in enumerate(prompts):
            others = scorer.text_embeddings(swapped_captions(p, attribute))
            ok.append(bool(np.all(others @ image_emb[i] < true_sim[i])))
        wins[attribute] = float(np.mean(ok))
    return {
        "pixel_colour_accuracy": float(
            np.mean([r["colour"] == p["colour"] for r, p in zip(read, prompts, strict=True)])
        ),
        "pixel_position_accuracy": float(
            np.mean([r["position"] == p["position"] for r, p in zip(read, prompts, strict=True)])
        ),
        "drew_something": float(np.mean([r["colour"] is not None for r in read])),
        "clip_colour_accuracy": wins["colour"],
        "clip_shape_accuracy": wins["shape"],
        "clip_score": float(100.0 * true_sim.mean()),
    }


def toy_clip_scorer() -> Any:
    from models.scorers import ClipScorer

    return ClipScorer(
        toy_scorers_config(
            str(REPO_ROOT / "toyworld/zoo/scorers"),
            model_config_dir=str(REPO_ROOT / "models/open_clip_configs"),
            torch_threads=torch.get_num_threads(),
            batch_size=128,
        )
    )


# ------------------------------------------------------------------------------------------------------- training


def train_vae(images: np.ndarray, cfg: ImageTeacherTrainingConfig, rng: np.random.Generator, log_every: int) -> Any:
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    t = time.monotonic()
    for step in range(cfg.vae_steps):
        for group in opt.param_groups:
            group["lr"] = warmup_cosine_lr(step, cfg.vae_steps, cfg.warmup, cfg.vae_lr, pi_first=True)
        x = to_pixels(images[rng.integers(len(images), size=cfg.vae_batch)])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        mse = F.mse_loss(recon, x)
        loss = mse + cfg.vae_kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % log_every == 0 or step == cfg.vae_steps - 1:
            pace = (time.monotonic() - t) / (step + 1)
            logger.info("vae step %d/%d mse %.4f (%.2f s/step)", step + 1, cfg.vae_steps, mse.item(), pace)
    vae.eval().requires_grad_(False)
    return vae


@torch.no_grad()
def encode_latents(vae: Any, images: np.ndarray, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image (unscaled)."""
    means, stds = [], []
    for s in range(0, len(images), batch):
        dist = vae.encode(to_pixels(images[s : s + batch])).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def train_unet(
    latents: tuple[torch.Tensor, torch.Tensor],
    ids: torch.Tensor,
    empty_ids: torch.Tensor,
    clip_latents: tuple[torch.Tensor, torch.Tensor],
    clip_ids: torch.Tensor,
    tokenizer: Any,
    scaling: float,
    cfg: ImageTeacherTrainingConfig,
    rng: np.random.Generator,
    log_every: int,
    start: tuple[Any, Any] | None = None,
) -> tuple[Any, Any]:
    """Train the UNet and text encoder jointly (ε-prediction, caption dropout), fresh or from ``start`` (a UNet and
    text encoder); return their EMA copies."""
    import copy

    from models.factory import alphas_cumprod_from

    unet, text_encoder = start if start is not None else (build_unet(), build_text_encoder(tokenizer))
    unet.train().requires_grad_(True)
    text_encoder.train().requires_grad_(True)
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    opt = torch.optim.AdamW(
        [
            {"params": list(unet.parameters()), "base_lr": cfg.unet_lr},
            {"params": list(text_encoder.parameters()), "base_lr": cfg.text_lr},
        ],
        lr=cfg.unet_lr,
        weight_decay=0.01,
    )
    acp = alphas_cumprod_from(SD15_SCHEDULE)
    n_clip = int(round(cfg.unet_batch * cfg.clip_fraction)) if len(clip_ids) else 0
    n_img = cfg.unet_batch - n_clip
    t0 = time.monotonic()
    for step in range(cfg.unet_steps):
        for group in opt.param_groups:
            group["lr"] = warmup_cosine_lr(step, cfg.unet_steps, cfg.warmup, group["base_lr"], pi_first=True)
        i = torch.from_numpy(rng.integers(len(ids), size=n_img))
        j = torch.from_numpy(rng.integers(len(clip_ids), size=n_clip))
        mean = torch.cat([latents[0][i], clip_latents[0][j]])
        std = torch.cat([latents[1][i], clip_latents[1][j]])
        tokens = torch.cat([ids[i], clip_ids[j]])
        drop = torch.from_numpy(rng.uniform(size=len(tokens)) < cfg.caption_dropout)
        tokens = torch.where(drop[:, None], empty_ids.expand_as(tokens), tokens)
        x0 = (mean + std * torch.randn_like(std)) * scaling
        noise = torch.randn_like(x0)
        t = torch.from_numpy(rng.integers(0, len(acp), size=len(x0)))
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        states = text_encoder(tokens).last_hidden_state
        loss = F.mse_loss(unet(xt, t, states).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(text_encoder.parameters()), 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for model, ema in ((unet, ema_unet), (text_encoder, ema_text)):
                for p, e in zip(model.parameters(), ema.parameters(), strict=True):
                    e.lerp_(p, 1 - decay)
        if step % log_every == 0 or step == cfg.unet_steps - 1:
            elapsed = time.monotonic() - t0
            logger.info(
                "unet step %d/%d loss %.4f (%.2f s/step, %.0f min left)",
                step + 1,
                cfg.unet_steps,
                loss.item(),
                elapsed / (step + 1),
                elapsed / (step + 1) * (cfg.unet_steps - step - 1) / 60,
            )
    return ema_unet.eval(), ema_text.eval()


@torch.no_grad()
def sample_prompts(pipe: Any, prompts: list[dict[str, str]], *, steps: int, guidance: float, seed: int) -> list:
    """Teacher samples for ``prompts`` (one per prompt, generator seeded per prompt index), uint8 arrays."""
    out = []
    for i, p in enumerate(prompts):
        g = torch.Generator().manual_seed(seed * 100003 + i)
        image = pipe(p["caption"], num_inference_steps=steps, guidance_scale=guidance, generator=g, output_type="np",
                     height=IMAGE_SIZE, width=IMAGE_SIZE).images[0]  # fmt: skip
        out.append((image * 255).round().astype(np.uint8))
    return out


def validate(teacher_dir: Path, cfg: ImageTeacherTrainingConfig, val_images: np.ndarray, val_prompts: list) -> dict:
    """Validate the SAVED teacher (see the module docstring)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(teacher_dir), local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    vae: AutoencoderKL = pipe.vae
    with torch.no_grad():
        x = to_pixels(val_images)
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample
    recon_u8 = from_pixels(recon)
    rec_mse = float(F.mse_loss(recon.clamp(-1, 1), x))
    scorer = toy_clip_scorer()
    samples = sample_prompts(pipe, val_prompts, steps=cfg.val_steps, guidance=cfg.val_guidance, seed=cfg.seed)
    unguided = sample_prompts(pipe, val_prompts, steps=cfg.val_steps, guidance=1.0, seed=cfg.seed)
    truth_colour = [read_object(img, p["background"])["colour"] for img, p in zip(val_images, val_prompts, strict=True)]
    recon_colour = [read_object(img, p["background"])["colour"] for img, p in zip(recon_u8, val_prompts, strict=True)]
    return {
        "vae": {
            "reconstruction_mse": round(rec_mse, 5),
            "colour_preserved": float(np.mean([a == b for a, b in zip(truth_colour, recon_colour, strict=True)])),
        },
        f"ddim{cfg.val_steps}_cfg{cfg.val_guidance:g}": prompt_fidelity(samples, val_prompts, scorer),
        f"ddim{cfg.val_steps}_no_cfg": prompt_fidelity(unguided, val_prompts, scorer),
        f"dancers_ddim{cfg.val_steps}_cfg{cfg.val_guidance:g}": dancer_validation(pipe, cfg),
        "ground_truth_renders": prompt_fidelity(list(val_images), val_prompts, scorer),
    }


def dancer_validation(pipe: Any, cfg: ImageTeacherTrainingConfig) -> dict[str, float]:
    """Does the teacher draw the dancers the control adapter trains on: held-out dancer prompts (``[seed, 35]``)."""
    truth, prompts = dancer_frames(cfg.seed, cfg.val_prompts // 2, stream=DANCER_VAL_STREAM)
    samples = sample_prompts(pipe, prompts, steps=cfg.val_steps, guidance=cfg.val_guidance, seed=cfg.seed)
    return dancer_fidelity(samples, prompts) | {"ground_truth": dancer_fidelity(list(truth), prompts)}


def load_teacher_parts(teacher_dir: Path) -> tuple[Any, Any, tuple[Any, Any]]:
    """The tokenizer, frozen VAE, and (UNet, text encoder) of a saved teacher, to continue training from."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    load = {"local_files_only": True}
    if not (teacher_dir / "model_index.json").is_file():
        raise FileNotFoundError(f"init_from={str(teacher_dir)!r}: no teacher there (model_index.json missing)")
    tokenizer = CLIPTokenizer.from_pretrained(str(teacher_dir), subfolder="tokenizer", **load)
    vae = AutoencoderKL.from_pretrained(str(teacher_dir), subfolder="vae", **load).eval().requires_grad_(False)
    unet = UNet2DConditionModel.from_pretrained(str(teacher_dir), subfolder="unet", **load)
    text_encoder = CLIPTextModel.from_pretrained(str(teacher_dir), subfolder="text_encoder", **load)
    return tokenizer, vae, (unet, text_encoder)


def parent_record(teacher_dir: Path) -> dict:
    """Where a continued teacher started: the parent's path, manifest digest, training settings and metrics."""
    manifest = teacher_dir / "manifest.json"
    record: dict[str, Any] = {"path": str(teacher_dir)}
    try:
        record["path"] = teacher_dir.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        pass
    if manifest.is_file():
        parent = json.loads(manifest.read_text())
        record |= {
            "manifest_sha256": sha256_file(manifest),
            "training": parent.get("training"),
            "continued_from": parent.get("continued_from"),
            "metrics": parent.get("metrics"),
        }
    return record


def train_image_teacher(out_dir: Path = DEFAULT_DIR, *, seed: int = 0, log_every: int = 100, **settings: Any) -> dict:
    """Train the toy image teacher and write it (with ``manifest.json``) to ``out_dir``; returns the manifest.

    Written to a temporary folder next to ``out_dir``, validated there, and moved into place at the end, so a failed
    run leaves the previous teacher intact.
    """
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    cfg = ImageTeacherTrainingConfig(seed=seed, **settings)
    out_dir = Path(out_dir)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 33])
    wall: dict[str, float] = {}
    t_start = time.monotonic()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        t = time.monotonic()
        images, captions, clip_images, clip_captions = render_training_set(
            cfg.seed, cfg.train_scenes, cfg.train_clips, cfg.train_dancers
        )
        prompts = validation_prompts(seed, cfg.val_prompts)
        val_rng = np.random.default_rng([seed, VAL_STREAM, 1])
        val_images = np.stack([render_prompt(p, int(val_rng.integers(2**31))) for p in prompts])
        wall["render_s"] = time.monotonic() - t
        logger.info("rendered %d scenes and %d clip frames in %.0f s", len(images), len(clip_images), wall["render_s"])

        start, parent, vae_tuning = None, None, None
        if cfg.init_from is not None:
            parent = Path(cfg.init_from)
            tokenizer, vae, start = load_teacher_parts(parent)
            shutil.copytree(parent / "tokenizer", tmp / "tokenizer")  # as written (save_pretrained drops files)
            if cfg.vae_tune_steps:
                t = time.monotonic()
                vae, vae_tuning = tune_vae(vae, images, clip_images, steps=cfg.vae_tune_steps, lr=cfg.vae_tune_lr,
                                           anchor=cfg.vae_tune_anchor, batch=cfg.vae_batch, rng=rng,
                                           kl_weight=cfg.vae_kl_weight, log_every=log_every)  # fmt: skip
                wall["vae_tune_s"] = time.monotonic() - t
            latents, clip_latents = encode_latents(vae, images), encode_latents(vae, clip_images)
            logger.info("continuing from %s (its VAE and scaling_factor %.5f kept)", parent, vae.config.scaling_factor)
        else:
            tokenizer: CLIPTokenizer = write_clip_tokenizer(tmp / "tokenizer")
            t = time.monotonic()
            vae = train_vae(np.concatenate([images, clip_images]), cfg, rng, log_every)
            wall["vae_s"] = time.monotonic() - t
            latents = encode_latents(vae, images)
            clip_latents = encode_latents(vae, clip_images)
            scaling = float(1.0 / torch.cat([latents[0], clip_latents[0]]).std())
            vae.register_to_config(scaling_factor=round(scaling, 5))
            logger.info("latent scaling_factor %.5f", vae.config.scaling_factor)

        t = time.monotonic()
        ids, clip_ids = tokenize(tokenizer, captions), tokenize(tokenizer, clip_captions)
        empty_ids = tokenize(tokenizer, [""])
        unet, text_encoder = train_unet(
            latents, ids, empty_ids, clip_latents, clip_ids, tokenizer, vae.config.scaling_factor, cfg, rng, log_every,
            start,
        )  # fmt: skip
        wall["unet_s"] = time.monotonic() - t

        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=build_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        t = time.monotonic()
        metrics = validate(tmp, cfg, val_images, prompts)
        wall["validation_s"] = time.monotonic() - t
        wall["total_s"] = time.monotonic() - t_start
        files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*.safetensors"))}
        manifest = {
            "name": "toyworld-image-teacher",
            "description": "tiny SD-like text-to-image teacher (AutoencoderKL, CLIPTextModel, UNet2DConditionModel) "
            "for the toy profile's stage 1",
            "seed": seed,
            "training": dataclasses.asdict(cfg),
            "continued_from": None if parent is None else parent_record(parent),
            "vae_tuning": vae_tuning,
            "parameters": {
                "vae": sum(p.numel() for p in vae.parameters()),
                "text_encoder": sum(p.numel() for p in text_encoder.parameters()),
                "unet": sum(p.numel() for p in unet.parameters()),
            },
            "latent_scaling_factor": vae.config.scaling_factor,
            "wall_time_s": {k: round(v, 1) for k, v in wall.items()},
            "validation_prompts": prompts,
            "metrics": metrics,
            "files": files,
            "code": {rel: sha256_file(REPO_ROOT / rel) for rel in CODE},
            "environment": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "torch_threads": cfg.threads,
            },
        }
        publish_part(tmp, out_dir, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(previous_threads)
    logger.info("toy image teacher written to %s in %.0f s: %s", out_dir, wall["total_s"], json.dumps(metrics))
    return manifest
