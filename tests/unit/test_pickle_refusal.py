"""Loading never unpickles arbitrary objects: a checkpoint or weights file holding a pickle payload (an object whose
``__reduce__`` creates a marker file) is refused by every loader, with an error naming the file, and the marker is
never created. DeepSpeed's checkpoints resume through :mod:`models.safe_load`, and a genuine one still round-trips."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import socket
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from models.safe_load import DEEPSPEED_GLOBALS, UnsafePickleError, load_deepspeed_checkpoint, load_weights_only
from pipelines.checkpointer import CKPT_TAG, Checkpointer
from pipelines.train_config import TrainConfig
from pipelines.train_loop import deepspeed_config


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: code a weights file must never be able to run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "the payload ran"


@pytest.fixture
def plant(marker):
    """Write, at a path, a torch.save file that looks like a state dict but runs the payload when unpickled."""

    def write(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"weight": torch.zeros(2, 2), "bias": _Payload(marker)}, path)
        return path

    return write


def test_the_payload_runs_code_when_fully_unpickled(tmp_path, plant):
    marker = tmp_path / "PWNED"
    torch.load(plant(tmp_path / "evil.pt"), weights_only=False)  # what DeepSpeed 0.19.8's own engine does
    assert marker.exists()
    marker.unlink()


# ------------------------------------------------------------------------------------------- weights loaders


def _scorer_loaders():
    from models.scorers import load_state_dict_file, load_weights

    return {
        "load_state_dict_file": load_state_dict_file,
        "load_weights": lambda p: load_weights(torch.nn.Linear(2, 2), p),
    }


@pytest.mark.parametrize("loader", ["load_state_dict_file", "load_weights"])
@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_the_scorers_weights_readers_refuse_a_pickle_payload_naming_the_file(tmp_path, plant, suffix, loader):
    path = plant(tmp_path / f"head{suffix}")
    with pytest.raises(UnsafePickleError, match=re.escape(f"{path}: refused to load: it needs the global io.open")):
        _scorer_loaders()[loader](path)


@pytest.mark.parametrize("loader", ["load_state_dict_file", "load_weights", "read_diffusers_lora"])
def test_safetensors_readers_refuse_a_pickle_named_safetensors_naming_the_file(tmp_path, plant, loader):
    from models.lora import read_diffusers_lora

    read = {**_scorer_loaders(), "read_diffusers_lora": read_diffusers_lora}[loader]
    path = plant(tmp_path / "weights.safetensors")
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a readable safetensors file")) as info:
        read(path)
    assert "never unpickled" in str(info.value)
    assert isinstance(info.value.__cause__, SafetensorError)


def test_the_image_to_video_adapter_refuses_a_pickle_payload_naming_the_file(tmp_path, plant):
    from diffusers import UNet2DConditionModel

    from models.adapters import WEIGHTS_NAME, ImageToVideoAdapter, load_i2v_adapter, save_i2v_adapter

    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), sample_size=16)  # fmt: skip
    out = save_i2v_adapter(ImageToVideoAdapter.from_unet_config(dict(unet.config), max_frames=8), tmp_path / "i2v")
    weights = plant(Path(out) / WEIGHTS_NAME)
    with pytest.raises(ValueError, match=re.escape(f"{weights}: not a readable safetensors file")):
        load_i2v_adapter(out)


def test_the_motion_adapter_loader_refuses_a_pickle_payload_naming_the_file(tmp_path, plant):
    from diffusers import MotionAdapter

    from models.video_unet import load_motion_adapter

    out = tmp_path / "motion"
    MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=4,
                  motion_max_seq_length=8).save_pretrained(str(out), safe_serialization=True)  # fmt: skip
    (weights,) = out.glob("*.safetensors")
    plant(weights)
    with pytest.raises(OSError, match=re.escape(f"Unable to load weights from checkpoint file for '{weights}'")):
        load_motion_adapter(out)


def test_the_captioner_refuses_a_pickle_payload_as_its_weights_naming_the_file(tmp_path, plant):
    from models.captioner import TransformersCaptioner
    from pipelines.config import load_config

    cfg = load_config("toy").captioner
    weights = Path(shutil.copytree(cfg.weights, tmp_path / "captioner", ignore=shutil.ignore_patterns("lavis")))
    planted = plant(weights / "model.safetensors")
    with pytest.raises(ValueError, match=re.escape(f"{planted}: not a readable safetensors file")) as info:
        TransformersCaptioner(dataclasses.replace(cfg, weights=str(weights)))
    assert isinstance(info.value.__cause__, SafetensorError)


def test_the_lavis_checkpoint_reader_refuses_a_payload_unless_trusted_which_is_off_by_default(tmp_path, plant):
    from models.captioner_config import LavisConfig
    from models.lavis_worker import _read_checkpoint

    assert LavisConfig().trusted_checkpoint is False
    path = plant(tmp_path / "blip_caption.pth")
    with pytest.raises(PermissionError, match=re.escape(f"checkpoint {path} cannot be loaded with weights_only=True")):
        _read_checkpoint(str(path), trusted=False)


def test_load_weights_only_names_the_file_and_the_refused_global(tmp_path, plant):
    path = plant(tmp_path / "evil.pt")
    with pytest.raises(UnsafePickleError, match=re.escape(f"{path}: refused to load: it needs the global io.open")):
        load_weights_only(path, allowed=DEEPSPEED_GLOBALS)
    torch.save({"w": torch.tensor([1.0, 2.0]), "step": 3}, tmp_path / "plain.pt")
    plain = load_weights_only(tmp_path / "plain.pt")
    assert plain["step"] == 3 and torch.equal(plain["w"], torch.tensor([1.0, 2.0]))


# ------------------------------------------------------------------------------------------- DeepSpeed resume


@pytest.fixture(scope="module")
def single_process_group():
    """One-process torch.distributed (gloo) as DeepSpeed expects without a launcher (see stack-facts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(port)}.items():  # fmt: skip
            mp.setenv(key, value)
        yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _engine(stage: int, seed: int):
    """A tiny DeepSpeed engine under the loop's own config (fp32 on CPU, AdamW, WarmupLR)."""
    import deepspeed

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    cfg = TrainConfig(zero_stage=stage, precision="fp32", micro_batch_size=2)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=list(model.parameters()),
                                      config=deepspeed_config(cfg))  # fmt: skip
    return engine


