"""The LAVIS backend against transformers on the same tiny random BLIP captioner (real LAVIS venv, no Ray).

The model is built here: a transformers ``BlipForConditionalGeneration`` with a small WordPiece vocabulary that
follows real BLIP's convention (BERT vocabulary, then ``[DEC]`` and ``[ENC]``), exported to a LAVIS checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil

from models.blip_convert import export_lavis_checkpoint, hf_to_lavis
from models.captioner_config import CaptionerConfig, GenerationConfig, LavisConfig
from models.captioner_lavis import LavisCaptioner

ROOT = Path(__file__).resolve().parents[2]
LAVIS_PYTHON = ROOT / ".venv-lavis" / "bin" / "python"

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "a picture of red green blue yellow black white orange purple pink grey circle square triangle star ring "
    "cross heart small large big tiny on in with and the two one three dots line stripes background shape bright "
    "dark over under near left right top bottom"
).split()
GREEDY = GenerationConfig(num_beams=1, min_new_tokens=3, max_new_tokens=12)


@pytest.fixture(scope="module")
def lavis_python() -> Path:
    if not LAVIS_PYTHON.is_file():
        pytest.fail(f"{LAVIS_PYTHON} missing: `make lavis-env` builds the LAVIS environment (make test does it)")
    return LAVIS_PYTHON


def build_tiny_blip(
    out: Path, vision_std: float = 0.2, text_std: float = 0.5, embedding_std: float = 1.0
) -> tuple[BlipForConditionalGeneration, BertTokenizer]:
    """A random BLIP captioner saved as transformers weights + vocab.txt in ``out``."""
    tokens = SPECIALS + WORDS
    v0 = len(tokens)
    (out / "vocab.txt").parent.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join([*tokens, "[DEC]", "[ENC]"]) + "\n")
    torch.manual_seed(0)
    cfg = BlipConfig(
        vision_config=dict(
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=64,
            patch_size=8,
            layer_norm_eps=1e-6,
        ),
        text_config=dict(
            vocab_size=v0 + 2,
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            encoder_hidden_size=64,
            max_position_embeddings=64,
            bos_token_id=v0,
            sep_token_id=tokens.index("[SEP]"),
            eos_token_id=tokens.index("[SEP]"),
            pad_token_id=0,
        ),
    )
    model = BlipForConditionalGeneration(cfg).eval()
    # transformers initialises the vision tower at std 1e-10 and the rest at 0.02: every image would then get the
    # same caption. Larger weights make captions depend on the image and vary token by token (tuned by hand).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                std = vision_std if name.startswith("vision_model.") else text_std
                p.normal_(0.0, embedding_std if "word_embeddings" in name else std)
    model.save_pretrained(out)
    tokenizer = BertTokenizer(str(out / "vocab.txt"))
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    assert len(tokenizer) == v0 + 2 and tokenizer.bos_token_id == v0
    return model, tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_blip")
    model, tokenizer = build_tiny_blip(out / "hf")
    checkpoint = export_lavis_checkpoint(out / "hf", out / "lavis" / "blip_caption.pth")
    return model, tokenizer, out / "hf", checkpoint


def captioner_config(weights: Path, checkpoint: Path, python: Path, **lavis) -> CaptionerConfig:
    return CaptionerConfig(
        backend="lavis",
        name="tiny-blip",
        weights=str(weights),
        lavis=LavisConfig(python_path=str(python), checkpoint_path=str(checkpoint), startup_timeout_s=120, **lavis),
        generation=GREEDY,
        batch_size=3,
    )


@pytest.fixture(scope="module")
def lavis(tiny, lavis_python):
    _, _, weights, checkpoint = tiny
    with LavisCaptioner(captioner_config(weights, checkpoint, lavis_python)) as captioner:
        yield captioner


def pixel_values(images: list[np.ndarray], size: int = 64) -> torch.Tensor:
    """transformers-side preprocessing; the PIL processor is the one that matches LAVIS's eval transform."""
    processor = BlipImageProcessorPil(size={"height": size, "width": size})
    return processor(images=[Image.fromarray(im) for im in images], return_tensors="pt")["pixel_values"]


