"""LAVIS backend of the BLIP captioner: LAVIS's ``blip_caption`` run in its own venv through a worker process.

salesforce-lavis 1.0.2 pins libraries the main environment cannot take (transformers 4.26, timm 0.4.12, numpy<2), so
it lives in ``.venv-lavis`` (``make lavis-env``) and runs ``models/lavis_worker.py`` there. One worker is started per
:class:`LavisCaptioner` and kept for its lifetime; requests and replies are length-prefixed frames over its
stdin/stdout (the protocol is described in ``lavis_worker.py``). A request that outlives
``captioner.lavis.request_timeout_s``, or a worker that dies mid-request, gets the worker killed and restarted and
the request sent once more; a second failure raises :class:`LavisWorkerError` (the job fails, nothing is published).
A request the worker answers with an error (bad input) is not retried.

The architecture is read from the transformers ``config.json`` of ``captioner.weights`` (both backends describe the
same network) and sent to the worker, which builds LAVIS's classes at that size; the weights come from the LAVIS
checkpoint ``captioner.lavis.checkpoint_path`` (``models.blip_convert.export_lavis_checkpoint`` writes one).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import select
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from contracts.digests import sha256_file
from models.captioner_config import CaptionerConfig

logger = logging.getLogger(__name__)

WORKER_SCRIPT = Path(__file__).resolve().with_name("lavis_worker.py")
"""The worker script run by the LAVIS venv's Python."""

_PROJECT_ROOT = Path(__file__).resolve().parents[1]
_HEADER = struct.Struct(">I")
_STDERR_TAIL_LINES = 60
_SHUTDOWN_TIMEOUT_S = 10.0


class LavisWorkerError(RuntimeError):
    """The LAVIS worker failed a request, failed to start, or died."""


def _locate(path: str) -> Path:
    """A configured path as given, or relative to the project root when the working directory does not have it.

    Never resolves symlinks: a venv's ``bin/python`` is a link whose target would lose the venv.
    """
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return candidate.absolute()
    rooted = _PROJECT_ROOT / candidate
    return rooted if rooted.exists() else candidate.absolute()


def architecture_spec(config_json: Path) -> dict[str, Any]:
    """The worker's architecture spec (``vision`` ViT sizes, ``text`` BertConfig for LAVIS's med decoder) from a
    transformers ``BlipConfig`` JSON file.

    transformers' own config class fills in what the file leaves out, so both backends see the same defaults (text
    heads 8, vision layer-norm eps 1e-5: settings that change outputs without changing any weight shape).
    """
    from transformers import BlipConfig

    cfg = BlipConfig.from_json_file(str(config_json))
    vision, text = cfg.vision_config, cfg.text_config
    if vision.hidden_act != "gelu":
        raise ValueError(f"{config_json}: vision_config.hidden_act={vision.hidden_act!r}; LAVIS's ViT uses exact gelu")
    for key in ("image_size", "patch_size"):
        if not isinstance(getattr(vision, key), int):
            raise ValueError(f"{config_json}: vision_config.{key}={getattr(vision, key)!r}; LAVIS's ViT needs one int")
    return {
        "vision": {
            "image_size": vision.image_size,
            "patch_size": vision.patch_size,
            "hidden_size": vision.hidden_size,
            "num_hidden_layers": vision.num_hidden_layers,
            "num_attention_heads": vision.num_attention_heads,
            "intermediate_size": vision.intermediate_size,
            "mlp_ratio": vision.intermediate_size / vision.hidden_size,
            "layer_norm_eps": vision.layer_norm_eps,
        },
        # LAVIS's med_config.json keys, at this model's sizes; no fusion_layer (its absence is BLIP's mode).
        "text": {
            "architectures": ["BertModel"],
            "model_type": "bert",
            "vocab_size": text.vocab_size,
            "hidden_size": text.hidden_size,
            "num_hidden_layers": text.num_hidden_layers,
            "num_attention_heads": text.num_attention_heads,
            "intermediate_size": text.intermediate_size,
            "hidden_act": text.hidden_act,
            "hidden_dropout_prob": text.hidden_dropout_prob,
            "attention_probs_dropout_prob": text.attention_probs_dropout_prob,
            "max_position_embeddings": text.max_position_embeddings,
            "initializer_range": text.initializer_range,
            "layer_norm_eps": text.layer_norm_eps,
            "pad_token_id": text.pad_token_id,
            "add_type_embeddings": False,
            "encoder_width": vision.hidden_size,
            "add_cross_attention": True,
        },
        "token_ids": {"bos": text.bos_token_id, "sep": text.sep_token_id, "pad": text.pad_token_id},
    }