def _weights(engine) -> dict[str, torch.Tensor]:
    import deepspeed

    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=hasattr(params[0], "ds_id")):
        return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def saved(request, single_process_group, tmp_path_factory):
    """(ZeRO stage, checkpoint directory, the saving engine's weights) after two training steps."""
    stage = request.param
    engine = _engine(stage, seed=0)
    for _ in range(2):
        engine.backward(engine(torch.randn(2, 4)).pow(2).mean())
        engine.step()
    out = tmp_path_factory.mktemp(f"ds-zero{stage}")
    engine.save_checkpoint(str(out), tag=CKPT_TAG, client_state={"step": 2})
    return stage, out, _weights(engine)


def test_a_genuine_deepspeed_checkpoint_resumes_through_the_weights_only_engine(saved):
    stage, out, weights = saved
    engine = _engine(stage, seed=1)
    assert any(not torch.equal(v, weights[k]) for k, v in _weights(engine).items())  # a different start
    client = load_deepspeed_checkpoint(engine, out, tag=CKPT_TAG)
    assert client["step"] == 2 and engine.global_steps == 2
    assert all(torch.equal(v, weights[k]) for k, v in _weights(engine).items())


def test_a_deepspeed_checkpoint_file_holding_a_payload_is_refused_naming_it(saved, tmp_path, marker):
    stage, out, _ = saved
    tampered = Path(shutil.copytree(out, tmp_path / "tampered"))
    for path in sorted((tampered / CKPT_TAG).glob("*.pt")):
        state = load_weights_only(path, allowed=DEEPSPEED_GLOBALS)  # genuine, except for one planted entry
        state["alcm_payload"] = _Payload(marker)
        torch.save(state, path)
        with pytest.raises(UnsafePickleError, match=re.escape(f"{path}: refused to load: it needs the global io.open")):
            load_deepspeed_checkpoint(_engine(stage, seed=1), tampered, tag=CKPT_TAG)
        os.remove(path)
        shutil.copy(out / CKPT_TAG / path.name, path)  # restore it; the next file carries the payload


def test_a_missing_deepspeed_checkpoint_is_an_error_not_a_fresh_start(single_process_group, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint files"):
        load_deepspeed_checkpoint(_engine(2, seed=0), tmp_path, tag=CKPT_TAG)


def test_the_train_loops_resume_refuses_a_payload_and_resumes_a_genuine_checkpoint(saved, tmp_path, marker,
                                                                                   monkeypatch):  # fmt: skip
    """The checkpointer's restore as a Ray worker runs it (the checkpoint Ray hands over, here a local directory; no
    Ray)."""
    import ray.train

    stage, out, weights = saved
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: ray.train.Checkpoint.from_directory(str(out)))
    engine = _engine(stage, seed=1)
    assert Checkpointer(engine, task=None).restore() == 2  # no task_state.safetensors here: the task is not used
    assert all(torch.equal(v, weights[k]) for k, v in _weights(engine).items())

    tampered = Path(shutil.copytree(out, tmp_path / "tampered"))
    target = sorted((tampered / CKPT_TAG).glob("*optim_states.pt"))[0]
    torch.save({**load_weights_only(target, allowed=DEEPSPEED_GLOBALS), "alcm_payload": _Payload(marker)}, target)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: ray.train.Checkpoint.from_directory(str(tampered)))
    with pytest.raises(UnsafePickleError, match=re.escape(str(target))):
        Checkpointer(_engine(stage, seed=1), task=None).restore()
