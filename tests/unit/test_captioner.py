"""The transformers BLIP captioner on the committed toy captioner, and the toy caption scoring."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from models.captioner import TransformersCaptioner, build_captioner, load_blip_tokenizer, strip_prompt
from pipelines.config import load_config
from toyworld.captioner import (
    attribute_hits,
    caption_attributes,
    render_frames,
    truth_for_clip,
    truth_for_dancer,
)


@pytest.fixture(scope="module")
def toy_cfg():
    return load_config("toy").captioner


@pytest.fixture(scope="module")
def captioner(toy_cfg):
    return TransformersCaptioner(toy_cfg)


def test_the_toy_captioner_names_colour_shape_and_background_of_unseen_frames(captioner):
    frames, _, truths = render_frames(31337, 11, 6, 6, 1, 64)
    captions = captioner.generate(list(frames))
    hits = [attribute_hits(c, t) for c, t in zip(captions, truths, strict=True)]
    assert sum(h[0] for h in hits) / sum(h[1] for h in hits) >= 0.85, captions
    assert all(not c.startswith("a picture of") for c in captions)


def test_model_id_names_the_weights_digest(captioner):
    assert captioner.model_id.startswith("alcm-toy-blip@sha256:") and len(captioner.model_id.split(":")[1]) == 16


def test_missing_weights_directory_names_the_config_key(toy_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="captioner.weights"):
        build_captioner(dataclasses.replace(toy_cfg, weights=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match="captioner.weights is null"):
        build_captioner(dataclasses.replace(toy_cfg, weights=None))


def test_a_vocabulary_that_does_not_fit_the_model_is_refused(toy_cfg, tmp_path):
    vocab = tmp_path / "vocab.txt"
    shutil.copy(f"{toy_cfg.weights}/vocab.txt", vocab)
    vocab.write_text(vocab.read_text() + "extra\n")
    with pytest.raises(ValueError, match="does not belong to these weights"):
        load_blip_tokenizer(vocab, vocab_size=37)


def test_the_prompt_is_stripped_from_generated_text():
    assert strip_prompt("a picture of  a red circle", "a picture of ") == "a red circle"
    assert strip_prompt("A Picture of a dog", "a picture of ") == "a dog"
    assert strip_prompt("two cats", "a picture of ") == "two cats"


def test_caption_attributes_read_colours_subject_motion_and_background():
    got = caption_attributes("a person in a red shirt and blue pants dancing on a gray background")
    assert got == {"colours": ["red", "blue"], "subject": "person", "motion": "dancing", "background": "gray"}
    assert caption_attributes("a red circle on a black background")["colours"] == ["red"]


def test_attribute_hits_count_each_wrong_or_missing_word():
    truth = truth_for_dancer("red", "blue", "gray")
    assert attribute_hits("a person in a red shirt and blue pants dancing on a gray background", truth) == (5, 5)
    assert attribute_hits("a person in a red shirt and green pants dancing on a gray background", truth) == (4, 5)
    assert attribute_hits("a red circle on a white background", truth) == (0, 5)
    assert attribute_hits("a red square on a black background", truth_for_clip("red", "circle", "black")) == (2, 3)


def test_rendered_frames_are_reproducible():
    a, ca, _ = render_frames(5, 11, 2, 2, 1, 64)
    b, cb, _ = render_frames(5, 11, 2, 2, 1, 64)
    assert np.array_equal(a, b) and ca == cb and a.shape == (4, 64, 64, 3)
