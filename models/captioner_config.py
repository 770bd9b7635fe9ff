"""Configuration of the BLIP captioner (torch-free, so the CLI, flows and Ray task workers can read it cheaply).

Two backends run the same BLIP weights:

- ``transformers``: ``BlipForConditionalGeneration`` + ``BlipProcessor`` loaded from a local directory in
  transformers format (``config.json``, ``model.safetensors``, ``vocab.txt``, ``preprocessor_config.json``);
- ``lavis``: LAVIS's ``blip_caption`` model, run in its own virtual environment (LAVIS pins libraries that cannot
  share the main one), from a LAVIS-layout ``.pth`` checkpoint. The architecture is read from the transformers
  ``config.json`` of ``weights`` (both backends describe the same network), the vocabulary from ``vocab_path``.
"""

from __future__ import annotations

from dataclasses import dataclass

BACKENDS = ("transformers", "lavis")
"""Captioner backends."""


@dataclass(frozen=True)
class GenerationConfig:
    """Caption generation settings, applied identically by both backends."""

    prompt: str = "a picture of "
    """Text the decoder starts from; it is stripped from the returned caption (BLIP's captioning prompt)."""
    num_beams: int = 3
    """Beam width (1 = greedy). Ignored with nucleus sampling."""
    min_new_tokens: int = 5
    """Fewest tokens generated after the prompt."""
    max_new_tokens: int = 30
    """Most tokens generated after the prompt."""
    use_nucleus_sampling: bool = False
    """Sample with top-p instead of beam search (more diverse candidates, not reproducible across backends)."""
    top_p: float = 0.9
    """Nucleus mass when sampling."""
    repetition_penalty: float = 1.0
    """Penalty on repeated tokens (1.0 = none)."""
    length_penalty: float = 1.0
    """Beam-search length penalty (BLIP's default 1.0)."""
    seed: int = 0
    """Seed of nucleus sampling."""

    def __post_init__(self) -> None:
        if self.num_beams < 1:
            raise ValueError(f"num_beams={self.num_beams!r}: must be ≥ 1")
        if self.min_new_tokens < 0:
            raise ValueError(f"min_new_tokens={self.min_new_tokens!r}: must be ≥ 0")
        if self.max_new_tokens < max(1, self.min_new_tokens):
            raise ValueError(
                f"max_new_tokens={self.max_new_tokens!r}: must be ≥ 1 and ≥ min_new_tokens ({self.min_new_tokens})"
            )
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p!r}: must be in (0, 1]")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty={self.repetition_penalty!r}: must be > 0")


@dataclass(frozen=True)
class LavisConfig:
    """The LAVIS backend's separate environment and checkpoint."""

    python_path: str = ".venv-lavis/bin/python"
    """Python of the LAVIS virtual environment (``make lavis-env`` builds ``.venv-lavis``)."""
    checkpoint_path: str | None = None
    """LAVIS-layout BLIP caption checkpoint (``.pth`` with a ``model`` state dict)."""
    vocab_path: str | None = None
    """BERT WordPiece ``vocab.txt`` for LAVIS's tokenizer (it is hard-wired to download ``bert-base-uncased``);
    null: ``vocab.txt`` in the captioner's ``weights`` directory."""
    trusted_checkpoint: bool = False
    """Allow a checkpoint that needs full (unsafe) unpickling. Only for files you trust; default refuses them."""
    startup_timeout_s: float = 600.0
    """Seconds to wait for the LAVIS worker process to import LAVIS and load the model."""
    request_timeout_s: float = 600.0
    """Seconds one request (a batch of ``batch_size`` images) may take. A worker that takes longer, or dies, is
    killed and restarted and the batch sent once more; a second failure fails the job (nothing is published)."""

    def __post_init__(self) -> None:
        if self.startup_timeout_s <= 0:
            raise ValueError(f"startup_timeout_s={self.startup_timeout_s!r}: must be > 0")
        if self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s={self.request_timeout_s!r}: must be > 0")


@dataclass(frozen=True)
class CaptionerConfig:
    """A BLIP captioner: which backend, which weights, how to generate."""

    backend: str = "transformers"
    """``transformers`` (maintained path) or ``lavis`` (LAVIS's blip_caption in its own environment)."""
    name: str = "blip"
    """Model name recorded in every caption row (with the weights digest)."""
    weights: str | None = None
    """Directory of the transformers-format BLIP captioning model."""
    lavis: LavisConfig = LavisConfig()
    """Settings of the LAVIS backend."""
    generation: GenerationConfig = GenerationConfig()
    """Generation settings."""
    device: str = "cpu"
    """Torch device (``cpu`` or ``cuda``)."""
    torch_threads: int = 1
    """Intra-op threads per captioner process (one actor per core is faster than threads on small models)."""
    batch_size: int = 16
    """Images per generate() call."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r}: choose one of {', '.join(BACKENDS)}")
        if not self.name.strip():
            raise ValueError("name='': must be a non-empty model name")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device={self.device!r}: choose cpu, cuda or cuda:N")
        if self.torch_threads < 1:
            raise ValueError(f"torch_threads={self.torch_threads!r}: must be ≥ 1")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size!r}: must be ≥ 1")
