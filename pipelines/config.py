"""Typed, nested, frozen configuration: profiles (``configs/<name>.yaml``) plus ``key=value`` overrides.

Each component owns a frozen dataclass next to its code (``models.scorer_config.ScorersConfig``,
``filters.rules.FilterConfig``, ...), validates its own values in ``__post_init__`` and receives only its own
config. This module composes them into :class:`Config` and builds it from YAML strictly:

- an unknown key, a missing required key or a value of the wrong type raises :class:`ConfigError` naming the full
  dotted key, the bad value and the fix (e.g. the valid keys); a float must be finite (no ``.nan``, ``.inf``) and a
  string must not be blank (use null where a field allows it), except the fields in :data:`BLANK_ALLOWED`;
- a component's own ``ValueError`` is re-raised as :class:`ConfigError` naming full dotted keys: every ``name=``
  of one of its fields in the message becomes ``dotted.key.name=``, and the message is prefixed with the dotted path;
- :data:`LOADER_CHECKS` adds checks to components owned by other modules, before they are built;
- overrides ``a.b.c=value`` are parsed as YAML scalars/lists (``true``, ``0.5``, ``[1, 2]``, ``null``);
- relative local paths in fields named ``weights``, ``*_dir``, ``*_path`` or ``*_file`` are made absolute against
  the project root, so Ray workers (whose working directory differs) resolve them the same way. URIs
  (``scheme://...``) are left alone.

- a section renamed since (:data:`RENAMED`, e.g. ``curation`` → ``curate_images``) is still read under its old
  name, in a profile and in an override, with a warning naming the new key.

Profiles are complete configs: every profile file spells out every component. A test builds every shipped profile.
The section classes live next to what reads them: :mod:`pipelines.data_config`, :mod:`pipelines.train_config`,
:mod:`pipelines.eval_config`, and the models' and filters' own config modules.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from contracts.gate import DIRECTIONS, TEACHER_SAMPLERS, GateRule, TeacherRule
from filters.decode import DecodeConfig
from models.captioner_config import CaptionerConfig, GenerationConfig
from models.consistency_config import ConsistencyConfig
from models.pose import PoseConfig
from models.scorer_config import ScorersConfig
from models.teacher_config import TeacherConfig
from pipelines.data_config import (
    ClipConfig,
    CurateImagesConfig,
    CurateVideosConfig,
    RayConfig,
    RecaptionConfig,
    ToyWorldConfig,
)
from pipelines.eval_config import EvaluateConfig, PromotionConfig
from pipelines.train_config import AdaptConfig, DistillImageConfig, DistillVideoConfig

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"


class ConfigError(ValueError):
    """A configuration value is missing, unknown, mistyped or invalid; the message names the key and the fix."""



@dataclass(frozen=True)
class Config:
    """The whole platform configuration (one profile, fully resolved).

    Sections are named after what reads them: a stage's own section has the stage's name (``curate_images``,
    ``distill_video``, ...); shared sections (``decode``, ``video``, ``pose``, ``scorers``, ``teacher``,
    ``consistency``) are read by several stages. Which sections a stage reads is its settings class
    (:mod:`pipelines.stages`), and a stage receives only those."""

    profile: str
    """Profile name (``toy`` or ``sd15``)."""
    data_dir: str
    """Root of the platform's data (datasets, runs); relative paths are under the project root."""
    ray: RayConfig
    """How jobs reach Ray."""
    toyworld: ToyWorldConfig
    """The toy world generator."""
    scorers: ScorersConfig
    """Model scorers used by curation and recaptioning (CLIP, aesthetic, watermark)."""
    decode: DecodeConfig
    """Safe-decoding limits of images and frames (every job that decodes them) and the scorer thumbnail size."""
    curate_images: CurateImagesConfig
    """The image-text curation job."""
    video: ClipConfig
    """How clips are decoded and sampled (recaptioning and video curation)."""
    pose: PoseConfig
    """Control frames (pose maps) stored with each clip (recaptioning and video curation)."""
    captioner: CaptionerConfig
    """The BLIP captioner (backend, weights, generation settings)."""
    recaption: RecaptionConfig
    """The recaptioning job."""
    curate_videos: CurateVideosConfig
    """The text-video curation job."""
    teacher: TeacherConfig
    """The frozen Stable-Diffusion teacher (local diffusers directory) and the student's LoRA."""
    consistency: ConsistencyConfig
    """Consistency-distillation math: DDIM grid, boundary scalings, guidance range, loss."""
    distill_image: DistillImageConfig
    """Stage 1, image consistency distillation."""
    distill_video: DistillVideoConfig
    """Stage 2, video consistency distillation."""
    adapt: AdaptConfig
    """Stage 3, teacher-free adaptation of the control and image-to-video adapters."""
    evaluate: EvaluateConfig
    """Checkpoint evaluation: prompts, methods × steps, FVD extractor, workers."""
    promotion: PromotionConfig
    """The promotion gate's rules."""


