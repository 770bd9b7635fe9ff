"""Video curation and recaptioning from and to an object store speaking S3 (moto's server): the sources, rows and
decisions of the same job on a local copy of the input, the inputs' digests of that copy, and one committed attempt
prefix as the only output."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from contracts import storage
from contracts.manifest import output_root, read_manifest
from contracts.publish import ATTEMPTS
from pipelines.config import load_config
from pipelines.runtime import run_job
from pipelines.video_ingest import inputs_with_digests
from pipelines.video_sources import discover_videos, localize, read_video_source

BUCKET = "alcm-videos"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """A mixed raw root: six toy mp4 clips with caption sidecars (one with a metadata sidecar), a webdataset tar of
    the same clips, two dancer sequences with pose files (one with a caption, a densepose folder and a stray file),
    and files that are no input."""
    from toyworld.generate import generate_world

    world = tmp_path_factory.mktemp("toyvid-s3") / "world"
    generate_world(world, seed=4343, images=0, videos=6, dancers=2)
    raw = world.parent / "raw"
    shutil.copytree(world / "videos" / "mp4", raw / "videos" / "mp4")
    shutil.copytree(world / "videos" / "wds", raw / "videos" / "wds")
    shutil.copytree(world / "dancers", raw / "dancers")
    first_clip = sorted((raw / "videos" / "mp4").glob("*.mp4"))[0]
    first_clip.with_suffix(".json").write_text('{"url": "toy://first"}')
    seq = sorted(p for p in (raw / "dancers").iterdir() if p.is_dir())[0]
    (seq / "caption.txt").write_text("a dancer in a toy world")
    (seq / "densepose").mkdir()
    (seq / "densepose" / "0001.png").write_bytes((seq / "images" / "0001.png").read_bytes())
    (seq / "notes.md").write_text("not part of the sequence")
    (raw / "README.md").write_text("not an input")
    return raw


@pytest.fixture(scope="module")
def bucket(s3_server, raw) -> str:
    """``raw`` uploaded under ``s3://alcm-videos/raw/``."""
    s3_server.create_bucket(Bucket=BUCKET)
    for f in sorted(p for p in raw.rglob("*") if p.is_file()):
        s3_server.upload_file(str(f), BUCKET, f"raw/{f.relative_to(raw).as_posix()}")
    return f"s3://{BUCKET}"


