"""Scenes: sampling, captions that parse back, mismatched captions, deterministic and truthful rendering."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from toyworld.scenes import (
    BACKGROUND_LEVEL,
    BACKGROUNDS,
    COLOUR_RGB,
    POSITION_XY,
    ObjectSpec,
    SceneSpec,
    caption_for,
    mismatched_caption,
    parse_caption,
    render_scene,
    sample_scene,
    scene_from_dict,
)


def scenes(seed: int, n: int) -> list[SceneSpec]:
    rng = np.random.default_rng(seed)
    return [sample_scene(rng) for _ in range(n)]


def test_sampled_scenes_have_one_or_two_objects_at_distinct_positions():
    counts = set()
    for scene in scenes(0, 300):
        counts.add(len(scene.objects))
        assert len({obj.position for obj in scene.objects}) == len(scene.objects)
    assert counts == {1, 2}


def test_sampling_is_deterministic_for_a_seed():
    assert scenes(7, 50) == scenes(7, 50)
    assert scenes(7, 50) != scenes(8, 50)


def test_captions_follow_the_template():
    one = SceneSpec((ObjectSpec("circle", "red", "large", "left"),), "white", 1)
    two = SceneSpec(
        (ObjectSpec("circle", "red", "large", "left"), ObjectSpec("square", "blue", "small", "top")), "black", 1
    )
    assert caption_for(one) == "a large red circle on the left on a white background"
    assert caption_for(two) == "a large red circle on the left and a small blue square at the top on a black background"


def test_captions_parse_back_to_the_scene():
    for scene in scenes(1, 300):
        objects, background = parse_caption(caption_for(scene))
        assert objects == scene.objects and background == scene.background


def test_parse_caption_rejects_text_outside_the_template():
    with pytest.raises(ValueError, match="does not follow the template"):
        parse_caption("a photo of a cat")


def test_mismatched_captions_differ_in_exactly_one_colour_or_shape_word():
    rng = np.random.default_rng(2)
    changed_attributes = set()
    for scene in scenes(2, 300):
        wrong = mismatched_caption(scene, rng)
        assert wrong != caption_for(scene)
        objects, background = parse_caption(wrong)
        assert background == scene.background
        diffs = [
            (field.name, a, b)
            for a, b in zip(scene.objects, objects, strict=True)
            for field in dataclasses.fields(ObjectSpec)
            if getattr(a, field.name) != getattr(b, field.name)
        ]
        assert len(diffs) == 1 and diffs[0][0] in ("colour", "shape")
        changed_attributes.add(diffs[0][0])
    assert changed_attributes == {"colour", "shape"}


def test_scene_dict_round_trip():
    for scene in scenes(3, 20):
        assert scene_from_dict(scene.to_dict()) == scene


def test_invalid_attributes_raise_with_the_choices():
    with pytest.raises(ValueError, match="choose one of"):
        ObjectSpec("hexagon", "red", "large", "left")
    with pytest.raises(ValueError, match="choose one of"):
        SceneSpec((ObjectSpec("circle", "red", "large", "left"),), "pink", 0)
    with pytest.raises(ValueError, match="own position"):
        SceneSpec(
            (ObjectSpec("circle", "red", "large", "left"), ObjectSpec("square", "red", "small", "left")), "gray", 0
        )


def test_render_is_a_pure_function_of_the_scene():
    scene = scenes(4, 1)[0]
    a, b = render_scene(scene), render_scene(scene)
    assert a.mode == "RGB" and a.size == (64, 64)
    assert a.tobytes() == b.tobytes()
    other = dataclasses.replace(scene, jitter_seed=scene.jitter_seed + 1)
    assert render_scene(other).tobytes() != a.tobytes()
    assert render_scene(scene, 96).size == (96, 96)


def test_background_names_and_object_colours_stay_true():
    for background in BACKGROUNDS:
        for colour, rgb in COLOUR_RGB.items():
            for seed in range(3):
                scene = SceneSpec((ObjectSpec("circle", colour, "large", "center"),), background, seed)
                pixels = np.asarray(render_scene(scene), dtype=np.float64)
                corner = pixels[:6, :6].reshape(-1, 3).mean(axis=0)
                assert abs(corner.mean() - BACKGROUND_LEVEL[background]) <= 26
                # the object sits within 0.07 of the centre; a 3x3 patch there is inside any large circle
                cx = cy = int(POSITION_XY["center"][0] * 64)
                centre = pixels[cy - 1 : cy + 2, cx - 1 : cx + 2].reshape(-1, 3).mean(axis=0)
                nearest = min(COLOUR_RGB, key=lambda c: np.abs(np.asarray(COLOUR_RGB[c]) - centre).sum())
                assert nearest == colour, (background, colour, centre, rgb)
