"""One clean frame of each of many toy clips, with the clip's true video caption: the scorers' CLIP trains and
validates on them (video curation scores a clip's middle frame against its caption), and the image and style
teachers train on them too."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from toyworld.scenes import BACKGROUNDS, COLOURS, SHAPES
from toyworld.scorer_config import TOY_IMAGE_SIZE
from toyworld.videos import DIRECTIONS, render_clip, video_caption

VIDEO_TRAIN_STREAM = 20
"""Clip i of the CLIP training pool is rendered from ``default_rng([seed, 20, i])``."""
VIDEO_VAL_STREAM = 21
"""Clip i of the video validation set is rendered from ``default_rng([seed, 21, i])``."""
VIDEO_FRAMES = 16
"""Frames per rendered clip (the toy world's default); training and validation use one random frame of each."""


@dataclass(frozen=True)
class ClipSpec:
    """What a toy clip shows (as ``toyworld.videos`` draws it): one shape of one colour in motion on a background."""

    shape: str
    colour: str
    direction: str
    background: str

    @property
    def caption(self) -> str:
        return video_caption(self.shape, self.colour, self.direction, self.background)


@dataclass
class VideoFramePool:
    """One clean frame per rendered clip, with the clip and its true video caption."""

    images: np.ndarray
    """uint8 (N, 64, 64, 3)."""
    clips: list[ClipSpec]
    captions: list[str]

    def __len__(self) -> int:
        return len(self.captions)


def sample_clip_frame(rng: np.random.Generator, *, frames: int = VIDEO_FRAMES) -> tuple[np.ndarray, ClipSpec]:
    """Draw a clip as the toy world does (shape, colour, direction, background, then `render_clip`) and return one
    random frame of it with the clip."""
    clip = ClipSpec(
        shape=SHAPES[int(rng.integers(len(SHAPES)))],
        colour=COLOURS[int(rng.integers(len(COLOURS)))],
        direction=DIRECTIONS[int(rng.integers(len(DIRECTIONS)))],
        background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))],
    )
    video = render_clip(
        clip.shape, clip.colour, clip.direction, clip.background, rng, frames=frames, size=TOY_IMAGE_SIZE
    )
    return video[int(rng.integers(frames))], clip


def video_mismatched_caption(clip: ClipSpec, rng: np.random.Generator, *, shape_only: bool = False) -> str:
    """The clip's caption with its colour or its shape word (50/50; only the shape if ``shape_only``) replaced by
    another word of the vocabulary, as the toy world's ``mismatched`` clips. Never the direction: one frame cannot
    show where a shape is heading, so a direction-swapped caption is not a wrong caption for a frame."""
    if shape_only or rng.uniform() < 0.5:
        others = [shape for shape in SHAPES if shape != clip.shape]
        wrong = dataclasses.replace(clip, shape=others[int(rng.integers(len(others)))])
    else:
        others = [colour for colour in COLOURS if colour != clip.colour]
        wrong = dataclasses.replace(clip, colour=others[int(rng.integers(len(others)))])
    return wrong.caption


def make_video_pool(seed: int, n_clips: int, *, stream: int = VIDEO_TRAIN_STREAM) -> VideoFramePool:
    """One random clean frame of each of ``n_clips`` clips, clip i from ``default_rng([seed, stream, i])``."""
    images, clips = [], []
    for i in range(n_clips):
        frame, clip = sample_clip_frame(np.random.default_rng([seed, stream, i]))
        images.append(frame)
        clips.append(clip)
    return VideoFramePool(np.stack(images), clips, [clip.caption for clip in clips])


def make_video_validation_set(seed: int, n_clips: int) -> dict[str, Any]:
    """Fresh clips (stream ``VIDEO_VAL_STREAM``): one clean frame each, its true caption and a colour- or
    shape-swapped one (``swapped`` says which word changed)."""
    frames, clips, mismatched, swapped = [], [], [], []
    for i in range(n_clips):
        rng = np.random.default_rng([seed, VIDEO_VAL_STREAM, i])
        frame, clip = sample_clip_frame(rng)
        wrong = video_mismatched_caption(clip, rng)
        frames.append(frame)
        clips.append(clip)
        mismatched.append(wrong)
        swapped.append("shape" if clip.shape not in wrong.split() else "colour")
    return {
        "frames": frames,
        "clips": clips,
        "captions": [clip.caption for clip in clips],
        "mismatched": mismatched,
        "swapped": swapped,
    }