def transformers_captions(model, tokenizer, images: list[np.ndarray], gen: GenerationConfig) -> list[str]:
    """Captions the way BLIP is meant to be run in transformers 5.24 (same settings as the LAVIS worker applies).

    ``BlipForConditionalGeneration.generate`` itself replaces the first prompt token ([CLS]) by bos ([DEC]) and
    drops the last one ([SEP]), so the prompt goes in as the tokenizer returns it.
    """
    prompt_ids = tokenizer([gen.prompt] * len(images), return_tensors="pt").input_ids
    kwargs = dict(
        max_new_tokens=gen.max_new_tokens,
        min_new_tokens=gen.min_new_tokens,
        repetition_penalty=gen.repetition_penalty,
    )
    if gen.use_nucleus_sampling:
        kwargs.update(do_sample=True, top_p=gen.top_p, top_k=0, num_beams=1)
        torch.manual_seed(gen.seed)
    else:
        kwargs.update(do_sample=False, num_beams=gen.num_beams, length_penalty=gen.length_penalty)
    with torch.no_grad():
        out = model.generate(pixel_values(images), input_ids=prompt_ids, **kwargs)
    head = " ".join(gen.prompt.lower().split())
    captions = []
    for text in tokenizer.batch_decode(out, skip_special_tokens=True):
        text = " ".join(text.split())
        assert text.startswith(head), text
        captions.append(text[len(head) :].strip())
    return captions


