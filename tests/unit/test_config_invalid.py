"""Every invalid value of every leaf field of the shipped profiles raises at load, naming the field's dotted key.

The fields are walked from the loaded configs, not listed by hand: every dataclass field of :class:`Config`, nested
components included, and the fields of the first element of a list of components (the promotion rules, overridden
as a whole list). A field added to a component and a profile is covered without touching this file.

Each field gets two kinds of invalid value:

- wrong types, derived from its annotation: null for a required value, a string or a list for a number, a number or
  a list for a string, NaN and ±inf for a float, a scalar for a list, a list element of the wrong type, ...;
- domain violations, from explicit rules keyed by the field's name (:data:`DOMAIN`): counts and sizes ≥ 1,
  probabilities in [0, 1], min ≤ max pairs, known choices, non-empty lists, non-blank strings, seeds ≥ 0, ...

Loading a profile with one such override must raise :class:`ConfigError` whose message holds the full dotted key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from pipelines.config import ConfigError, load_config, parse_override, shipped_profiles, to_dict

NAN, INF = math.nan, math.inf


@dataclass(frozen=True)
class Leaf:
    """One leaf field of a loaded profile, and how an override reaches it."""

    profile: str
    key: str
    """Full dotted key, e.g. ``curate_images.filters.min_side`` or ``promotion.video[0].margin``."""
    tp: Any
    """The field's annotation."""
    value: Any
    """The field's value in the profile."""
    owner: Any
    """The component holding the field (rules over pairs of fields read its siblings)."""
    list_key: str | None = None
    """For a field of a list element: the list's key; the override replaces the whole list."""
    items: tuple[dict, ...] = ()
    """That list's elements, as plain mappings."""

    @property
    def name(self) -> str:
        return self.key.rsplit(".", 1)[-1]

    def override(self, bad: Any) -> str:
        """The ``key=value`` override that sets this field to ``bad`` and leaves everything else as it is."""
        if self.list_key is None:
            return f"{self.key}={_yaml(bad)}"
        items = [dict(item) for item in self.items]
        items[0][self.name] = bad
        return f"{self.list_key}={_yaml(items)}"

    def delivered(self, bad: Any) -> Any:
        """What the override must parse to (checks that this file's YAML says what it means)."""
        if self.list_key is None:
            return bad
        items = [dict(item) for item in self.items]
        items[0][self.name] = bad
        return items


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 30).removesuffix("...\n").strip()


def _walk(profile: str, obj: Any, key: str, list_key: str | None = None, items: tuple = ()) -> Iterator[Leaf]:
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        sub = f"{key}.{f.name}" if key else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            if list_key is not None:
                raise NotImplementedError(f"{sub}: a component inside a list element; extend Leaf.override")
            yield from _walk(profile, value, sub)
            continue
        yield Leaf(profile, sub, hints[f.name], value, obj, list_key, items)
        if isinstance(value, tuple) and value and all(dataclasses.is_dataclass(v) for v in value):
            yield from _walk(profile, value[0], f"{sub}[0]", sub, tuple(to_dict(v) for v in value))


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """The annotation without ``| None``, and whether null is allowed."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        (base,) = args
        return base, len(args) < len(typing.get_args(tp))
    return tp, False


def _type_cases(tp: Any) -> list[Any]:
    """Values of the wrong type for annotation ``tp`` (null too, unless the annotation allows it)."""
    base, optional = _unwrap(tp)
    cases: list[Any] = [] if optional else [None]
    origin = typing.get_origin(base)
    if base is bool:
        cases += ["maybe", 1, [True]]
    elif base is int:
        cases += ["many", 1.5, True, [1]]
    elif base is float:
        cases += ["many", True, [1.0], NAN, INF, -INF]
    elif base is str:
        cases += [5, 0.5, True, ["x"], {"x": 1}]
    elif origin is tuple:
        cases += ["x", 5, {"x": 1}] + [[bad] for bad in _type_cases(typing.get_args(base)[0])]
    elif origin is dict:
        cases += ["x", [1.0]] + [{"k": bad} for bad in _type_cases(typing.get_args(base)[1])]
    elif dataclasses.is_dataclass(base):
        cases += [5, "x", [1]]
    else:
        raise NotImplementedError(f"no wrong-type values for {tp}; extend _type_cases")
    return cases


def _typed(leaf: Leaf, *values: float) -> list[Any]:
    """``values`` as the field's own type: int or float, one-element lists for a list, ``{k: v}`` for a mapping."""
    base, _ = _unwrap(leaf.tp)
    origin = typing.get_origin(base)
    if origin is tuple:
        item = typing.get_args(base)[0]
        return [[item(v)] for v in values]
    if origin is dict:
        return [{"k": typing.get_args(base)[1](v)} for v in values]
    return [base(v) for v in values]