RENAMED = (
    ("curation.decode", "decode"),
    ("curation", "curate_images"),
    ("video_curation", "curate_videos"),
    ("recaption.control", "pose"),
)
"""Sections renamed when every stage got one name (old dotted key → new): profiles and overrides that use an old
key still load, with a warning naming the new one."""


# ----------------------------------------------------------------------------------------------- building


BLANK_ALLOWED = {(GenerationConfig, "prompt")}
"""(component, field) whose value may be a blank string: BLIP also captions from an empty prompt."""

_CAPTIONER_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def _check_generation(v: dict[str, Any]) -> None:
    if v["seed"] < 0:
        raise ValueError(f"seed={v['seed']!r}: must be ≥ 0")
    if v["min_new_tokens"] > v["max_new_tokens"]:
        raise ValueError(f"min_new_tokens={v['min_new_tokens']!r}, max_new_tokens={v['max_new_tokens']!r}: need "
                         "min_new_tokens ≤ max_new_tokens")  # fmt: skip


def _check_captioner(v: dict[str, Any]) -> None:
    if not _CAPTIONER_DEVICE.fullmatch(v["device"]):
        raise ValueError(f"device={v['device']!r}: choose cpu, cuda or cuda:N")


def _check_gate_rule(v: dict[str, Any]) -> None:
    if "@" not in v["metric"]:
        raise ValueError(f"metric={v['metric']!r}: expected metric@steps, e.g. fvd@4")
    if v["direction"] not in DIRECTIONS:
        raise ValueError(f"direction={v['direction']!r}: choose one of {', '.join(DIRECTIONS)}")
    if v["margin"] < 0:
        raise ValueError(f"margin={v['margin']!r}: must be ≥ 0 (how much better than production, in metric units)")


def _check_teacher_rule(v: dict[str, Any]) -> None:
    _check_gate_rule({**v, "margin": 0.0})
    if v["against"] not in TEACHER_SAMPLERS:
        raise ValueError(f"against={v['against']!r}: choose one of {', '.join(TEACHER_SAMPLERS)}")


LOADER_CHECKS: dict[type, Callable[[dict[str, Any]], None]] = {
    GenerationConfig: _check_generation,
    CaptionerConfig: _check_captioner,
    GateRule: _check_gate_rule,
    TeacherRule: _check_teacher_rule,
}
"""Checks run on a component owned by another module (given all its field values) before it is built: ones it
lacks (a seed ≥ 0 like every other seed, min ≤ max, a strict device), or ones whose own message does not name the
field as ``name=value``, so that the error would not name the dotted key."""


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _qualify(message: str, cls: type, key: str) -> str:
    """A component's error message with its fields named by full dotted key: ``rank=0`` → ``teacher.lora.rank=0``."""
    if not key:
        return message
    own = key.rsplit(".", 1)[-1] + "."
    if message.startswith(own):  # a component that names itself: clip.weights=... under scorers.clip
        message = message[len(own) :]
    names = "|".join(re.escape(f.name) for f in dataclasses.fields(cls))
    message = re.sub(rf"(?<![\w.])(?:{names})=", lambda m: f"{key}.{m[0]}", message)
    if message.startswith(f"{key}."):
        return message
    return f"{key}.{message}" if re.match(rf"(?:{names})\b", message) else f"{key}: {message}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _is_path_field(name: str) -> bool:
    return name == "weights" or name == "data_dir" or name.endswith(("_dir", "_path", "_file"))


def _resolve_path(value: str) -> str:
    if "://" in value:
        return value
    p = Path(value).expanduser()
    # normpath, not resolve(): a venv's bin/python is a symlink whose target is a different interpreter.
    return os.path.normpath(p if p.is_absolute() else PROJECT_ROOT / p)


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}=null: a value is required ({_type_name(tp)})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}={value!r}: expected {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r}: expected a mapping, e.g. {{gpu_node: 1}}")
        key_type, value_type = typing.get_args(tp)
        return {_convert(key_type, k, key): _convert(value_type, v, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}={value!r}: expected a list, e.g. [1024, 128]")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}={value!r}: expected a number")
        if not math.isfinite(value):
            raise ConfigError(f"{key}={value!r}: expected a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: expected a string (quote it in YAML)")
        return value
    if tp is Any:
        return value
    raise ConfigError(f"{key}: unsupported config type {_type_name(tp)}")