def _run_on_s3(job: str, src: str, out: str, tmp: Path) -> dict:
    """``python -m pipelines.<job>`` on URIs, in a process of its own: its local Ray's workers get the object store's
    environment (the session's Ray started before the store did)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALCM_", "RAY_ADDRESS"))}
    env["ALCM_REGISTRY_DIR"] = str(tmp / "registry")
    args = [sys.executable, "-m", f"pipelines.{job}", "--input", src, "--output", out, "--config", "toy"]
    run = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return read_manifest(out)


def _both(job: str, raw: Path, bucket: str, rel: str, tmp: Path) -> tuple[dict, Path, dict, str]:
    """(local manifest, local output, object-store manifest, object-store output) of ``job`` on ``raw/rel``."""
    local = run_job(job, load_config("toy"), raw / rel, tmp / "local")
    out = f"{bucket}/{job}/out"
    return local.manifest, Path(local.output), _run_on_s3(job, f"{bucket}/raw/{rel}", out, tmp), out


@pytest.fixture(scope="module")
def curated_pair(raw, bucket, ray_local, tmp_path_factory):
    return _both("curate_videos", raw, bucket, "", tmp_path_factory.mktemp("curate-videos-s3"))


@pytest.fixture(scope="module")
def recaptioned_pair(raw, bucket, ray_local, tmp_path_factory):
    return _both("recaption", raw, bucket, "dancers", tmp_path_factory.mktemp("recaption-s3"))


def _ids(location: str | Path, table: str) -> list[str]:
    fs, path = storage.filesystem(storage.join(location, table))
    return sorted(pq.read_table(path, columns=["id"], filesystem=fs).column("id").to_pylist())


def _assert_same_result_as_the_local_copy(pair: tuple, table: str, rel: str, bucket: str) -> None:
    local, local_out, remote, out = pair
    assert remote["counts"] == local["counts"] and remote["digest"] == local["digest"]
    counts = remote["counts"]
    assert counts["clips"] == sum(counts["by_decision"].values()) and counts["input"] > 0
    assert _ids(output_root(out, remote), table) == _ids(local_out, table)
    assert _ids(output_root(out, remote), "audit") == _ids(local_out, "audit")
    assert remote["input_root"] == storage.join(f"{bucket}/raw", rel)
    assert remote["inputs"] == local["inputs"] and remote["ignored_files"] == local["ignored_files"]


def _assert_only_the_committed_attempt_is_left(out: str, manifest: dict, tables: tuple[str, ...]) -> None:
    root = output_root(out, manifest)
    attempt = manifest["storage_root"]
    assert attempt.startswith(f"{ATTEMPTS}/") and root == storage.join(out, attempt)
    in_attempt = {rel for rel, _ in storage.list_files(root)}
    assert in_attempt == set(manifest["files"]) | {"manifest.json"}
    assert {rel.split("/", 1)[0] for rel in manifest["files"]} == set(tables)
    assert {rel for rel, _ in storage.list_files(out)} == {"manifest.json"} | {f"{attempt}/{r}" for r in in_attempt}


@pytest.mark.parametrize("rel", ["", "dancers/dance-4343-00000"], ids=["mixed-root", "root-is-a-sequence"])
def test_a_prefix_is_discovered_and_read_exactly_as_its_local_copy(raw, bucket, rel):
    local_root, prefix = raw / rel, storage.join(f"{bucket}/raw", rel)
    sources, ignored = discover_videos(prefix, chunk=2)
    assert (sources, ignored) == discover_videos(local_root, chunk=2)
    if not rel:
        assert {s.kind for s in sources} == {"video", "tar", "tiktok"}
        assert {"README.md", "dancers/labels.parquet", "dancers/dance-4343-00000/notes.md"} <= set(ignored)
    for source in sources:
        with tempfile.TemporaryDirectory() as tmp:
            copy = localize(prefix, source, Path(tmp))
            rows = list(read_video_source(copy, source, max_bytes=1 << 26))
        assert rows == list(read_video_source(local_root, source, max_bytes=1 << 26))
    assert inputs_with_digests(prefix, sources) == inputs_with_digests(local_root, sources)


def test_curate_videos_on_s3_keeps_the_clips_of_the_local_copy_and_accounts_for_every_input(curated_pair, bucket):
    _assert_same_result_as_the_local_copy(curated_pair, "kept", "", bucket)
    _, _, remote, _ = curated_pair
    assert remote["counts"]["input"] == 6 + 6 + 2  # mp4 files, the tar's samples, the dancers
    assert remote["counts"]["by_decision"]["kept"] > 0


def test_curate_videos_on_s3_leaves_only_the_committed_attempt(curated_pair):
    _, _, remote, out = curated_pair
    _assert_only_the_committed_attempt_is_left(out, remote, ("kept", "audit"))


def test_recaption_on_s3_captions_the_clips_of_the_local_copy_with_their_pose_control(recaptioned_pair, bucket):
    _assert_same_result_as_the_local_copy(recaptioned_pair, "captioned", "dancers", bucket)
    _, _, remote, out = recaptioned_pair
    assert remote["counts"]["input"] == 2 and remote["counts"]["by_decision"]["kept"] == 2
    fs, path = storage.filesystem(storage.join(output_root(out, remote), "captioned"))
    rows = pq.read_table(path, columns=["control", "control_kind"], filesystem=fs).to_pylist()
    assert all(r["control_kind"] == "openpose" and r["control"] for r in rows)


def test_recaption_on_s3_leaves_only_the_committed_attempt(recaptioned_pair):
    _, _, remote, out = recaptioned_pair
    _assert_only_the_committed_attempt_is_left(out, remote, ("captioned", "audit"))