def _smaller_max(leaf: Leaf, lo: str) -> list[Any]:
    """A max below its min (and still ≥ 0, so that only the pair is violated)."""
    low = getattr(leaf.owner, lo)
    bad = low // 2 if isinstance(low, int) else low / 2
    return [bad] if bad < low else []


def _larger_min(leaf: Leaf, hi: str) -> list[Any]:
    return [getattr(leaf.owner, hi) + 1]


BLANK_OK = {
    "captioner.generation.prompt": "BLIP also captions from an empty prompt (unconditional captioning)",
}
"""String fields where a blank value is valid."""

NO_INVALID_VALUE_OF_ITS_TYPE = {
    **BLANK_OK,
    "captioner.generation.length_penalty": "any finite number (< 0 favours short captions); NaN and ±inf are covered",
    "curate_images.filters.aesthetic_min": "a threshold on the scorer's scale: any finite number; NaN, ±inf covered",
    "curate_videos.filters.aesthetic_min": "as curate_images.filters.aesthetic_min",
    "promotion.video_teacher": "any list of rules ([] = no absolute rule); each rule's fields are walked",
    "promotion.image_teacher": "as promotion.video_teacher",
}
"""Non-boolean fields with no invalid value of their own type, and why. (A boolean has none unless another field
constrains it; booleans are exempt as a type, and still get their wrong-type cases.)"""

AT_LEAST_ONE = (
    r"(\w+_)?(size|dim|side|actors|workers|threads|chunk|pixels|bytes|beams|rank|resolution|frames|stride|accum|every)"
    r"|num_workers|num_cpus|rows_per_file|caption_max_chars|max_new_tokens|keep_checkpoints|videos_per_prompt"
    r"|num_ddim_timesteps|hidden|steps|preview_steps|reference_steps|student_steps|teacher_steps"
)
"""Counts, sizes, steps and widths: 0 and -1 are invalid."""
AT_LEAST_ZERO = (
    r"seed|images|videos|dancers|warmup_steps|max_failures|num_prompts|grid_prompts|caption_min_words|min_new_tokens"
    r"|phash_max_distance|weight_decay|grad_clip|replay_mb|control_scale|motion_scale|margin|motion_min|w_min"
    r"|\w+_gpus|gpus_per_worker|resources|driver_resources|driver_num_cpus|bootstrap"
)
"""Seeds, optional counts, GPUs, penalties and margins: -1 is invalid."""
ABOVE_ZERO = (
    r"(?!driver_)\w+_cpus|cpus_per_worker|lr|timestep_scaling|sigma_data|huber_c|frame_folder_fps|startup_timeout_s"
    r"|request_timeout_s|max_duration_s|repetition_penalty|alpha|job_timeout_s"
)
"""CPUs, rates, scales and timeouts: 0 and -1 are invalid (a submitted driver may reserve no CPU: ≥ 0 above)."""
CHOICES = (
    r"backend|arch|aggregation|source|scene_cut|dtype|prediction_type|init|loss|weighting|target|precision|lora_ema"
    r"|motion_init|fvd_extractor|fvd_reference|direction|device|against"
)
"""One of a fixed set of choices: an unknown name is invalid."""
NON_EMPTY_LISTS = (
    r"frames_at|score_frames_at|target_modules|student_steps|teacher_steps|teacher_methods|adapters|hidden"
)
"""Lists that need at least one element."""

