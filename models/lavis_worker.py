"""LAVIS BLIP captioning worker: a standalone script run by the LAVIS venv's Python (``.venv-lavis/bin/python``).

It is started by :class:`models.captioner_lavis.LavisCaptioner` as ``python /abs/path/models/lavis_worker.py`` and
imports only the standard library and what the LAVIS venv has (torch, lavis, transformers 4.26, PIL, numpy): never a
project module, since the project's own dependencies are not installed there.

Protocol (stdin → requests, the original stdout → replies). Every message is one frame::

    4-byte big-endian length of the header | UTF-8 JSON header | raw array bytes

The header's ``blobs`` list describes the arrays that follow, in order, each as ``{"dtype": ..., "shape": [...]}``
(C order, little-endian); the array bytes are concatenated with no padding. Requests carry ``op``:

- ``load`` (first message only): the model spec; reply ``{"ok": true, "op": "ready", ...info}``;
- ``generate``: one uint8 (H, W, 3) RGB blob per image and ``generation`` settings; reply ``captions``;
- ``logits``: image blobs then one int64 (B, L) blob of token ids; reply one float32 (B, L, V) blob;
- ``info``: reply with the model description;
- ``shutdown``: reply, then exit 0.

A failed request gets ``{"ok": false, "error": ..., "error_type": ..., "traceback": ...}`` and the worker goes on; a
failed ``load`` gets the same reply and the worker exits with status 1. LAVIS and its dependencies print to stdout, so
the protocol owns a duplicate of the original stdout and file descriptor 1 is pointed at stderr before any import.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
import traceback

_HEADER = struct.Struct(">I")
_MAX_HEADER_BYTES = 64 * 1024 * 1024

# Keys whose absence or presence in a checkpoint changes nothing: LAVIS's position_ids buffer is a constant arange,
# and the LM head's decoder weight/bias are the same parameters as the word embeddings / prediction bias (checked).
_CONSTANT_BUFFER_SUFFIX = "position_ids"
_TIED_KEYS = ("text_decoder.cls.predictions.decoder.weight", "text_decoder.cls.predictions.decoder.bias")


class _Channel:
    """Framed messages over the process's stdin and a private duplicate of its original stdout."""

    def __init__(self) -> None:
        # Take the real stdout for the protocol, then point fd 1 (C-level writes included) and sys.stdout at stderr,
        # so that a stray print from LAVIS, timm or transformers cannot corrupt a frame.
        self._out = os.fdopen(os.dup(1), "wb", buffering=0)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        self._in = sys.stdin.buffer

    def _read_exact(self, n: int) -> bytes | None:
        data = self._in.read(n) if n else b""
        if data is None or len(data) < n:
            return None
        return data

    def receive(self) -> tuple[dict, list] | None:
        """Next request as (header, arrays); None when the client closed stdin."""
        import numpy as np

        raw = self._read_exact(_HEADER.size)
        if raw is None:
            return None
        (length,) = _HEADER.unpack(raw)
        if length > _MAX_HEADER_BYTES:
            raise ValueError(f"protocol error: header of {length} bytes")
        body = self._read_exact(length)
        if body is None:
            return None
        header = json.loads(body.decode("utf-8"))
        arrays = []
        for blob in header.get("blobs", []):
            dtype = np.dtype(blob["dtype"]).newbyteorder("<")
            shape = tuple(int(s) for s in blob["shape"])
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            data = self._read_exact(nbytes)
            if data is None:
                return None
            arrays.append(np.frombuffer(data, dtype=dtype).reshape(shape))
        return header, arrays

    def send(self, header: dict, arrays: list | None = None) -> None:
        """Write one reply frame (header, then the arrays' bytes)."""
        import numpy as np

        arrays = [np.ascontiguousarray(a, dtype=np.dtype(a.dtype).newbyteorder("<")) for a in arrays or []]
        header = dict(header, blobs=[{"dtype": a.dtype.str, "shape": list(a.shape)} for a in arrays])
        body = json.dumps(header).encode("utf-8")
        self._write(_HEADER.pack(len(body)) + body)
        for a in arrays:
            self._write(memoryview(a).cast("B"))

    def _write(self, data) -> None:
        view = memoryview(data)
        while view:
            written = self._out.write(view)
            view = view[written:]


