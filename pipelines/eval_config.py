"""Configuration of checkpoint evaluation and of the promotion gate (torch- and Ray-free)."""

from __future__ import annotations

from dataclasses import dataclass

from contracts.gate import GateRule, TeacherRule

EVAL_TEACHER_METHODS = ("ddim", "dpmsolver++")
FVD_EXTRACTORS = ("toy_clip", "i3d")
FVD_REFERENCES = ("real", "teacher")


@dataclass(frozen=True)
class EvaluateConfig:
    """Checkpoint evaluation (``alcm eval``): few-step tables of the checkpoint against the teacher's samplers."""

    prompts: str = "toyworld/eval"
    """The prompt set (:mod:`contracts.evalset`): a YAML file listing the prompts (strings or ``{caption: ...}``,
    e.g. the UCF-101 class prompts), or a prompt-set directory with reference renders of its items (the toy world's:
    ``toyworld/eval``, made by ``alcm toy eval-set``). Relative paths are under the project root."""
    num_prompts: int = 8
    """How many prompts: the first N of the set (0 = all)."""
    videos_per_prompt: int = 1
    """Noise seeds per prompt (videos or images per prompt)."""
    seed: int = 1
    """Prompt and noise seed (the toy teachers were validated on seed 0)."""
    student_steps: tuple[int, ...] = (1, 2, 4, 8)
    """Consistency-sampling steps of the checkpoint (no CFG, as the paper reports)."""
    teacher_steps: tuple[int, ...] = (1, 2, 4, 8, 25, 50)
    """Steps of the teacher's samplers (with CFG)."""
    teacher_methods: tuple[str, ...] = EVAL_TEACHER_METHODS
    """Teacher samplers: ``ddim`` (trailing) and/or ``dpmsolver++`` (second order, trailing)."""
    reference_steps: int = 50
    """The teacher's DDIM steps whose output is the reference for "distance to the teacher" (one of
    teacher_steps)."""
    guidance_scale: float | None = None
    """Teacher CFG scale; null: 1 + the middle of the distillation's w range (what the student learned)."""
    frames: int | None = None
    """Frames per video; null: distill_video.frames."""
    resolution: int | None = None
    """Square frame size; null: distill_video.resolution (videos) or the teacher's native size (images)."""
    fvd_extractor: str = "toy_clip"
    """FVD features: ``toy_clip`` (the scorer CLIP's image tower pooled over time) or ``i3d`` (i3d_path)."""
    i3d_path: str | None = None
    """TorchScript I3D (Kinetics-400) file, for ``fvd_extractor: i3d``."""
    fvd_reference: str = "real"
    """What FVD compares with: ``real`` (the prompt set's reference renders) or ``teacher`` (the teacher's
    reference_steps DDIM output, when no real videos exist for the prompts)."""
    grid_prompts: int = 3
    """Prompts shown in the sample grid (GIF for videos, PNG for images)."""
    workers: int = 2
    """Ray actors generating in parallel (each loads the pipelines once)."""
    cpus_per_worker: float = 1.0
    """CPUs per actor."""
    gpus_per_worker: float = 0.0
    """GPUs per actor (1 on a GPU cluster)."""
    torch_threads: int = 1
    """torch threads per actor (CPU)."""
    bootstrap: int = 200
    """Bootstrap replicates of every figure's 95% interval (each set resampled); 0: no intervals."""

    def __post_init__(self) -> None:
        for name in ("student_steps", "teacher_steps"):
            steps = getattr(self, name)
            if not steps or any(s < 1 for s in steps) or len(set(steps)) != len(steps):
                raise ValueError(f"{name}={list(steps)!r}: distinct step counts ≥ 1, e.g. [1, 2, 4, 8]")
        if not self.teacher_methods or any(m not in EVAL_TEACHER_METHODS for m in self.teacher_methods):
            raise ValueError(f"teacher_methods={list(self.teacher_methods)!r}: choose from "
                             f"{', '.join(EVAL_TEACHER_METHODS)}")  # fmt: skip
        if "ddim" not in self.teacher_methods:
            raise ValueError(f"teacher_methods={list(self.teacher_methods)!r}: must include ddim (the reference is the "
                             "teacher's DDIM output)")  # fmt: skip
        if self.reference_steps not in self.teacher_steps:
            steps, wanted = list(self.teacher_steps), sorted([*self.teacher_steps, self.reference_steps])
            add = f" or add it: teacher_steps={wanted}" if self.reference_steps >= 1 else ""
            raise ValueError(f"reference_steps={self.reference_steps}: must be one of teacher_steps {steps}; pick "
                             f"one of them{add}")  # fmt: skip
        if self.fvd_extractor not in FVD_EXTRACTORS:
            raise ValueError(f"fvd_extractor={self.fvd_extractor!r}: choose one of {', '.join(FVD_EXTRACTORS)}")
        if self.fvd_extractor == "i3d" and not self.i3d_path:
            raise ValueError("fvd_extractor=i3d needs i3d_path (a TorchScript I3D file)")
        if self.fvd_reference not in FVD_REFERENCES:
            raise ValueError(f"fvd_reference={self.fvd_reference!r}: choose one of {', '.join(FVD_REFERENCES)}")
        if self.fvd_reference == "real" and self.prompts.endswith((".yaml", ".yml")):
            raise ValueError(f"fvd_reference=real needs reference renders, and prompts={self.prompts!r} is a prompt "
                             "list; give a prompt-set directory, or use fvd_reference: teacher")  # fmt: skip
        # seed: the noise seeds and the toy prompts come from numpy generators, which reject negative seeds.
        for name in ("num_prompts", "seed", "grid_prompts", "bootstrap"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 0")
        for name in ("videos_per_prompt", "workers", "torch_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 1")
        if self.num_prompts and self.num_prompts * self.videos_per_prompt < 2:
            raise ValueError(f"num_prompts={self.num_prompts} × videos_per_prompt={self.videos_per_prompt}: a Fréchet "
                             "distance needs at least 2 samples")  # fmt: skip
        for name in ("frames", "resolution"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 1, or null for the default")
        if self.resolution is not None and self.resolution % 8:
            raise ValueError(f"resolution={self.resolution!r}: must be a multiple of 8, or null")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker={self.cpus_per_worker!r}: must be > 0")
        if self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker={self.gpus_per_worker!r}: must be ≥ 0")
        if self.guidance_scale is not None and self.guidance_scale < 1.0:
            raise ValueError(f"guidance_scale={self.guidance_scale}: must be ≥ 1 (1 = no guidance) or null")


@dataclass(frozen=True)
class PromotionConfig:
    """The promotion gate (``alcm registry promote``, the eval flow's ``promote``): rules per checkpoint kind."""

    video: tuple[GateRule, ...] = (GateRule("fvd@4", "lower", 0.0), GateRule("clipsim@4", "higher", 0.0))
    """Rules for video checkpoints (stage 2): metric@steps of the eval headline, direction, margin."""
    image: tuple[GateRule, ...] = (GateRule("fid@4", "lower", 0.0), GateRule("clipsim@4", "higher", 0.0))
    """Rules for image checkpoints (stage 1)."""
    video_teacher: tuple[TeacherRule, ...] = (TeacherRule("fvd@4"),)
    """Absolute rules for video checkpoints, on their own report: beat the teacher's sampler at the same steps (with
    separated intervals); they hold for the first candidate too. ``[]``: none."""
    image_teacher: tuple[TeacherRule, ...] = (TeacherRule("fid@4"),)
    """Absolute rules for image checkpoints."""

    def __post_init__(self) -> None:
        for name in ("video", "image"):
            if not getattr(self, name):
                raise ValueError(f"{name}=[]: give one or more rules, e.g. [{{metric: fvd@4, direction: lower, "
                                 "margin: 0.0}]; an empty gate cannot promote")  # fmt: skip