def random_images(n: int, seed: int, shape=(64, 64, 3)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def test_worker_describes_the_model(lavis, tiny):
    model, tokenizer, _, checkpoint = tiny
    info = lavis.worker_info()
    assert info["transformers"] == "4.26.1"
    assert info["vocab_size"] == len(tokenizer) == model.config.text_config.vocab_size
    assert info["bos_token_id"] == tokenizer.convert_tokens_to_ids("[DEC]")
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert lavis.model_id.startswith("tiny-blip@sha256:") and len(lavis.model_id.split(":")[1]) == 16


def test_decoder_logits_match_transformers(lavis, tiny):
    model, tokenizer, _, _ = tiny
    # Not 64x64, so that both sides resize (bicubic) before normalising; 5 images over batches of 3.
    images = random_images(5, seed=1, shape=(80, 96, 3))
    ids = tokenizer(["a picture of a red circle"] * 5, return_tensors="pt").input_ids
    ids[:, 0] = tokenizer.bos_token_id
    ids[1:, 5] = torch.tensor(tokenizer.convert_tokens_to_ids(["blue", "star", "two", "big"]))
    with torch.no_grad():
        # use_cache=False: with a cache, transformers 5 attends to contiguous copies of the keys, which changes the
        # float summation order (logits off by ~1e-5 relative); without it both backends agree bit for bit.
        expected = model(pixel_values=pixel_values(images), input_ids=ids, use_cache=False).logits.numpy()
    got = lavis.logits(images, ids.numpy())
    assert got.shape == expected.shape == (5, ids.shape[1], len(tokenizer))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert np.abs(got - expected).max() == 0.0  # measured: identical kernels in both venvs (same torch)


def test_greedy_captions_match_transformers(lavis, tiny):
    model, tokenizer, _, _ = tiny
    images = random_images(8, seed=2)
    expected = transformers_captions(model, tokenizer, images, GREEDY)
    got = lavis.generate(images)
    assert got == expected
    # A meaningful comparison: captions differ between images and use many different tokens.
    assert len(set(got)) >= 6, got
    assert len({word for caption in got for word in caption.split()}) >= 8, got


@pytest.mark.parametrize(
    "gen",
    [
        # Beam search with no length penalty: its formula changed between transformers 4.26 and 5.x.
        dataclasses.replace(GREEDY, num_beams=3, length_penalty=0.0),
        dataclasses.replace(GREEDY, repetition_penalty=1.5),
        dataclasses.replace(GREEDY, max_new_tokens=4),
    ],
    ids=["beam3", "repetition", "short"],
)
def test_generation_settings_reach_the_worker(lavis, tiny, gen):
    model, tokenizer, _, _ = tiny
    images = random_images(6, seed=3)
    lavis.cfg = dataclasses.replace(lavis.cfg, generation=gen)
    try:
        got = lavis.generate(images)
    finally:
        lavis.cfg = dataclasses.replace(lavis.cfg, generation=GREEDY)
    assert got == transformers_captions(model, tokenizer, images, gen)
    assert got != lavis.generate(images)  # the settings changed the captions
    assert all(len(c.split()) <= gen.max_new_tokens for c in got), got


def test_nucleus_sampling_is_seeded(lavis):
    images = random_images(4, seed=4)
    sampled = dataclasses.replace(GREEDY, use_nucleus_sampling=True, top_p=0.9, seed=7)
    runs = []
    for gen in (sampled, sampled, dataclasses.replace(sampled, seed=8)):
        lavis.cfg = dataclasses.replace(lavis.cfg, generation=gen)
        try:
            runs.append(lavis.generate(images))
        finally:
            lavis.cfg = dataclasses.replace(lavis.cfg, generation=GREEDY)
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert lavis.generate([]) == []


def test_request_errors_keep_the_worker_alive(lavis):
    with pytest.raises(ValueError, match="uint8"):
        lavis.generate([np.zeros((8, 8), dtype=np.uint8)])
    with pytest.raises(RuntimeError, match="input_ids"):
        # Passes the client's shape check but not the worker's (ids must be 2-D per batch).
        lavis._request({"op": "logits"}, [random_images(1, 0)[0], np.zeros((1, 2, 3), dtype=np.int64)])
    assert lavis.generate(random_images(1, seed=4))


def test_pickled_checkpoint_needs_trust_and_a_dead_worker_is_restarted(tiny, lavis_python, tmp_path):
    _, _, weights, checkpoint = tiny
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    unsafe = tmp_path / "with_args.pth"
    torch.save({"model": state, "args": argparse.Namespace(a=1)}, unsafe)
    with pytest.raises(RuntimeError, match="trusted_checkpoint"):
        LavisCaptioner(captioner_config(weights, unsafe, lavis_python))

    # The same file is accepted when trusted. This worker then also serves the death test (one start fewer): a
    # worker killed between requests is restarted and the batch sent again, with the same captions as before.
    captioner = LavisCaptioner(captioner_config(weights, unsafe, lavis_python, trusted_checkpoint=True))
    try:
        before = captioner.generate(random_images(2, seed=5))
        assert len(before) == 2
        pid = captioner._proc.pid
        captioner._proc.kill()
        assert captioner.generate(random_images(2, seed=5)) == before
        assert captioner.restarts == 1 and captioner._proc.pid != pid
    finally:
        captioner.close()
    assert captioner._proc is None


def test_checkpoint_missing_keys_is_refused(tiny, lavis_python, tmp_path):
    _, _, weights, checkpoint = tiny
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    del state["visual_encoder.blocks.1.mlp.fc2.bias"]
    partial = tmp_path / "partial.pth"
    torch.save({"model": state}, partial)
    with pytest.raises(RuntimeError, match=r"missing \['visual_encoder.blocks.1.mlp.fc2.bias'\]"):
        LavisCaptioner(captioner_config(weights, partial, lavis_python))


def test_missing_python_path_names_the_key(tiny, tmp_path):
    _, _, weights, checkpoint = tiny
    with pytest.raises(FileNotFoundError, match=r"captioner\.lavis\.python_path.*make lavis-env"):
        LavisCaptioner(captioner_config(weights, checkpoint, tmp_path / "nope" / "python"))


def test_missing_checkpoint_names_the_key(tiny, lavis_python, tmp_path):
    _, _, weights, _ = tiny
    with pytest.raises(FileNotFoundError, match=r"captioner\.lavis\.checkpoint_path"):
        LavisCaptioner(captioner_config(weights, tmp_path / "none.pth", lavis_python))


def test_exported_checkpoint_matches_the_converter(tiny):
    model, _, _, checkpoint = tiny
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    expected = hf_to_lavis(model.state_dict())
    assert saved.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(saved[key], value), key