def _error_reply(exc: BaseException) -> dict:
    return {
        "ok": False,
        "error": str(exc),
        "error_type": type(exc).__name__,
        "traceback": "".join(traceback.format_exception(exc)),
    }


def _load_tokenizer(vocab_path: str, vocab_size: int):
    """LAVIS's BLIP tokenizer built from a local vocabulary: BERT WordPiece + bos ``[DEC]`` + special ``[ENC]``."""
    from transformers import BertTokenizer

    if not os.path.isfile(vocab_path):
        raise FileNotFoundError(f"vocabulary {vocab_path} does not exist (captioner.lavis.vocab_path)")
    # Positional on purpose: the keyword is spelled differently across transformers versions.
    tokenizer = BertTokenizer(vocab_path)
    base = len(tokenizer.vocab)
    if base <= 5:
        raise ValueError(f"vocabulary {vocab_path} loaded with only {base} tokens (captioner.lavis.vocab_path)")
    # The same two calls as LAVIS's BlipBase.init_tokenizer; a vocabulary that already lists [DEC]/[ENC] keeps ids.
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tokenizer.enc_token_id = tokenizer.additional_special_tokens_ids[0]
    if len(tokenizer) != vocab_size:
        raise ValueError(
            f"vocabulary {vocab_path} gives {len(tokenizer)} tokens with [DEC] and [ENC] ({base} in the file) but the "
            f"model's text vocab_size is {vocab_size}: the vocabulary (captioner.lavis.vocab_path) does not belong "
            "to these weights"
        )
    return tokenizer


def _build_model(spec: dict, tokenizer):
    """LAVIS BlipCaption of the spec's size (LAVIS's own config path only knows the base/large presets)."""
    import math
    from functools import partial

    import torch
    from transformers import BertConfig

    try:
        from lavis.models.blip_models.blip_caption import BlipCaption
        from lavis.models.med import XBertLMHeadDecoder
        from lavis.models.vit import VisionTransformerEncoder
    except ImportError as exc:
        raise ImportError(
            f"{sys.executable} cannot import LAVIS ({exc}): captioner.lavis.python_path must be the LAVIS venv's "
            "Python (`make lavis-env` builds .venv-lavis)"
        ) from exc

    vision = spec["vision"]
    dim = int(vision["hidden_size"])
    intermediate = int(vision["intermediate_size"])
    mlp_ratio = float(vision["mlp_ratio"])
    # The ViT sizes its MLP as int(dim * mlp_ratio): nudge the ratio up if float rounding loses a unit (the check
    # below catches anything else).
    for _ in range(8):
        if int(dim * mlp_ratio) >= intermediate:
            break
        mlp_ratio = math.nextafter(mlp_ratio, math.inf)
    encoder = VisionTransformerEncoder(
        img_size=int(vision["image_size"]),
        patch_size=int(vision["patch_size"]),
        embed_dim=dim,
        depth=int(vision["num_hidden_layers"]),
        num_heads=int(vision["num_attention_heads"]),
        mlp_ratio=mlp_ratio,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=float(vision["layer_norm_eps"])),
    )
    encoder.vision_width = dim
    if encoder.blocks and encoder.blocks[0].mlp.fc1.out_features != intermediate:
        raise ValueError(
            f"vision MLP built with {encoder.blocks[0].mlp.fc1.out_features} units, expected {intermediate}"
        )
    decoder = XBertLMHeadDecoder(config=BertConfig(**spec["text"]))

    class LocalVocabBlipCaption(BlipCaption):
        """BlipCaption whose tokenizer is the local one (LAVIS's downloads bert-base-uncased)."""

        @classmethod
        def init_tokenizer(cls):
            return tokenizer

    return LocalVocabBlipCaption(encoder, decoder, prompt=spec.get("prompt", ""), max_txt_len=40)


def _read_checkpoint(path: str, trusted: bool) -> dict:
    import pickle

    import torch

    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist (captioner.lavis.checkpoint_path)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trusted:
            raise PermissionError(
                f"checkpoint {path} cannot be loaded with weights_only=True: it needs full (unsafe) unpickling, "
                "which can run arbitrary code. Set captioner.lavis.trusted_checkpoint: true only if you trust the "
                f"file. ({str(exc).splitlines()[0]})"
            ) from None
        obj = torch.load(path, map_location="cpu", weights_only=False)
    state = obj["model"] if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else obj
    if not isinstance(state, dict) or not state:
        raise ValueError(f"checkpoint {path}: expected {{'model': state_dict}} or a state dict, got {type(obj)}")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"checkpoint {path}: non-tensor entries in the state dict: {bad[:5]}")
    return state