DOMAIN: list[tuple[str, Callable[[Leaf], list[Any]]]] = [
    (AT_LEAST_ONE, lambda leaf: _typed(leaf, 0, -1)),
    (AT_LEAST_ZERO, lambda leaf: _typed(leaf, -1)),
    (ABOVE_ZERO, lambda leaf: _typed(leaf, 0, -1)),
    (r"watermark_max|frames_at|score_frames_at", lambda leaf: _typed(leaf, -0.1, 1.5)),
    (r"top_p|cut_threshold", lambda leaf: _typed(leaf, 0.0, 1.5)),
    (r"dropout|ema_decay", lambda leaf: _typed(leaf, -0.1, 1.0)),
    (r"max_aspect", lambda leaf: [0.5]),
    (r"clip_min", lambda leaf: [-101.0, 101.0]),
    (r"\w+_top_percent", lambda leaf: [0.0, -5.0, 100.5, 1000]),
    (r"phash_max_distance", lambda leaf: [17]),
    (r"positive_index", lambda leaf: [2, -1]),
    (r"zero_stage", lambda leaf: [4, -1]),
    (r"toyworld\.image_size", lambda leaf: [8]),
    (r"analysis_size", lambda leaf: [3]),
    (r"scorer_size", lambda leaf: [4, 2000]),
    (r"resolution", lambda leaf: [60]),
    (r"num_ddim_timesteps", lambda leaf: [1]),
    (r"w_embedding_dim", lambda leaf: [3]),
    (r"guidance_scale", lambda leaf: [0.5]),
    (r"hidden", lambda leaf: [[1, 2, 3]]),
    (r"w_min", lambda leaf: _larger_min(leaf, "w_max")),
    (r"w_max", lambda leaf: _smaller_max(leaf, "w_min")),
    (r"motion_min", lambda leaf: _larger_min(leaf, "motion_max")),
    (r"motion_max", lambda leaf: _smaller_max(leaf, "motion_min")),
    (r"min_new_tokens", lambda leaf: _larger_min(leaf, "max_new_tokens")),
    (r"max_new_tokens", lambda leaf: _smaller_max(leaf, "min_new_tokens")),
    (CHOICES, lambda leaf: ["bogus"]),
    (r"device", lambda leaf: ["gpu", "cuda:x"]),
    (r"adapters|teacher_methods", lambda leaf: [["bogus"]]),
    (NON_EMPTY_LISTS, lambda leaf: [[]]),
    (r"adapters|student_steps|teacher_steps", lambda leaf: [[leaf.value[-1]] * 2]),
    (r"video|image", lambda leaf: [[]] if leaf.key.startswith("promotion.") else []),
    (r"teacher_methods", lambda leaf: [[m for m in leaf.value if m != "ddim"] or ["dpmsolver++"]]),
    (r"teacher_steps", lambda leaf: [[s for s in leaf.value if s != leaf.owner.reference_steps]]),
    (r"reference_steps", lambda leaf: [min(set(range(1, 100)) - set(leaf.owner.teacher_steps))]),
    (r"num_prompts", lambda leaf: [1] if leaf.owner.videos_per_prompt == 1 else []),
    (r"fvd_extractor", lambda leaf: ["i3d"] if leaf.owner.i3d_path is None else []),
    (r"fvd_reference", lambda leaf: ["real"] if leaf.owner.prompts.endswith((".yaml", ".yml")) else []),
    (r"evaluate\.prompts", lambda leaf: ["p.yaml"] if leaf.owner.fvd_reference == "real" else []),
    (r"decoupled", lambda leaf: [False] if leaf.owner.init != "none" else []),
    (r"annotator", lambda leaf: ["not an import path", "module_without_class"]),
    (r"scorers\.\w+\.weights", lambda leaf: ["model.txt"]),
    (r"metric", lambda leaf: ["fvd4"]),
]
"""Domain rules: (pattern matched against the end of the dotted key, the field's invalid values)."""


def _blank_cases(leaf: Leaf) -> list[Any]:
    if leaf.key in BLANK_OK:
        return []
    base, _ = _unwrap(leaf.tp)
    if base is str:
        return ["", "   "]
    if typing.get_origin(base) is tuple and typing.get_args(base)[0] is str:
        return [[""], ["   "]]
    return []


def _domain_cases(leaf: Leaf) -> list[Any]:
    cases = _blank_cases(leaf)
    for pattern, values in DOMAIN:
        if re.search(rf"(^|\.)({pattern})$", leaf.key):
            cases += values(leaf)
    return cases


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


PROFILES = shipped_profiles()
LEAVES = [leaf for profile in PROFILES for leaf in _walk(profile, load_config(profile), "")]


def test_the_walk_reaches_every_component_of_both_shipped_profiles():
    assert {"toy", "sd15"} <= set(PROFILES)
    keys = {leaf.key for leaf in LEAVES}
    for key in ("profile", "scorers.clip.image_size", "curate_images.filters.watermark_max", "teacher.lora.rank",
                "distill_video.train.resources", "evaluate.teacher_methods", "promotion.video[0].margin"):  # fmt: skip
        assert key in keys


def test_every_field_has_an_invalid_value_of_its_own_type_or_a_reason_why_not():
    uncovered = sorted(
        {leaf.key for leaf in LEAVES if not _domain_cases(leaf) and _unwrap(leaf.tp)[0] is not bool}
        - set(NO_INVALID_VALUE_OF_ITS_TYPE)
    )
    assert not uncovered, f"add a domain rule to DOMAIN, or a reason to NO_INVALID_VALUE_OF_ITS_TYPE: {uncovered}"


def test_the_allowlists_name_real_fields():
    keys = {leaf.key for leaf in LEAVES}
    assert set(NO_INVALID_VALUE_OF_ITS_TYPE) | set(BLANK_OK) <= keys


@pytest.mark.parametrize("leaf", LEAVES, ids=lambda leaf: f"{leaf.profile}:{leaf.key}")
def test_every_invalid_value_raises_at_load_naming_the_dotted_key(leaf):
    missed = []
    for bad in _type_cases(leaf.tp) + _domain_cases(leaf):
        override = leaf.override(bad)
        assert _same(parse_override(override)[1], leaf.delivered(bad)), f"{override} does not parse to {bad!r}"
        try:
            load_config(leaf.profile, [override])
        except ConfigError as exc:
            if leaf.key not in str(exc):
                missed.append(f"{override}: the message does not name {leaf.key}: {exc}")
        else:
            missed.append(f"{override}: loaded without an error")
    assert not missed, "\n".join(missed)