class LavisCaptioner:
    """Runs BLIP captioning in LAVIS's own venv through one long-lived worker process (started in __init__)."""

    model_id: str
    """``<name>@sha256:<first 16 hex of the checkpoint file's sha256>``."""
    info: dict[str, Any]
    """What the worker reported when ready: pid, versions, vocabulary size and special ids, parameters, startup_s."""

    def __init__(self, cfg: CaptionerConfig) -> None:
        self.cfg = cfg
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        self._stderr_thread: threading.Thread | None = None
        self.restarts = 0
        """Times the worker was killed and started again after a request timed out or the worker died."""
        lavis = cfg.lavis

        python = _locate(lavis.python_path)
        if not python.is_file():
            raise FileNotFoundError(
                f"captioner.lavis.python_path={lavis.python_path}: {python} does not exist; "
                "`make lavis-env` builds the LAVIS environment (.venv-lavis)"
            )
        if not lavis.checkpoint_path:
            raise ValueError("captioner.lavis.checkpoint_path is null: set it to a LAVIS blip_caption checkpoint")
        checkpoint = _locate(lavis.checkpoint_path)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"captioner.lavis.checkpoint_path={lavis.checkpoint_path}: no such file")
        if cfg.weights is None:
            raise ValueError(
                "captioner.weights is null: the LAVIS backend reads the architecture from <weights>/config.json"
            )
        config_json = _locate(cfg.weights) / "config.json"
        if not config_json.is_file():
            raise FileNotFoundError(f"captioner.weights={cfg.weights}: no config.json there (BLIP model directory)")
        if lavis.vocab_path:
            vocab = _locate(lavis.vocab_path)
            if not vocab.is_file():
                raise FileNotFoundError(f"captioner.lavis.vocab_path={lavis.vocab_path}: no such file")
        else:
            vocab = config_json.parent / "vocab.txt"
            if not vocab.is_file():
                raise FileNotFoundError(
                    f"captioner.lavis.vocab_path is null and captioner.weights={cfg.weights} has no vocab.txt"
                )
        arch = architecture_spec(config_json)
        self._expected_ids = arch.pop("token_ids")

        self.model_id = f"{cfg.name}@sha256:{sha256_file(checkpoint)[:16]}"
        spec = {
            "op": "load",
            **arch,
            "checkpoint_path": str(checkpoint),
            "trusted_checkpoint": lavis.trusted_checkpoint,
            "vocab_path": str(vocab),
            "prompt": cfg.generation.prompt,
            "device": cfg.device,
            "torch_threads": cfg.torch_threads,
        }
        self._python, self._spec = python, spec
        self._start(python, spec)

    # ----------------------------------------------------------------------------------------------- process

    def _start(self, python: Path, spec: dict) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        threads = str(self.cfg.torch_threads)
        env.update(
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            OMP_NUM_THREADS=threads,
            MKL_NUM_THREADS=threads,
            TOKENIZERS_PARALLELISM="false",
            PYTHONUNBUFFERED="1",
        )
        started = time.perf_counter()
        # Unbuffered pipes: the startup wait selects on the raw descriptor, which a Python buffer would hide data from.
        self._proc = subprocess.Popen(
            [str(python), str(WORKER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            bufsize=0,
        )
        self._stderr_thread = threading.Thread(target=self._drain_stderr, name="lavis-worker-stderr", daemon=True)
        self._stderr_thread.start()
        timeout = self.cfg.lavis.startup_timeout_s
        try:
            self._send(spec, [])
            reply, _ = self._receive("load", deadline=time.monotonic() + timeout)
        except TimeoutError:
            self._kill()
            raise TimeoutError(
                f"LAVIS worker not ready after {timeout:g} s (captioner.lavis.startup_timeout_s){self._tail_text()}"
            ) from None
        except BaseException:
            self._kill()
            raise
        if not reply.get("ok"):
            self._reap(_SHUTDOWN_TIMEOUT_S)
            raise self._error_from(reply, "start")
        self.info = {k: v for k, v in reply.items() if k not in ("ok", "op", "blobs")}
        got = {"bos": reply["bos_token_id"], "sep": reply["sep_token_id"], "pad": reply["pad_token_id"]}
        if got != self._expected_ids:
            self.close()
            raise ValueError(
                f"LAVIS tokenizer ids {got} (from {spec['vocab_path']}) differ from captioner.weights' config.json "
                f"text_config {self._expected_ids}: the two backends would not generate the same captions"
            )
        logger.info(
            "LAVIS worker pid %d ready in %.1f s (model load %.1f s in the worker): %s, %d parameters",
            self._proc.pid,
            time.perf_counter() - started,
            reply.get("startup_s", float("nan")),
            self.model_id,
            reply.get("parameters", -1),
        )

    def _drain_stderr(self) -> None:
        # Keep the tail for error messages and mirror it to the log; draining also keeps the worker from blocking
        # on a full stderr pipe.
        stream = self._proc.stderr
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            self._stderr_tail.append(line)
            logger.debug("lavis worker: %s", line)

    def _tail_text(self) -> str:
        if self._stderr_thread is not None and self._proc is not None and self._proc.poll() is not None:
            self._stderr_thread.join(timeout=2.0)
        tail = "\n".join(self._stderr_tail)
        return f"\nworker stderr (last lines):\n{tail}" if tail else ""

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self._reap(_SHUTDOWN_TIMEOUT_S)

    def _reap(self, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout=2.0)
        if proc.stderr is not None and not proc.stderr.closed:
            proc.stderr.close()

    def _died(self, op: str) -> LavisWorkerError:
        code = self._proc.poll() if self._proc is not None else None
        if code is None and self._proc is not None:
            try:
                code = self._proc.wait(timeout=_SHUTDOWN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                code = None
        return LavisWorkerError(f"LAVIS worker died during '{op}' (exit status {code}){self._tail_text()}")

    # ---------------------------------------------------------------------------------------------- framing

    def _send(self, header: dict, arrays: list[np.ndarray]) -> None:
        arrays = [np.ascontiguousarray(a) for a in arrays]
        header = dict(header, blobs=[{"dtype": a.dtype.str, "shape": list(a.shape)} for a in arrays])
        body = json.dumps(header).encode("utf-8")
        try:
            self._write(_HEADER.pack(len(body)) + body)
            for a in arrays:
                self._write(memoryview(a).cast("B"))
        except (BrokenPipeError, OSError):
            raise self._died(header.get("op", "?")) from None

    def _write(self, data) -> None:
        view = memoryview(data)
        while view:
            written = self._proc.stdin.write(view)
            view = view[written:]

    def _read_exact(self, n: int, op: str, deadline: float | None) -> bytes:
        chunks, remaining = [], n
        fd = self._proc.stdout.fileno()
        while remaining:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    raise TimeoutError
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                raise self._died(op)
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _receive(self, op: str, deadline: float | None = None) -> tuple[dict, list[np.ndarray]]:
        (length,) = _HEADER.unpack(self._read_exact(_HEADER.size, op, deadline))
        header = json.loads(self._read_exact(length, op, deadline).decode("utf-8"))
        arrays = []
        for blob in header.get("blobs", []):
            dtype = np.dtype(blob["dtype"])
            shape = tuple(blob["shape"])
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            arrays.append(np.frombuffer(self._read_exact(nbytes, op, deadline), dtype=dtype).reshape(shape))
        return header, arrays

    def _error_from(self, reply: dict, op: str) -> LavisWorkerError:
        logger.debug("LAVIS worker traceback for '%s':\n%s", op, reply.get("traceback", ""))
        return LavisWorkerError(f"LAVIS worker '{op}' failed: {reply.get('error_type')}: {reply.get('error')}")

    def _request(self, header: dict, arrays: list[np.ndarray]) -> tuple[dict, list[np.ndarray]]:
        """Send one request and return the reply; a timeout or a dead worker restarts the worker and retries the
        request once (see the module docstring)."""
        op, timeout = header["op"], self.cfg.lavis.request_timeout_s
        with self._lock:
            if self._proc is None:
                raise LavisWorkerError("the LAVIS captioner is closed")
            for attempt in (1, 2):
                try:
                    if self._proc.poll() is not None:
                        raise self._died(op)
                    self._send(header, arrays)
                    reply, blobs = self._receive(op, deadline=time.monotonic() + timeout)
                    break
                except (TimeoutError, LavisWorkerError) as exc:
                    why = (f"no reply within {timeout:g} s (captioner.lavis.request_timeout_s)"
                           if isinstance(exc, TimeoutError) else str(exc).split("\n", 1)[0])  # fmt: skip
                    self._kill()
                    if attempt == 2:
                        raise LavisWorkerError(f"LAVIS worker failed '{op}' twice, the second time: {why}; the "
                                               f"batch was not captioned{self._tail_text()}") from None  # fmt: skip
                    logger.warning("LAVIS worker pid %d: %s; restarting it and sending '%s' once more",
                                   self._proc.pid, why, op)  # fmt: skip
                    self.restarts += 1
                    self._stderr_tail.clear()
                    self._start(self._python, self._spec)
        if not reply.get("ok"):
            raise self._error_from(reply, op)
        return reply, blobs

    # ------------------------------------------------------------------------------------------------ public

    @staticmethod
    def _check_images(images: list[np.ndarray]) -> list[np.ndarray]:
        checked = []
        for i, image in enumerate(images):
            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"image {i}: expected uint8 RGB (H, W, 3), got {image.dtype} {image.shape}")
            checked.append(image)
        return checked

    def generate(self, images: list[np.ndarray]) -> list[str]:
        """One caption per uint8 RGB (H, W, 3) frame, prompt stripped, in batches of ``batch_size``."""
        images = self._check_images(images)
        gen = self.cfg.generation
        captions: list[str] = []
        for start in range(0, len(images), self.cfg.batch_size):
            chunk = images[start : start + self.cfg.batch_size]
            # Per-batch seed as in the transformers backend, so a given split of the input samples the same way.
            settings = dataclasses.asdict(gen) | {"seed": gen.seed + start}
            reply, _ = self._request({"op": "generate", "generation": settings}, chunk)
            captions.extend(reply["captions"])
        return captions

    def logits(self, images: list[np.ndarray], input_ids: np.ndarray) -> np.ndarray:
        """Decoder logits (B, L, V) float32 for the given token ids, used as given (to compare backends)."""
        images = self._check_images(images)
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[0] != len(images):
            raise ValueError(f"input_ids of shape {ids.shape}: expected ({len(images)}, L)")
        parts = []
        for start in range(0, len(images), self.cfg.batch_size):
            stop = start + self.cfg.batch_size
            _, blobs = self._request({"op": "logits"}, [*images[start:stop], ids[start:stop]])
            parts.append(blobs[0])
        return np.concatenate(parts) if parts else np.zeros((0, ids.shape[1], 0), dtype=np.float32)

    def worker_info(self) -> dict[str, Any]:
        """The worker's description: pid, versions, vocabulary size and special ids, parameter count."""
        reply, _ = self._request({"op": "info"}, [])
        return {k: v for k, v in reply.items() if k not in ("ok", "blobs")}

    def close(self) -> None:
        """Stop the worker (asks, then kills after a grace period) and reap it; safe to call twice."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                with self._lock:
                    self._send({"op": "shutdown"}, [])
                    self._receive("shutdown", deadline=time.monotonic() + _SHUTDOWN_TIMEOUT_S)
            except (LavisWorkerError, TimeoutError, OSError, ValueError):
                proc.kill()
        self._reap(_SHUTDOWN_TIMEOUT_S)
        self._proc = None

    def __enter__(self) -> LavisCaptioner:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass
