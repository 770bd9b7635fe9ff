"""Image scorers used by curation: CLIP image-text similarity, LAION aesthetic score, LAION watermark probability.

One `ImageTextScorer` loads the three models once (per Ray actor) and scores batches of decoded images with their
captions. The same code serves both profiles; only the config differs:

- ``sd15``: open_clip ``ViT-L-14`` (OpenAI/LAION layout), the LAION "improved aesthetic predictor" MLP on its 768-d
  embeddings, and LAION's watermark detector (timm ``efficientnet_b3a`` with a 3-layer head, 256x256 input).
- ``toy``: the same classes at tiny size, trained on the synthetic toy world by ``toyworld/scorers.py``
  (open_clip config ``alcm-toy-clip`` shipped in ``models/open_clip_configs/``, a ``toy_cnn`` watermark detector).
  ``alcm-toy-clip`` uses open_clip's ModifiedResNet image tower (the OpenAI RN50 CLIP design, at width 16) rather
  than a ViT: measured on 2 CPU cores, a 64x64/8 ViT learned almost nothing about shape in 150 steps while taking
  6x longer per step, and the toy curation must catch captions with a wrong shape word.

Decisions, written down here because the rest of the code relies on them:

- Weights are always local files (``.safetensors``, or ``.pt``/``.pth``/``.bin`` read with
  ``torch.load(weights_only=True)``), loaded strictly: a missing or unexpected key is an error, never a silent
  partial load. A missing path raises ``FileNotFoundError`` naming it. ``weights=None`` means random initialisation
  and exists for tests only. Nothing is ever downloaded (``open_clip.create_model(name, pretrained=None)``).
- Weight files hold the public key layouts, with no wrapper prefix: open_clip's CLIP state dict, the LAION aesthetic
  MLP's ``layers.{0,2,4,6,7}``, and the bare timm model for the watermark detector (``classifier.{0,3,5}``), so the
  public checkpoints load as they are. fp16-stored files are fine: they are copied into fp32 parameters.
- ``clip_score`` is ``100 * cos(image_embedding, text_embedding)`` of L2-normalised embeddings, the open_clip /
  CLIPScore convention, but NOT clamped at 0 (torchmetrics' CLIPScore clamps): thresholds are calibrated on the raw
  value. Range [-100, 100].
- ``aesthetic_score`` is the MLP's raw output on the L2-normalised CLIP image embedding (LAION's recipe). Its range
  depends on the weights: about 1..10 for LAION's sd15 predictor, about 0..1 for the toy head (trained to 1.0 for clean
  images, 0.0 for blurred/noisy ones). Higher is better in both.
- ``watermark_prob`` is ``softmax(logits)[positive_index]``; LAION's detector puts "watermarked" at index 0.
- Preprocessing follows each model's own recipe: CLIP resizes the shortest side (bicubic) then centre-crops and uses
  the normalisation stored by open_clip on ``model.visual.preprocess_cfg`` (OpenAI mean/std); the watermark detector
  resizes to a square (bilinear, like LAION's ``Resize((256, 256))``) and uses ImageNet mean/std (the toy CNN too).
- The bundled ``models/open_clip_configs`` directory is always registered with open_clip, so ``alcm-toy-clip``
  resolves without extra settings; ``ClipConfig.model_config_dir`` adds another directory.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import safetensors.torch
import timm
import torch
from PIL import Image
from torch import nn

from models.safe_load import load_safetensors, load_weights_only
from models.scorer_config import (  # noqa: F401 - re-exported: the configs belong with their models
    BUNDLED_OPEN_CLIP_CONFIG_DIR,
    WATERMARK_ARCHS,
    WEIGHT_SUFFIXES,
    AestheticConfig,
    ClipConfig,
    ScorersConfig,
    WatermarkConfig,
)

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_LAION_WATERMARK_FEATURES = 1536  # efficientnet_b3's pooled feature width, the input of LAION's head


# --------------------------------------------------------------------------------------------------- weights I/O


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict safely from a local file: safetensors, or torch.load(weights_only=True).

    A ``{"state_dict": ...}`` wrapper and a DataParallel ``module.`` prefix on every key are removed. A file that
    cannot be read that way (a pickle needing anything but tensors and plain containers, or a ``.safetensors`` file
    that is not safetensors) is refused, never unpickled, with an error naming it (see :mod:`models.safe_load`).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file {p} does not exist")
    if p.suffix == ".safetensors":
        state = load_safetensors(p)
    elif p.suffix in WEIGHT_SUFFIXES:
        state = load_weights_only(p)
        if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
            state = state["state_dict"]
        if not isinstance(state, Mapping):
            raise ValueError(f"weights file {p}: holds a {type(state).__name__}, expected a state dict")
    else:
        raise ValueError(f"weights file {p}: unknown suffix {p.suffix!r}; use one of {', '.join(WEIGHT_SUFFIXES)}")
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _require_weights(key: str, path: str | None) -> None:
    """Fail before building a model whose configured weights file is missing, naming the config key."""
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"{key}: {path} does not exist")


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load a local state dict into ``module`` strictly; key or shape mismatches raise with the path named."""
    state = load_state_dict_file(path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise RuntimeError(f"weights file {path} does not match {type(module).__name__}: {e}") from e


def save_weights(module: nn.Module, path: str | Path, *, dtype: torch.dtype | None = None) -> None:
    """Write ``module``'s state dict as safetensors (optionally cast floating tensors, e.g. fp16 for small files)."""
    state = {}
    for k, v in module.state_dict().items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        state[k] = v.contiguous()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(state, str(path))


# --------------------------------------------------------------------------------------------------- models

_registered_config_dirs: set[Path] = set()


def register_open_clip_configs(directory: str | Path) -> None:
    """Register a directory of open_clip model config JSONs (idempotent)."""
    d = Path(directory).resolve()
    if d in _registered_config_dirs:
        return
    if not d.is_dir():
        raise FileNotFoundError(f"open_clip model config directory {d} does not exist")
    open_clip.add_model_config(d)
    _registered_config_dirs.add(d)


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    """open_clip warns on the root logger that the model is random whenever ``pretrained=None``; we load the weights
    ourselves right after, so the warning would be false (and we warn ourselves when there are none)."""
    root, drop = logging.getLogger(), _DropRandomInitWarning()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def build_clip(
    cfg: ClipConfig, *, device: str | torch.device = "cpu", meta: bool = False
) -> tuple[nn.Module, int, Any]:
    """Build the open_clip model named by ``cfg`` and load its local weights.

    Returns ``(model, preprocess_size, tokenizer)``. With ``meta=True`` the model is built on the meta device (names
    and shapes only, no memory, no weights loaded): the way the sd15 shapes are tested on machines without weights.
    The model is returned in eval mode.
    """
    register_open_clip_configs(BUNDLED_OPEN_CLIP_CONFIG_DIR)
    if cfg.model_config_dir is not None:
        register_open_clip_configs(cfg.model_config_dir)
    if cfg.model not in open_clip.list_models():
        raise ValueError(
            f"clip.model={cfg.model!r}: no open_clip config of that name; set clip.model_config_dir to the directory "
            f"holding {cfg.model}.json, or use a built-in name such as 'ViT-L-14'"
        )
    if meta:
        with torch.device("meta"), _quiet_random_init_warning():
            model = open_clip.create_model(cfg.model, pretrained=None, device="meta")
    else:
        _require_weights("clip.weights", cfg.weights)
        with _quiet_random_init_warning():
            model = open_clip.create_model(cfg.model, pretrained=None, device=device)
        if cfg.weights is not None:
            load_weights(model, cfg.weights)
            model.to(device)
        else:
            logger.warning("clip.weights is null: %s is randomly initialised (tests only)", cfg.model)
    model_size = model.visual.image_size
    model_size = model_size[0] if isinstance(model_size, tuple | list) else model_size
    if model_size != cfg.image_size:
        raise ValueError(
            f"clip.image_size={cfg.image_size}: model {cfg.model} takes {model_size}x{model_size} images; "
            f"set clip.image_size to {model_size}"
        )
    tokenizer = open_clip.get_tokenizer(cfg.model)
    return model.eval(), cfg.image_size, tokenizer


def clip_embed_dim(model: nn.Module) -> int:
    """Width of an open_clip model's joint embedding space."""
    output_dim = getattr(model.visual, "output_dim", None)
    if output_dim is None:
        raise ValueError(f"{type(model.visual).__name__} has no output_dim; cannot tell the CLIP embedding width")
    return int(output_dim)


class AestheticMLP(nn.Module):
    """LAION improved-aesthetic-predictor MLP: ``layers.0/2/4/6/7`` are the Linear layers, so public weights load.

    Input: L2-normalised CLIP image embeddings ``(N, input_dim)``; output ``(N, 1)`` scores. Like LAION's, it has no
    activation functions: the score is an affine function of the embedding (the dropouts only act in training).
    """

    def __init__(self, input_dim: int = 768, hidden: Sequence[int] = (1024, 128, 64, 16)) -> None:
        super().__init__()
        h1, h2, h3, h4 = hidden
        self.input_dim = input_dim
        self.layers = nn.Sequential(
            nn.Linear(input_dim, h1),
            nn.Dropout(0.2),
            nn.Linear(h1, h2),
            nn.Dropout(0.2),
            nn.Linear(h2, h3),
            nn.Dropout(0.1),
            nn.Linear(h3, h4),
            nn.Linear(h4, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def build_aesthetic(cfg: AestheticConfig, *, device: str | torch.device = "cpu", meta: bool = False) -> AestheticMLP:
    """Build the aesthetic MLP and load its local weights (eval mode)."""
    if meta:
        with torch.device("meta"):
            return AestheticMLP(cfg.input_dim, cfg.hidden).eval()
    _require_weights("aesthetic.weights", cfg.weights)
    model = AestheticMLP(cfg.input_dim, cfg.hidden)
    if cfg.weights is not None:
        load_weights(model, cfg.weights)
    return model.to(device).eval()


class ToyWatermarkCNN(nn.Module):
    """Tiny watermark classifier for 64x64 toy images (~60k parameters, ~0.1 s per training step of 128 on 2 cores).

    Four 3x3 convolutions (three of them stride 2, 64 -> 8 pixels; striding first keeps the full-resolution layer
    out of the cost, ten times cheaper on CPU than a stride-1 stem), then average AND max global pooling: a watermark
    is a small, localised overlay, and max pooling keeps its evidence from being averaged away over the image.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(4 * w, 4 * w, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(nn.Linear(8 * w, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.classifier(pooled)


def build_watermark_net(arch: str) -> nn.Module:
    """The bare detector network (its state dict is the weights-file layout); logits of shape ``(N, 2)``."""
    if arch == "efficientnet_b3a":
        # LAION's detector: timm efficientnet_b3a with a 3-layer head. timm now maps the name to efficientnet_b3 (same
        # architecture; "a" only named another pretrained tag) and warns about it on every build.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Mapping deprecated model name", category=UserWarning)
            net = timm.create_model("efficientnet_b3a", pretrained=False, num_classes=2)
        net.classifier = nn.Sequential(
            nn.Linear(_LAION_WATERMARK_FEATURES, 625),
            nn.ReLU(),
            nn.Dropout(p=0.3),
            nn.Linear(625, 256),
            nn.ReLU(),
            nn.Linear(256, 2),
        )
        return net
    elif arch == "toy_cnn":
        return ToyWatermarkCNN()
    else:
        raise ValueError(f"watermark.arch={arch!r}: must be one of {', '.join(WATERMARK_ARCHS)}")


class WatermarkDetector(nn.Module):
    """Watermark classifier returning the probability that an image is watermarked.

    ``net`` is the bare network (timm efficientnet_b3a with LAION's head, or `ToyWatermarkCNN`); weight files hold
    ``net``'s state dict, with no prefix, so LAION's public checkpoint loads as it is.
    """

    def __init__(self, arch: str = "efficientnet_b3a", positive_index: int = 0) -> None:
        super().__init__()
        self.arch = arch
        self.positive_index = positive_index
        self.net = build_watermark_net(arch)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Raw 2-way logits for ImageNet-normalised images ``(N, 3, S, S)``."""
        return self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Watermark probability ``(N,)``: softmax over the two logits, taken at ``positive_index``."""
        return self.net(x).softmax(dim=-1)[:, self.positive_index]


def build_watermark(
    cfg: WatermarkConfig, *, device: str | torch.device = "cpu", meta: bool = False
) -> WatermarkDetector:
    """Build the watermark detector and load its local weights into ``.net`` (eval mode)."""
    if meta:
        with torch.device("meta"):
            return WatermarkDetector(cfg.arch, cfg.positive_index).eval()
    _require_weights("watermark.weights", cfg.weights)
    detector = WatermarkDetector(cfg.arch, cfg.positive_index)
    if cfg.weights is not None:
        load_weights(detector.net, cfg.weights)
    return detector.to(device).eval()


# --------------------------------------------------------------------------------------------------- preprocessing


def _check_image(i: int, img: Any) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        desc = f"{type(img).__name__} {getattr(img, 'dtype', '')} {getattr(img, 'shape', '')}".strip()
        raise ValueError(f"images[{i}]: {desc}; expected a uint8 HxWx3 RGB numpy array")
    return img


def resize_shortest_center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """open_clip's eval transform on a uint8 HxWx3 array: bicubic resize of the shortest side, centre crop."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    resized = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BICUBIC))
    top, left = (nh - size) // 2, (nw - size) // 2
    return resized[top : top + size, left : left + size]


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize to ``size x size`` ignoring aspect ratio (LAION watermark detector's ``Resize((S, S))``)."""
    if img.shape[:2] == (size, size):
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))


def to_normalised_tensor(
    images: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float], device: torch.device
) -> torch.Tensor:
    """Stack same-size uint8 HxWx3 arrays into a normalised float ``(N, 3, H, W)`` tensor."""
    x = torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=device).view(1, 3, 1, 1)
    return (x - m) / s


# --------------------------------------------------------------------------------------------------- scorer


class ClipScorer:
    """CLIP image and text embeddings (L2-normalised) for image-text similarity; only the CLIP model is loaded.

    Used alone where only CLIP similarity is needed (choosing among caption candidates); `ImageTextScorer` adds the
    aesthetic and watermark models.
    """

    def __init__(self, cfg: ScorersConfig) -> None:
        self.cfg = cfg
        torch.set_num_threads(cfg.torch_threads)
        self.device = torch.device(cfg.device)
        self.clip, self.clip_size, self.tokenizer = build_clip(cfg.clip, device=self.device)
        preprocess_cfg = getattr(self.clip.visual, "preprocess_cfg", {}) or {}
        self.clip_mean = tuple(preprocess_cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.clip_std = tuple(preprocess_cfg.get("std", open_clip.OPENAI_DATASET_STD))

    @property
    def embed_dim(self) -> int:
        """Width of the CLIP embedding space."""
        return clip_embed_dim(self.clip)

    def _chunks(self, n: int) -> range:
        return range(0, n, self.cfg.batch_size)

    def _clip_pixels(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        crops = [resize_shortest_center_crop(img, self.clip_size) for img in images]
        return to_normalised_tensor(crops, self.clip_mean, self.clip_std, self.device)

    def _image_features(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return nn.functional.normalize(self.clip.encode_image(self._clip_pixels(images)).float(), dim=-1)

    def _text_features(self, captions: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(captions)).to(self.device)
        return nn.functional.normalize(self.clip.encode_text(tokens).float(), dim=-1)

    def image_embeddings(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """L2-normalised CLIP image embeddings, float32 ``(N, embed_dim)``."""
        images = [_check_image(i, img) for i, img in enumerate(images)]
        out = np.zeros((len(images), self.embed_dim), dtype=np.float32)
        with torch.inference_mode():
            for s in self._chunks(len(images)):
                out[s : s + self.cfg.batch_size] = (
                    self._image_features(images[s : s + self.cfg.batch_size]).cpu().numpy()
                )
        return out

    def text_embeddings(self, captions: Sequence[str]) -> np.ndarray:
        """L2-normalised CLIP text embeddings, float32 ``(N, embed_dim)``."""
        captions = list(captions)
        out = np.zeros((len(captions), self.embed_dim), dtype=np.float32)
        with torch.inference_mode():
            for s in self._chunks(len(captions)):
                out[s : s + self.cfg.batch_size] = (
                    self._text_features(captions[s : s + self.cfg.batch_size]).cpu().numpy()
                )
        return out


class ImageTextScorer(ClipScorer):
    """CLIP score, aesthetic score and watermark probability for batches of images with captions.

    Build once per process or Ray actor (it loads three models), then call `score` per batch.
    """

    def __init__(self, cfg: ScorersConfig) -> None:
        super().__init__(cfg)
        embed_dim = clip_embed_dim(self.clip)
        if cfg.aesthetic.input_dim != embed_dim:
            raise ValueError(
                f"aesthetic.input_dim={cfg.aesthetic.input_dim}: CLIP model {cfg.clip.model} embeds images to "
                f"{embed_dim} dims; set aesthetic.input_dim to {embed_dim}"
            )
        self.aesthetic = build_aesthetic(cfg.aesthetic, device=self.device)
        self.watermark = build_watermark(cfg.watermark, device=self.device)
        logger.info(
            "scorers loaded: clip=%s (%s), aesthetic=%s, watermark=%s (%s) on %s",
            cfg.clip.model,
            cfg.clip.weights or "random init",
            cfg.aesthetic.weights or "random init",
            cfg.watermark.arch,
            cfg.watermark.weights or "random init",
            self.device,
        )

    def _watermark_pixels(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        size = self.cfg.watermark.input_size
        return to_normalised_tensor(
            [resize_square(img, size) for img in images], IMAGENET_MEAN, IMAGENET_STD, self.device
        )

    def score(self, images: Sequence[np.ndarray], captions: Sequence[str]) -> dict[str, np.ndarray]:
        """Score images with their captions.

        Args:
            images: uint8 HxWx3 RGB arrays, any size (each model resizes to its own input).
            captions: one caption per image.

        Returns:
            float32 arrays of length N: ``clip_score`` (100 x cosine similarity, not clamped, in [-100, 100]),
            ``aesthetic_score`` (higher is better; range set by the weights, see the module docstring) and
            ``watermark_prob`` (in [0, 1]).
        """
        images = [_check_image(i, img) for i, img in enumerate(images)]
        captions = list(captions)
        if len(images) != len(captions):
            raise ValueError(f"score: {len(images)} images but {len(captions)} captions; pass one caption per image")
        n = len(images)
        out = {name: np.zeros(n, dtype=np.float32) for name in ("clip_score", "aesthetic_score", "watermark_prob")}
        with torch.inference_mode():
            for s in self._chunks(n):
                e = s + self.cfg.batch_size
                image_features = self._image_features(images[s:e])
                text_features = self._text_features(captions[s:e])
                out["clip_score"][s:e] = (100.0 * (image_features * text_features).sum(dim=-1)).cpu().numpy()
                out["aesthetic_score"][s:e] = self.aesthetic(image_features).squeeze(-1).float().cpu().numpy()
                out["watermark_prob"][s:e] = self.watermark(self._watermark_pixels(images[s:e])).float().cpu().numpy()
        return out
