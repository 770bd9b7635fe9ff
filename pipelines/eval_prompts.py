"""The prompts of an evaluation (``evaluate.prompts``): a YAML list, or a prompt-set directory with reference
renders (:mod:`contracts.evalset`), checked against the evaluation's settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from contracts.evalset import PROMPTS
from contracts.manifest import read_manifest, verify_files
from pipelines.config import PROJECT_ROOT
from pipelines.stages import EvaluateSettings


@dataclass(frozen=True)
class PromptSet:
    """The prompts of an evaluation (:mod:`contracts.evalset`) and, when the set has them, its reference renders."""

    prompts: list[dict]
    reference: Path | None = None
    """The set's directory when it holds reference renders."""
    settings: dict | None = None
    """What the renders were made for (``seed``, ``videos_per_prompt``, ``frames``, ``size``)."""


def load_prompts(cfg: EvaluateSettings, kind: str) -> PromptSet:
    """``evaluate.prompts``: a YAML list of prompts, or a prompt-set directory (for ``kind``: its ``<kind>/``
    subdirectory when it has one) with reference renders made for this evaluation's seed and seeds per prompt."""
    import yaml

    e = cfg.evaluate
    path = Path(e.prompts) if Path(e.prompts).is_absolute() else PROJECT_ROOT / e.prompts
    reference = settings = None
    if path.is_dir():
        path = path / kind if (path / kind / PROMPTS).is_file() else path
        if not (path / PROMPTS).is_file():
            raise FileNotFoundError(f"evaluate.prompts={e.prompts}: {path} holds no {PROMPTS} (nor {kind}/{PROMPTS})")
        if (path / "manifest.json").is_file():
            manifest = read_manifest(path)
            verify_files(path, manifest)
            reference, settings = path, manifest["config"]
        path = path / PROMPTS
    if not path.is_file():
        raise FileNotFoundError(f"evaluate.prompts={e.prompts}: {path} does not exist (a YAML list of prompts or a "
                                "prompt-set directory)")  # fmt: skip
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, list) or not data:
        raise ValueError(f"evaluate.prompts={path}: expected a non-empty YAML list of prompts")
    prompts = []
    for i, item in enumerate(data):
        caption = item.get("caption") if isinstance(item, dict) else item
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"evaluate.prompts={path}: item {i} has no caption ({item!r})")
        prompts.append({"caption": caption.strip()})
    if e.num_prompts > len(prompts) and reference is not None:
        raise ValueError(f"evaluate.num_prompts={e.num_prompts}: the prompt set {reference} has {len(prompts)}")
    prompts = prompts[: e.num_prompts] if e.num_prompts else prompts
    if len(prompts) * e.videos_per_prompt < 2:
        raise ValueError(f"evaluate.prompts={path}: {len(prompts)} prompts × {e.videos_per_prompt} seeds; a Fréchet "
                         "distance needs at least 2 samples")  # fmt: skip
    if settings is not None:
        for key in ("seed", "videos_per_prompt"):
            if settings[key] != getattr(e, key):
                raise ValueError(f"evaluate.{key}={getattr(e, key)}: the prompt set {reference}'s renders were made "
                                 f"for {key} {settings[key]}; use that, or make a set for it (alcm toy "
                                 "eval-set)")  # fmt: skip
    if e.fvd_reference == "real" and reference is None:
        raise ValueError(f"evaluate.fvd_reference=real needs reference renders: evaluate.prompts={e.prompts} is a "
                         "prompt list; give a prompt-set directory, or use fvd_reference: teacher")  # fmt: skip
    return PromptSet(prompts, reference, settings)