def _load_weights(model, state: dict, path: str) -> None:
    """Strict load in substance: LAVIS loads non-strictly, so missing keys would silently stay random."""
    own = model.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if mismatched:
        raise ValueError(
            f"checkpoint {path} does not fit the architecture of <captioner.weights>/config.json: "
            + "; ".join(mismatched[:5])
        )
    heads = model.text_decoder.cls.predictions
    tied = (
        heads.decoder.weight is model.text_decoder.bert.embeddings.word_embeddings.weight
        and heads.decoder.bias is heads.bias
    )
    result = model.load_state_dict(state, strict=False)
    missing = [
        k for k in result.missing_keys if not k.endswith(_CONSTANT_BUFFER_SUFFIX) and not (tied and k in _TIED_KEYS)
    ]
    unexpected = [k for k in result.unexpected_keys if not k.endswith(_CONSTANT_BUFFER_SUFFIX)]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} (captioner.lavis.checkpoint_path) does not match LAVIS's BlipCaption: "
            f"missing {missing[:8]}{' …' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{' …' if len(unexpected) > 8 else ''}"
        )


class _Worker:
    def __init__(self, spec: dict) -> None:
        import torch

        torch.set_num_threads(int(spec.get("torch_threads", 1)))
        self.spec = spec
        self.device = torch.device(spec.get("device", "cpu"))
        text = spec["text"]
        # Checkpoint and vocabulary first: their errors are the likely ones, and they need no LAVIS import (seconds).
        state = _read_checkpoint(spec["checkpoint_path"], bool(spec.get("trusted_checkpoint", False)))
        self.tokenizer = _load_tokenizer(spec["vocab_path"], int(text["vocab_size"]))
        self.model = _build_model(spec, self.tokenizer)
        _load_weights(self.model, state, spec["checkpoint_path"])
        self.model.eval().to(self.device)
        self.max_positions = int(text["max_position_embeddings"])
        from lavis.processors.blip_processors import BlipImageEvalProcessor

        self.processor = BlipImageEvalProcessor(image_size=int(spec["vision"]["image_size"]))

    def info(self) -> dict:
        import lavis
        import torch
        import transformers

        return {
            "pid": os.getpid(),
            "device": str(self.device),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "lavis": getattr(lavis, "__version__", "1.0.2"),
            "vocab_size": len(self.tokenizer),
            "bos_token_id": self.tokenizer.bos_token_id,
            "sep_token_id": self.tokenizer.sep_token_id,
            "pad_token_id": self.tokenizer.pad_token_id,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "torch_threads": torch.get_num_threads(),
        }

    def _pixels(self, images: list):
        import numpy as np
        import torch
        from PIL import Image

        if not images:
            raise ValueError("no images in the request")
        tensors = []
        for i, image in enumerate(images):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"image {i}: expected uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}")
            tensors.append(self.processor(Image.fromarray(np.ascontiguousarray(image), "RGB")))
        return torch.stack(tensors).to(self.device)

    def logits(self, images: list, input_ids) -> list:
        """Decoder logits of the given token ids (no bos substitution: the ids are used as given)."""
        import torch

        if input_ids.ndim != 2 or input_ids.shape[0] != len(images):
            raise ValueError(f"input_ids {input_ids.shape}: expected ({len(images)}, L)")
        ids = torch.from_numpy(input_ids.astype("int64")).to(self.device)
        with torch.inference_mode():
            embeds = self.model.forward_encoder({"image": self._pixels(images)})
            out = self.model.text_decoder(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                encoder_hidden_states=embeds,
                encoder_attention_mask=torch.ones(embeds.shape[:-1], dtype=torch.long, device=self.device),
                return_dict=True,
            )
        return [out.logits.float().cpu().numpy()]

    def generate(self, images: list, settings: dict) -> list[str]:
        """Captions the way BlipCaption.generate does, with every setting honoured.

        LAVIS's own generate forces repetition_penalty=1.1 under nucleus sampling (with transformers' default
        top_k=50) and never passes a length penalty; here all of them come from the settings, so that the two
        backends apply the same ones.
        """
        import torch

        prompt = settings.get("prompt", "")
        pixels = self._pixels(images)
        n = pixels.shape[0]
        tok = self.tokenizer
        prompt_ids = tok([prompt] * n, return_tensors="pt").input_ids
        # As LAVIS: bos replaces [CLS] and the trailing [SEP] is dropped.
        prompt_ids[:, 0] = tok.bos_token_id
        prompt_ids = prompt_ids[:, :-1].to(self.device)
        prompt_len = prompt_ids.shape[1]
        # LAVIS's max_length/min_length count the prompt's tokens too.
        max_length = prompt_len + int(settings["max_new_tokens"])
        min_length = prompt_len + int(settings["min_new_tokens"])
        if max_length > self.max_positions:
            raise ValueError(
                f"prompt ({prompt_len} tokens) + captioner.generation.max_new_tokens ({settings['max_new_tokens']}) "
                f"exceeds the decoder's {self.max_positions} positions"
            )
        sampling = bool(settings.get("use_nucleus_sampling", False))
        num_beams = 1 if sampling else int(settings.get("num_beams", 1))
        with torch.inference_mode():
            embeds = self.model.forward_encoder({"image": pixels})
            # transformers 4.26's generate does not expand encoder states per beam: LAVIS repeats them itself.
            embeds = embeds.repeat_interleave(num_beams, dim=0)
            kwargs = {
                "input_ids": prompt_ids,
                "max_length": max_length,
                "min_length": min_length,
                "eos_token_id": tok.sep_token_id,
                "pad_token_id": tok.pad_token_id,
                "repetition_penalty": float(settings.get("repetition_penalty", 1.0)),
                "encoder_hidden_states": embeds,
                "encoder_attention_mask": torch.ones(embeds.shape[:-1], dtype=torch.long, device=self.device),
            }
            if sampling:
                torch.manual_seed(int(settings.get("seed", 0)))
                # top_k=0: pure nucleus sampling, as the transformers backend asks (4.26 would add top_k=50).
                out = self.model.text_decoder.generate(
                    do_sample=True, top_p=float(settings.get("top_p", 0.9)), top_k=0, num_return_sequences=1, **kwargs
                )
            else:
                out = self.model.text_decoder.generate(
                    num_beams=num_beams, length_penalty=float(settings.get("length_penalty", 1.0)), **kwargs
                )
        texts = tok.batch_decode(out, skip_special_tokens=True)
        return [_strip_prompt(text, prompt) for text in texts]


