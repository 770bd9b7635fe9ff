"""What the toy image teacher trains and validates on: clean scenes with their captions, one frame of each of a set
of clean moving-shape clips with their video captions, and dancer frames with their frame captions (so the spatial
base that stage 3's control and image-to-video adapters train over can draw the dancers); the held-out one-object
validation prompts and their ground-truth renders."""

from __future__ import annotations

import numpy as np

from toyworld.captioner import dancer_frame_caption
from toyworld.clip_frames import make_video_pool
from toyworld.dancers import draw_dancer, figure_masks
from toyworld.scenes import (
    COLOURS,
    POSITIONS,
    SHAPES,
    ObjectSpec,
    SceneSpec,
    caption_for,
    render_scene,
    sample_scene,
)

IMAGE_SIZE = 64
TRAIN_STREAM = 30
VAL_STREAM = 31
CLIP_STREAM = 32
DANCER_STREAM = 34
"""Dancer i of the teacher's training set is drawn from ``default_rng([seed, 34, i])``: never a sequence of a toy
world (those use stream 3), so the adapters' training and evaluation dancers are not the teacher's."""
DANCER_VAL_STREAM = 35
"""Held-out dancers of the teacher's validation: ``default_rng([seed, 35, i])``."""


def dancer_frames(seed: int, n: int, *, stream: int = DANCER_STREAM) -> tuple[np.ndarray, list[dict[str, str]]]:
    """One random frame (uint8 64×64×3) of each of ``n`` fresh dancer sequences, drawn as the toy world draws them
    (pattern, shirt ≠ pants, background, speed, phase), with its prompt: the frame caption ("a person in a red shirt
    and blue pants dancing on a gray background", as the recaptioning job writes), shirt, pants and background."""
    images, prompts = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, stream, i])
        d = draw_dancer(rng, frames=16, size=IMAGE_SIZE)
        frames, shirt, pants, background = d["frames"], d["shirt"], d["pants"], d["background"]
        images.append(frames[int(rng.integers(len(frames)))])
        caption = dancer_frame_caption(shirt, pants, background)
        prompts.append({"caption": caption, "shirt": shirt, "pants": pants, "background": background})
    return np.stack(images) if images else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8), prompts


def dancer_fidelity(images: list[np.ndarray], prompts: list[dict[str, str]]) -> dict[str, float]:
    """How often a sample of a dancer prompt shows the prompted dancer, read by colour
    (:func:`toyworld.dancers.figure_masks`): the shirt's and the pants' colours each found (at least 4 pixels), the
    figure's height (rows of its silhouette) as a fraction of the frame, and ``drew_dancer``: both colours found
    in a figure at least half the frame tall (a toy dancer spans 65-92% of it)."""
    shirt, pants, height, dancer = [], [], [], []
    for image, p in zip(images, prompts, strict=True):
        s_mask, p_mask, figure = figure_masks(image, p["shirt"], p["pants"], p["background"])
        rows = np.nonzero(figure.any(axis=1))[0]
        tall = (rows[-1] - rows[0] + 1) / image.shape[0] if len(rows) else 0.0
        shirt.append(s_mask.sum() >= 4)
        pants.append(p_mask.sum() >= 4)
        height.append(tall)
        dancer.append(shirt[-1] and pants[-1] and tall >= 0.5)
    return {"shirt_found": float(np.mean(shirt)), "pants_found": float(np.mean(pants)),
            "figure_height": float(np.mean(height)), "drew_dancer": float(np.mean(dancer))}  # fmt: skip


def render_training_set(
    seed: int, scenes: int, clips: int, dancers: int
) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """Clean scenes (uint8 N×64×64×3) with their captions; and the frames drawn in a fixed share of every batch:
    clip frames with their video captions followed by dancer frames with theirs."""
    rng = np.random.default_rng([seed, TRAIN_STREAM])
    specs = [sample_scene(rng) for _ in range(scenes)]
    images = np.stack([np.asarray(render_scene(s, IMAGE_SIZE)) for s in specs])
    pool = make_video_pool(seed, clips, stream=CLIP_STREAM)
    dancer_images, dancer_prompts = dancer_frames(seed, dancers)
    frames = np.concatenate([pool.images, dancer_images])
    return images, [caption_for(s) for s in specs], frames, list(pool.captions) + [p["caption"] for p in dancer_prompts]


def validation_prompts(seed: int, n: int) -> list[dict[str, str]]:
    """Held-out one-object prompts (``[seed, 31]``), balanced over colours and shapes: caption and ground truth."""
    rng = np.random.default_rng([seed, VAL_STREAM])
    out = []
    for i in range(n):
        obj = ObjectSpec(
            shape=SHAPES[i % len(SHAPES)],
            colour=COLOURS[(i // len(SHAPES)) % len(COLOURS)],
            size=("small", "large")[int(rng.integers(2))],
            position=POSITIONS[int(rng.integers(len(POSITIONS)))],
        )
        background = ("white", "gray", "black")[int(rng.integers(3))]
        scene = SceneSpec(objects=(obj,), background=background, jitter_seed=int(rng.integers(2**31)))
        out.append(
            {
                "caption": caption_for(scene),
                "shape": obj.shape,
                "colour": obj.colour,
                "position": obj.position,
                "background": background,
            }
        )
    return out


def render_prompt(prompt: dict[str, str], jitter_seed: int) -> np.ndarray:
    """A ground-truth render (uint8 64×64×3) of a :func:`validation_prompts` prompt's scene."""
    size = "large" if " large " in f" {prompt['caption']} " else "small"
    obj = ObjectSpec(prompt["shape"], prompt["colour"], size, prompt["position"])
    scene = SceneSpec(objects=(obj,), background=prompt["background"], jitter_seed=int(jitter_seed))
    return np.asarray(render_scene(scene, IMAGE_SIZE))
