"""Checkpoint integrity on load: every file a checkpoint's manifest lists is checked against its recorded digest by
the stages and the eval that read it; one flipped byte or a missing file fails naming the file and both digests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pipelines.adapt import read_stage2
from pipelines.distill_video import read_stage1
from pipelines.evaluate import read_checkpoint
from registry.manifest import IntegrityError, verify_files

STAGES = {
    "stage1": ("image_consistency_distillation", ["lora/pytorch_lora_weights.safetensors", "lora/adapter_config.json"]),
    "stage2": ("video_consistency_distillation", ["pipeline/model_index.json", "pipeline/unet/weights.safetensors"]),
}


def _checkpoint(root: Path, which: str) -> Path:
    stage, files = STAGES[which]
    out = root / which
    digests = {}
    for i, rel in enumerate(files):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes(range(256)) * (i + 3))
        digests[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps({"kind": "checkpoint", "stage": stage, "files": digests}))
    return out


def _flip(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_an_intact_checkpoint_verifies_every_listed_file(tmp_path):
    out = _checkpoint(tmp_path, "stage1")
    assert verify_files(out) == 2
    (out / "manifest.json").write_text(json.dumps({"kind": "dataset", "digest": "sha256:00", "files": ["a"]}))
    assert verify_files(out) == 0  # a dataset's digest covers its table; no per-file map to check


def test_one_flipped_byte_names_the_file_and_both_digests(tmp_path):
    out = _checkpoint(tmp_path, "stage1")
    weights = out / "lora" / "pytorch_lora_weights.safetensors"
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()
    _flip(weights)
    actual = hashlib.sha256(weights.read_bytes()).hexdigest()
    with pytest.raises(IntegrityError) as err:
        verify_files(out)
    message = str(err.value)
    assert str(weights) in message and f"sha256:{actual}" in message and f"sha256:{expected}" in message
    assert isinstance(err.value, ValueError)  # a data error: the retrain flow does not retry it


def test_a_missing_file_is_named(tmp_path):
    out = _checkpoint(tmp_path, "stage2")
    (out / "pipeline" / "unet" / "weights.safetensors").unlink()
    with pytest.raises(IntegrityError, match=r"weights\.safetensors is missing"):
        verify_files(out)


@pytest.mark.parametrize(
    ("which", "read", "victim"),
    [
        ("stage1", read_stage1, "lora/adapter_config.json"),
        ("stage2", read_stage2, "pipeline/unet/weights.safetensors"),
        ("stage2", read_checkpoint, "pipeline/model_index.json"),
    ],
)
def test_the_readers_of_a_checkpoint_refuse_a_corrupted_one(tmp_path, which, read, victim):
    out = _checkpoint(tmp_path, which)
    read(out)  # intact: accepted
    _flip(out / victim, offset=5)
    with pytest.raises(IntegrityError, match=victim.split("/")[-1].replace(".", r"\.")):
        read(out)