def _strip_prompt(text: str, prompt: str) -> str:
    """The caption without its prompt, by the rule the transformers backend uses (models.captioner.strip_prompt).

    LAVIS cuts ``len(prompt)`` characters; comparing whitespace-normalised, lower-cased text gives the same caption
    for BLIP's prompt and stays right when the tokenizer lower-cases the prompt or cleans up its spacing.
    """
    text = " ".join(text.split())
    head = " ".join(prompt.lower().split())
    if head and text.lower().startswith(head):
        text = text[len(head) :]
    return text.strip()


def main() -> int:
    """Serve requests until ``shutdown`` or end of input; status 1 if the model could not be loaded."""
    channel = _Channel()
    started = time.perf_counter()
    try:
        message = channel.receive()
        if message is None:
            return 1
        spec, _ = message
        if spec.get("op") != "load":
            raise ValueError(f"protocol error: first request must be 'load', got {spec.get('op')!r}")
        worker = _Worker(spec)
        info = worker.info()
    except BaseException as exc:  # noqa: BLE001 - every startup failure goes back to the client before exiting
        channel.send(_error_reply(exc))
        return 1
    channel.send({"ok": True, "op": "ready", "startup_s": round(time.perf_counter() - started, 3), **info})
    while True:
        message = channel.receive()
        if message is None:
            return 0
        header, arrays = message
        op = header.get("op")
        try:
            if op == "generate":
                channel.send({"ok": True, "captions": worker.generate(arrays, header["generation"])})
            elif op == "logits":
                channel.send({"ok": True}, worker.logits(arrays[:-1], arrays[-1]))
            elif op == "info":
                channel.send({"ok": True, **worker.info()})
            elif op == "shutdown":
                channel.send({"ok": True})
                return 0
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as exc:  # noqa: BLE001 - a failed request is reported and the worker serves the next one
            channel.send(_error_reply(exc))


if __name__ == "__main__":
    sys.exit(main())
