"""BLIP captioners: one interface, two backends (transformers in-process, LAVIS in its own environment).

A captioner turns RGB frames into one caption each with the generation settings of its config, and names itself by
``model_id`` (model name + weights digest), which every caption row records. ``build_captioner`` picks the backend;
both must agree on greedy captions for the same weights (tested).

Loading is safe: transformers weights come from ``model.safetensors`` only (a file there that is not safetensors, such
as a pickle given that name, is refused with a ``ValueError`` naming it, never unpickled); the tokenizer comes from the
local ``vocab.txt`` and its size is checked against the model (an offline tokenizer can silently come back with a
handful of tokens and turn every word into ``[UNK]``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError

from contracts.digests import sha256_file
from models.captioner_config import CaptionerConfig, GenerationConfig
from models.safe_load import not_safetensors

log = logging.getLogger(__name__)

SPECIAL_BOS = "[DEC]"
"""BLIP's decoder start token, added after the BERT vocabulary (id = len(vocab.txt))."""
SPECIAL_ENC = "[ENC]"
"""BLIP's image-grounded encoder token, added after ``[DEC]``."""


class Captioner(Protocol):
    """What the recaptioning job needs from a backend."""

    model_id: str
    """``name@sha256:<16 hex>`` of the weights file the captions come from."""

    def generate(self, images: list[np.ndarray]) -> list[str]:
        """One caption per uint8 RGB (H, W, 3) frame, prompt stripped."""
        ...

    def close(self) -> None:
        """Release the model (and any worker process)."""
        ...


def strip_prompt(text: str, prompt: str) -> str:
    """The caption without the generation prompt (BLIP returns the prompt as the caption's start)."""
    text = " ".join(text.split())
    head = " ".join(prompt.lower().split())
    if head and text.lower().startswith(head):
        text = text[len(head) :]
    return text.strip()


def weights_dir(cfg: CaptionerConfig) -> Path:
    """The transformers-format weights directory of ``cfg``, checked; errors name ``captioner.weights``."""
    if cfg.weights is None:
        raise ValueError("captioner.weights is null: set it to a local BLIP captioning directory (transformers format)")
    path = Path(cfg.weights)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"captioner.weights={path}: no config.json there (expected a BLIP model directory)")
    return path


def load_blip_tokenizer(vocab_file: Path, *, vocab_size: int):
    """BERT WordPiece tokenizer from a local ``vocab.txt`` with BLIP's ``[DEC]``/``[ENC]`` tokens added, checked
    against the model's vocabulary size."""
    from transformers import BertTokenizer

    if not vocab_file.is_file():
        raise FileNotFoundError(f"BLIP vocabulary {vocab_file} does not exist")
    # Positional on purpose: transformers 5 ignores the ``vocab_file=`` keyword without a word.
    tok = BertTokenizer(str(vocab_file), do_lower_case=True)
    tok.add_special_tokens({"bos_token": SPECIAL_BOS, "additional_special_tokens": [SPECIAL_ENC]})
    if len(tok) != vocab_size:
        raise ValueError(
            f"{vocab_file}: tokenizer has {len(tok)} tokens with [DEC]/[ENC], the model expects {vocab_size}; "
            "the vocabulary does not belong to these weights"
        )
    return tok


def generate_kwargs(gen: GenerationConfig) -> dict:
    """transformers ``generate`` arguments for a generation config."""
    kwargs = {
        "min_new_tokens": gen.min_new_tokens,
        "max_new_tokens": gen.max_new_tokens,
        "repetition_penalty": gen.repetition_penalty,
    }
    if gen.use_nucleus_sampling:
        kwargs.update(do_sample=True, top_p=gen.top_p, top_k=0, num_beams=1)
    else:
        kwargs.update(do_sample=False, num_beams=gen.num_beams, length_penalty=gen.length_penalty)
    return kwargs


class TransformersCaptioner:
    """BLIP captioning with ``BlipForConditionalGeneration`` from a local transformers-format directory."""

    def __init__(self, cfg: CaptionerConfig) -> None:
        from transformers import BlipForConditionalGeneration, BlipImageProcessorPil
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one "Loading weights" bar per actor clutters the job's log

        self.cfg = cfg
        path = weights_dir(cfg)
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"captioner.weights={path}: no model.safetensors (only safetensors are loaded)")
        torch.set_num_threads(cfg.torch_threads)
        self.device = torch.device(cfg.device)
        try:
            self.model = BlipForConditionalGeneration.from_pretrained(path, local_files_only=True, use_safetensors=True)
        except SafetensorError as exc:  # transformers lets safetensors' error through, without the file's name
            raise not_safetensors(weights, exc) from exc
        self.model.eval().to(self.device)
        self.tokenizer = load_blip_tokenizer(path / "vocab.txt", vocab_size=self.model.config.text_config.vocab_size)
        # The PIL processor reproduces LAVIS's eval transform (bicubic resize, CLIP mean/std); the torchvision one
        # does not, which would make the two backends disagree.
        self.processor = BlipImageProcessorPil.from_pretrained(path, local_files_only=True)
        self.model_id = f"{cfg.name}@sha256:{sha256_file(weights)[:16]}"
        self._kwargs = generate_kwargs(cfg.generation)
        log.info("captioner %s loaded from %s (%s)", self.model_id, path, cfg.device)

    def pixel_values(self, images: list[np.ndarray]) -> torch.Tensor:
        """Preprocessed (B, 3, S, S) pixels."""
        pil = [Image.fromarray(np.asarray(im, dtype=np.uint8), "RGB") for im in images]
        return self.processor(images=pil, return_tensors="pt")["pixel_values"].to(self.device)

    def prompt_ids(self, batch: int) -> torch.Tensor:
        """Prompt token ids ``[CLS] prompt [SEP]`` repeated (generate swaps in ``[DEC]`` and drops ``[SEP]``)."""
        ids = self.tokenizer(self.cfg.generation.prompt, return_tensors="pt")["input_ids"]
        return ids.repeat(batch, 1).to(self.device)

    @torch.no_grad()
    def generate(self, images: list[np.ndarray]) -> list[str]:
        """One caption per frame, in batches of ``batch_size``."""
        out: list[str] = []
        gen = self.cfg.generation
        for start in range(0, len(images), self.cfg.batch_size):
            chunk = images[start : start + self.cfg.batch_size]
            if gen.use_nucleus_sampling:
                torch.manual_seed(gen.seed + start)
            ids = self.model.generate(self.pixel_values(chunk), input_ids=self.prompt_ids(len(chunk)), **self._kwargs)
            texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
            out.extend(strip_prompt(t, gen.prompt) for t in texts)
        return out

    @torch.no_grad()
    def logits(self, images: list[np.ndarray], input_ids: np.ndarray) -> np.ndarray:
        """Decoder logits (B, L, V) for the given token ids (used to compare backends)."""
        ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long, device=self.device)
        out = self.model(pixel_values=self.pixel_values(images), input_ids=ids, use_cache=False)
        return out.logits.float().cpu().numpy()

    def close(self) -> None:
        """Nothing to release beyond the Python objects."""


def build_captioner(cfg: CaptionerConfig) -> Captioner:
    """The captioner of ``cfg.backend``."""
    if cfg.backend == "transformers":
        return TransformersCaptioner(cfg)
    elif cfg.backend == "lavis":
        from models.captioner_lavis import LavisCaptioner

        return LavisCaptioner(cfg)
    else:
        raise ValueError(f"captioner.backend={cfg.backend!r}: choose transformers or lavis")