def build(cls: type, data: Any, key: str = "") -> Any:
    """Build the frozen dataclass ``cls`` from a plain mapping, strictly (see the module docstring)."""
    where = key or "<root>"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}={data!r}: expected a mapping of {cls.__name__} fields")
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        bad = f"{key}.{unknown[0]}" if key else unknown[0]
        raise ConfigError(f"unknown key {bad!r}; valid keys of {where}: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{key}.{name}" if key else name
        if name not in data:
            has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            if has_default:
                continue
            raise ConfigError(f"missing key {sub!r} ({_type_name(hints[name])}); add it to the profile or --set it")
        value = _convert(hints[name], data[name], sub)
        if (cls, name) not in BLANK_ALLOWED:
            _check_not_blank(value, sub, nullable=type(None) in typing.get_args(hints[name]))
        if isinstance(value, str) and _is_path_field(name):
            value = _resolve_path(value)
        kwargs[name] = value
    try:
        if cls in LOADER_CHECKS:
            LOADER_CHECKS[cls]({**_defaults(cls), **kwargs})
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(_qualify(str(exc), cls, key)) from exc


def _check_not_blank(value: Any, key: str, *, nullable: bool) -> None:
    texts = [(key, value)] if isinstance(value, str) else []
    if isinstance(value, tuple):
        texts = [(f"{key}[{i}]", v) for i, v in enumerate(value) if isinstance(v, str)]
    for where, text in texts:
        if not text.strip():
            raise ConfigError(f"{where}={text!r}: blank; give a value{', or null' if nullable else ''}")


def _defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and its YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. curate_images.filters.min_side=48")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: the key must be a dotted path, e.g. curation.batch_size")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key.split("."), value


def renamed(path: list[str], where: str) -> list[str]:
    """``path`` with an old section name (:data:`RENAMED`) replaced by its new one, warning about it."""
    for old, new in RENAMED:
        old_parts = old.split(".")
        if path[: len(old_parts)] == old_parts:
            new_path = new.split(".") + path[len(old_parts) :]
            log.warning("%s: %s was renamed %s; use the new key", where, ".".join(path), ".".join(new_path))
            return new_path
    return path


def migrate(data: dict, where: str) -> dict:
    """A copy of profile ``data`` with every old section (:data:`RENAMED`) moved to its new name."""
    out = json.loads(json.dumps(data))
    for old, new in RENAMED:
        *parents, leaf = old.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        value = node.pop(leaf)
        *new_parents, new_leaf = renamed(old.split("."), where)
        target = out
        for part in new_parents:
            target = target.setdefault(part, {})
        if new_leaf in target:
            raise ConfigError(f"{where}: both {old} and its new name {new} are set; keep only {new}")
        target[new_leaf] = value
    return out


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of ``data`` with each ``key=value`` override applied (intermediate mappings created); an old
    section name in a key (:data:`RENAMED`) is read as its new one."""
    out = json.loads(json.dumps(data))
    for text in overrides:
        path, value = parse_override(text)
        path = renamed(path, f"override {text!r}")
        node = out
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[: i + 1])} is a value, not a section")
            node = nxt
        node[path[-1]] = value
    return out


def profile_path(profile: str) -> Path:
    """The YAML file of a profile name (``toy``) or an explicit path to a YAML file."""
    candidate = Path(profile)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise ConfigError(f"profile file {candidate} does not exist")
        return candidate
    path = CONFIG_DIR / f"{profile}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise ConfigError(f"profile={profile!r}: no {path}; shipped profiles: {shipped} (or pass a .yaml path)")
    return path


def shipped_profiles() -> list[str]:
    """Names of the profiles under ``configs/``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(profile: str = "toy", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a profile, apply overrides, and build the validated :class:`Config`."""
    path = profile_path(profile)
    try:
        data = _parse_profile(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"profile file {path}: not valid YAML ({exc})") from exc
    return build(Config, apply_overrides(migrate(data, f"profile file {path}"), list(overrides)))


@functools.lru_cache(maxsize=16)
def _parse_profile(text: str) -> Any:
    # Cached by content: never mutate the result (apply_overrides copies it).
    return yaml.safe_load(text) or {}


def config_from_dict(data: dict) -> Config:
    """Rebuild a :class:`Config` from :func:`to_dict` output (e.g. a submitted job's environment)."""
    return build(Config, migrate(data, "config"))


def to_dict(obj: Any) -> dict:
    """Plain, JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))
