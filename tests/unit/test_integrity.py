"""Integrity on load: every file a checkpoint's or dataset's manifest lists is checked against its recorded digest
by the stages and the eval that read it; one flipped byte or a missing file fails naming the file and both
digests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contracts.manifest import IntegrityError, files_map, verify_files
from pipelines import adapt, distill_image, distill_video, evaluate
from pipelines.stage_job import read_checkpoint, read_dataset

STAGES = {
    "stage1": ("distill_image", ["lora/pytorch_lora_weights.safetensors", "lora/adapter_config.json"]),
    "stage2": ("distill_video", ["pipeline/model_index.json", "pipeline/unet/weights.safetensors"]),
}


def read_stage1(path):
    """What stage 2 does with its --stage1 input."""
    return read_checkpoint(path, stage="distill_image", needs=(distill_video.STAGE1_LORA,), option="--stage1",
                           what="stage 1's output")  # fmt: skip


def read_stage2(path):
    """What stage 3 does with its --input."""
    return read_checkpoint(path, stage="distill_video", needs=("pipeline/model_index.json",), option="--input",
                           what="stage 2's output")  # fmt: skip


def read_images(path):
    return read_dataset(path, columns=distill_image.COLUMNS, what="a curated image dataset")


def read_videos(path):
    return read_dataset(path, columns=distill_video.COLUMNS, what="a curated video dataset")


def read_dancers(path):
    return read_dataset(path, columns=("key", "caption", "frames"), what=adapt.DATA["control"][2])


def _checkpoint(root: Path, which: str) -> Path:
    stage, files = STAGES[which]
    out = root / which
    digests = {}
    for i, rel in enumerate(files):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes(range(256)) * (i + 3))
        digests[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = {"kind": "checkpoint", "stage": stage, "files": digests, "digest": "sha256:1"}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _flip(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_an_intact_checkpoint_verifies_every_listed_file(tmp_path):
    out = _checkpoint(tmp_path, "stage1")
    assert verify_files(out) == 2
    (out / "manifest.json").write_text(json.dumps({"kind": "eval-report", "files": ["a"]}))
    assert verify_files(out) == 0  # a list of files (an eval report's) is not a digest map: nothing to check


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
        ("stage2", evaluate.read_checkpoint, "pipeline/model_index.json"),
    ],
)
def test_the_readers_of_a_checkpoint_refuse_a_corrupted_one(tmp_path, which, read, victim):
    out = _checkpoint(tmp_path, which)
    read(out)  # intact: accepted
    _flip(out / victim, offset=5)
    with pytest.raises(IntegrityError, match=victim.split("/")[-1].replace(".", r"\.")):
        read(out)


def _dataset(root: Path, table_dir: str, columns: dict) -> Path:
    out = root / table_dir
    (out / table_dir).mkdir(parents=True)
    (out / "audit").mkdir()
    for i in range(2):
        pq.write_table(pa.table(columns), out / table_dir / f"part-{i}.parquet")
    pq.write_table(pa.table({"id": ["a", "b"], "decision": ["kept", "rejected"]}), out / "audit" / "part-0.parquet")
    manifest = {"kind": "dataset", "digest": "sha256:" + "0" * 64, "files": files_map(out, (table_dir, "audit"))}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.mark.parametrize(
    ("read", "table_dir", "columns"),
    [
        (read_images, "kept", {"key": ["a"], "caption": ["c"], "image": [b"x"]}),
        (read_videos, "kept", {"key": ["a"], "caption": ["c"], "frames": [[b"x"]]}),
        (read_dancers, "captioned", {"key": ["a"], "caption": ["c"], "frames": [[b"x"]]}),
    ],
)
def test_the_readers_of_a_dataset_refuse_a_corrupted_shard_naming_it(tmp_path, read, table_dir, columns):
    out = _dataset(tmp_path, table_dir, columns)
    assert sorted(json.loads((out / "manifest.json").read_text())["files"]) == [
        "audit/part-0.parquet", f"{table_dir}/part-0.parquet", f"{table_dir}/part-1.parquet"]
    assert len(read(out).files) == 2  # intact: accepted
    _flip(out / table_dir / "part-1.parquet", offset=8)
    with pytest.raises(IntegrityError, match=rf"{table_dir}/part-1\.parquet: content digest sha256:\w+ does not"):
        read(out)


def test_a_shard_added_after_publishing_is_refused_naming_it(tmp_path):
    out = _dataset(tmp_path, "kept", {"key": ["a"], "caption": ["c"], "image": [b"x"]})
    pq.write_table(pa.table({"key": ["z"], "caption": ["c"], "image": [b"y"]}), out / "kept" / "zz-extra.parquet")
    with pytest.raises(IntegrityError, match=r"1 data file\(s\) not listed .*kept/zz-extra\.parquet"):
        read_images(out)
