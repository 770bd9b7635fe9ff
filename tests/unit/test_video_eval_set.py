"""A prompt set of real videos from a curated text-video dataset: captions with enough clips become prompts, their
clips sets A and B in dataset order, and the evaluation reads it as any prompt set."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from contracts.evalset import REFERENCE_B, read_reference
from contracts.manifest import Manifest, files_map, write_manifest
from models.video_io import encode_png
from pipelines.config import load_config
from pipelines.video_eval_set import write_video_eval_set


def clip(value: int, frames: int = 4) -> list[bytes]:
    return [encode_png(np.full((32, 32, 3), value + t, dtype=np.uint8)) for t in range(frames)]


@pytest.fixture
def curated(tmp_path):
    """A curated text-video dataset: 'a' has 3 clips, 'b' 2 (one of them too short), 'c' 2."""
    rows = [("a", clip(10)), ("b", clip(20)), ("a", clip(30)), ("c", clip(40)), ("b", clip(50, frames=2)),
            ("a", clip(60)), ("c", clip(70)), ("b", clip(80))]  # fmt: skip
    out = tmp_path / "curated"
    (out / "kept").mkdir(parents=True)
    pq.write_table(pa.table({"caption": [c for c, _ in rows], "frames": [f for _, f in rows]}),
                   out / "kept" / "part-00000.parquet")  # fmt: skip
    files = files_map(out)
    write_manifest(out, Manifest(name="curated", kind="text-video-dataset", job="curate_videos", inputs=[], config={},
                                 digest="sha256:" + "0" * 64, code_version="test", files=files))  # fmt: skip
    return out


def test_captions_with_enough_clips_become_prompts_with_sets_a_and_b_in_dataset_order(curated, tmp_path):
    out = tmp_path / "set"
    manifest = write_video_eval_set(curated, out, prompts=3, videos_per_prompt=1, frames=4, size=16, seed=7)
    assert [p["caption"] for p in yaml.safe_load((out / "prompts.yaml").read_text())] == ["a", "b", "c"]
    assert manifest["config"] == {"seed": 7, "prompts": 3, "videos_per_prompt": 1, "frames": 4, "size": 16,
                                  "skipped_short_clips": 1}  # fmt: skip
    assert manifest["inputs"]["dataset"]["digest"] == "sha256:" + "0" * 64
    # item 1 is 'b': set A its first clip (value 20), set B its next full-length one (80; the 2-frame clip skipped)
    a, b = read_reference(out, 1, 16), read_reference(out, 1, 16, which=REFERENCE_B)
    assert a.shape == (4, 16, 16, 3) and int(a[0, 0, 0, 0]) == 20 and int(a[3, 0, 0, 0]) == 23
    assert int(b[0, 0, 0, 0]) == 80
    assert int(read_reference(out, 0, 16, which=REFERENCE_B)[0, 0, 0, 0]) == 30  # 'a': A = 10, B = 30
    # the evaluation reads it as a prompt set with reference sets A and B
    from pipelines.evaluate import load_prompts

    cfg = load_config("toy", [f"evaluate.prompts={out}", "evaluate.seed=7", "evaluate.num_prompts=3",
                              "evaluate.videos_per_prompt=1"])  # fmt: skip
    prompt_set = load_prompts(cfg, "video")
    assert [p["caption"] for p in prompt_set.prompts] == ["a", "b", "c"] and prompt_set.reference == out
    assert json.loads((out / "manifest.json").read_text())["kind"] == "eval-set"


def test_too_few_captions_with_enough_clips_is_an_error_naming_the_counts(curated, tmp_path):
    with pytest.raises(ValueError, match="0 captions have 4 clips of at least 4 frames.*asks for 1"):
        write_video_eval_set(curated, tmp_path / "x", prompts=1, videos_per_prompt=2, frames=4, size=16, seed=1)
    with pytest.raises(ValueError, match="3 captions have 2 clips of at least 4 frames.*asks for 4"):
        write_video_eval_set(curated, tmp_path / "x", prompts=4, videos_per_prompt=1, frames=4, size=16, seed=1)
    with pytest.raises(ValueError, match="--videos-per-prompt 0"):
        write_video_eval_set(curated, tmp_path / "x", prompts=1, videos_per_prompt=0, frames=4, size=16, seed=1)
    with pytest.raises(FileNotFoundError, match="curated text-video dataset"):
        write_video_eval_set(tmp_path / "nothing", tmp_path / "x", prompts=1, videos_per_prompt=1, frames=4, size=16,
                             seed=1)  # fmt: skip
