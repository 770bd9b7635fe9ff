"""Everything keyed on what a job reads is keyed on exactly that: for every stage and every key of the whole config,
changing the key changes the stage's retrain key if and only if the stage's job receives it; the same for the
training stages' run names (resumable and preview settings aside) and their latent caches' keys (what the encode step
receives).

Each key of the profile is changed alone, to another value of its type (a number moved, a flag flipped, a string or
a list extended), without validating the result: what is under test is which keys the identities cover, not
whether the changed profile would load.
"""

from __future__ import annotations

import dataclasses
import functools
import typing

import pytest

from pipelines import adapt, distill_image, distill_video
from pipelines.config import Config, load_config, to_dict
from pipelines.latent_cache import cache_key
from pipelines.stage_job import PREVIEW_FIELDS, run_name
from pipelines.stages import STAGES, stage
from pipelines.train_config import RESUMABLE_FIELDS

INPUTS = {"raw": "sha256:0"}
DIGESTS = {"vae/w.safetensors": "a", "text_encoder/w.safetensors": "b", "unet/w.safetensors": "c"}


def leaves(data, path=()):
    """Every key of a config as a path of names (and list indices, through lists of sections)."""
    if isinstance(data, dict) and data:
        for name, value in data.items():
            yield from leaves(value, (*path, name))
    elif isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        for i, value in enumerate(data):
            yield from leaves(value, (*path, i))
    else:
        yield path


def changed(value):
    """Another value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, value[-1]] if value else ["x"]
    if isinstance(value, dict):
        return {"x": 1.0}
    if value is None:
        return 1
    raise TypeError(value)


def unchecked(cls, data):
    """``cls`` built from plain ``data`` without running any validation (nested sections too)."""
    obj = object.__new__(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, value = hints[f.name], data[f.name]
        if dataclasses.is_dataclass(tp):
            value = unchecked(tp, value)
        elif typing.get_origin(tp) is tuple:
            (item,) = typing.get_args(tp)[:1]
            value = tuple(unchecked(item, v) if dataclasses.is_dataclass(item) else v for v in value)
        object.__setattr__(obj, f.name, value)
    return obj


BASE = load_config("toy")


@functools.cache
def variants() -> dict[tuple, Config]:
    """Every key of the toy profile → the profile with that key alone changed."""
    base = to_dict(BASE)
    out = {}
    for path in leaves(base):
        data = to_dict(BASE)
        node = data
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = changed(node[path[-1]])
        out[path] = unchecked(Config, data)
    return out


def dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def test_every_key_of_the_profile_is_changed_and_the_change_reaches_the_config():
    assert len(variants()) > 250
    for path, cfg in variants().items():
        assert to_dict(cfg) != to_dict(BASE), dotted(path)


@pytest.mark.parametrize("s", STAGES, ids=lambda s: s.name)
def test_a_stage_key_changes_with_every_key_its_job_reads_and_with_no_other(s):
    base = s.key(BASE, INPUTS, "code")
    wrong = [dotted(p) for p, cfg in variants().items() if (s.key(cfg, INPUTS, "code") != base) != (p[0] in s.sections)]
    assert not wrong, f"{s.name}: the key misses a setting its job reads, or follows one it does not: {wrong}"
    assert s.key(BASE, {"raw": "sha256:1"}, "code") != base and s.key(BASE, INPUTS, "other") != base


def test_the_stages_read_the_sections_their_jobs_need_and_ray_is_in_none():
    assert stage("curate_images").sections == ("profile", "decode", "scorers", "curate_images")
    # decode: the text and metadata limits of the readers (decode.max_caption_bytes, max_metadata_bytes)
    assert stage("curate_videos").sections == ("profile", "decode", "video", "pose", "scorers", "curate_videos")
    assert set(stage("recaption").sections) == {"profile", "decode", "video", "pose", "captioner", "scorers",
                                                "recaption"}  # fmt: skip
    for name in ("distill_image", "distill_video", "adapt"):
        assert stage(name).sections == ("profile", "decode", "teacher", "consistency", name)
    assert stage("evaluate").sections == ("profile", "scorers", "teacher", "consistency", "evaluate")
    assert all("ray" not in s.sections and "toyworld" not in s.sections for s in STAGES)


TRAINING = [s for s in STAGES if s.training]


@pytest.mark.parametrize("s", TRAINING, ids=lambda s: s.name)
def test_a_run_name_follows_every_setting_the_job_receives_but_more_steps_or_another_preview(s):
    def name(cfg):
        return run_name(s.settings_of(cfg), s.name, "out", {"dataset": "sha256:d"})

    base = name(BASE)
    wrong = []
    for path, cfg in variants().items():
        own = path[1:] if path[0] == s.name else ()
        resumes = own[:1] in [(f,) for f in PREVIEW_FIELDS] or own[:1] == ("train",) and own[1] in RESUMABLE_FIELDS
        expect = path[0] in s.sections and not resumes
        if (name(cfg) != base) != expect:
            wrong.append(dotted(path))
    assert not wrong, f"{s.name}: run-name changes misjudged for {wrong}"


ENCODES = {
    "distill_image": (distill_image.encode_spec, {"teacher.dtype", "distill_image.resolution",
                                                   "distill_image.precompute_text",
                                                   "distill_image.precompute_latents"}),
    "distill_video": (distill_video.encode_spec, {"teacher.dtype", "distill_video.resolution",
                                                   "distill_video.frames", "distill_video.precompute_text"}),
    "adapt": (lambda cfg: adapt.encode_spec(cfg, "control"), {"teacher.dtype", "adapt.resolution", "adapt.frames"}),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(ENCODES))
def test_a_latent_cache_key_follows_what_the_encode_step_receives_and_nothing_else(name):
    spec_of, reads = ENCODES[name]
    s = stage(name)

    def key(cfg):
        return cache_key(spec_of(s.settings_of(cfg)), "sha256:d", DIGESTS)

    base = key(BASE)
    wrong = []
    for path, cfg in variants().items():
        expect = dotted(path) in reads or path[0] == "decode"
        if (key(cfg) != base) != expect:
            wrong.append(dotted(path))
    assert not wrong, f"{name}: cache-key changes misjudged for {wrong}"
    assert cache_key(spec_of(s.settings_of(BASE)), "sha256:e", DIGESTS) != base
