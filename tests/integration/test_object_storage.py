"""Curation from and to an object store speaking the S3 protocol over HTTP (moto's server), reached only through the
standard environment (``AWS_ENDPOINT_URL``, keys, region), and the object-store commit protocol: a unique attempt
prefix, the manifest written last, nothing published by a failed or killed writer, leftovers collected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from contracts import storage
from contracts.manifest import read_manifest
from contracts.publish import ATTEMPTS, collect_leftovers, output_root, staged_output


@pytest.fixture(scope="module")
def bucket(s3_server, toy_images):
    """Bucket ``alcm-data`` with the toy world's Parquet shards under ``raw/images/``."""
    s3_server.create_bucket(Bucket="alcm-data")
    src, _ = toy_images
    for f in sorted((src / "parquet").glob("*.parquet")):
        s3_server.upload_file(str(f), "alcm-data", f"raw/images/{f.name}")
    return "s3://alcm-data"


def test_alcm_curate_images_reads_and_writes_s3_with_only_the_standard_environment(bucket, toy_images, curated,
                                                                                   tmp_path):  # fmt: skip
    _, labels = toy_images
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALCM_", "RAY_ADDRESS"))}
    env["ALCM_REGISTRY_DIR"] = str(tmp_path / "registry")
    alcm = Path(sys.executable).parent / "alcm"
    out = f"{bucket}/curated/images-v1"
    run = subprocess.run([str(alcm), "curate", "images", "--input", f"{bucket}/raw/images", "--output", out],
                         env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    manifest = read_manifest(out)
    counts = manifest["counts"]
    assert counts["input"] == len(labels) == sum(counts["by_decision"].values())
    # The same rows, the same decisions, the same dataset as curating the local copy of the shards.
    assert manifest["digest"] == curated.manifest["digest"]
    assert counts == curated.manifest["counts"]
    assert manifest["input_root"] == f"{bucket}/raw/images"
    assert [i["path"] for i in manifest["inputs"]] == [i["path"] for i in curated.manifest["inputs"]]
    assert [i["digest"] for i in manifest["inputs"]] == [i["digest"] for i in curated.manifest["inputs"]]
    # Committed under a unique attempt prefix: exactly the files the manifest lists, with their digests.
    root = output_root(out)
    assert root.startswith(f"{out}/{ATTEMPTS}/") and manifest["storage_root"] == root[len(out) + 1:]
    listed = {rel for rel, _ in storage.list_files(root)} - {"manifest.json"}
    assert listed == set(manifest["files"]) and any(r.startswith("kept/") for r in listed)
    some = sorted(manifest["files"])[0]
    assert storage.sha256(storage.join(root, some)) == manifest["files"][some]
    assert f"manifest:   {out}/manifest.json" in run.stdout
    # Recorded in the registry with its URI; the audit query reads the audit table from the bucket.
    from registry.audit import dataset_audit
    from registry.store import Registry

    registry = Registry(f"sqlite:///{tmp_path / 'registry' / 'mlflow.db'}")
    (entry,) = registry.list("dataset")
    assert entry.location == out and entry.digest == manifest["digest"]
    audit = dataset_audit(registry, entry.ref, reason="kept", show=2)
    assert audit["rows"] == len(labels) and audit["consistent"]
    # A second run on the published output is refused before any work, naming it.
    again = subprocess.run([str(alcm), "curate", "images", "--input", f"{bucket}/raw/images", "--output", out],
                           env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 2 and "already holds a published output" in again.stdout + again.stderr


def _files(location: str) -> set[str]:
    return {rel for rel, _ in storage.list_files(location)}


def test_a_failed_job_publishes_nothing_and_an_overwrite_replaces_the_attempt(bucket):
    dest = f"{bucket}/publish/failed"
    with pytest.raises(RuntimeError, match="boom"), staged_output(dest) as out:
        storage.write_bytes(out.path("rows", "part-0.parquet"), b"partial")
        raise RuntimeError("boom")
    assert _files(dest) == set()
    with pytest.raises(FileNotFoundError, match="did not finish"):
        read_manifest(dest)

    with staged_output(dest) as out:
        (out.dir / "local.txt").write_text("written locally")
        storage.write_bytes(out.path("rows", "part-0.parquet"), b"first")
        out.commit({"name": "t", "digest": "sha256:1"})
    first = output_root(dest)
    assert _files(dest) == {"manifest.json", *(f"{first[len(dest) + 1:]}/{f}" for f in
                                               ("local.txt", "manifest.json", "rows/part-0.parquet"))}  # fmt: skip
    with pytest.raises(FileExistsError, match="already holds a published output"), staged_output(dest):
        pass
    with staged_output(dest, overwrite=True) as out:
        storage.write_bytes(out.path("rows", "part-0.parquet"), b"second")
        assert read_manifest(dest)["digest"] == "sha256:1"  # readers see the old output until the commit
        out.commit({"name": "t", "digest": "sha256:2"})
    second = output_root(dest)
    assert second != first and read_manifest(dest)["digest"] == "sha256:2"
    assert storage.read_bytes(storage.join(second, "rows", "part-0.parquet")) == b"second"
    assert not _files(first)  # the replaced attempt is gone


def test_a_killed_writer_leaves_nothing_published_and_the_next_job_collects_its_attempt(bucket, tmp_path):
    dest = f"{bucket}/publish/killed"
    writer = textwrap.dedent(f"""
        import os
        from contracts import storage
        from contracts.publish import staged_output
        with staged_output({dest!r}) as out:
            storage.write_bytes(out.path("rows", "part-0.parquet"), b"half")
            print(out.location, flush=True)
            os._exit(9)  # killed: no cleanup, no commit
    """)
    run = subprocess.run([sys.executable, "-c", writer], capture_output=True, text=True, timeout=120, env=os.environ)
    assert run.returncode == 9, run.stderr
    attempt = run.stdout.strip()
    assert _files(attempt) == {"rows/part-0.parquet"}
    with pytest.raises(FileNotFoundError):
        read_manifest(dest)  # nothing looks published
    assert collect_leftovers(dest) == [attempt.rsplit("/", 1)[1]]  # its writer on this host is gone
    assert _files(dest) == set()
    with staged_output(dest) as out:  # and the destination is free for the next job
        out.commit({"name": "t", "digest": "sha256:3"})
    assert json.loads(storage.read_bytes(f"{dest}/manifest.json"))["digest"] == "sha256:3"


def _commit(dest: str, files: dict[str, bytes], **fields) -> None:
    from contracts.digests import sha256_file

    with staged_output(dest, overwrite=True) as out:
        for rel, data in files.items():
            (out.dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (out.dir / rel).write_bytes(data)
        listed = {rel: sha256_file(out.dir / rel) for rel in files}
        out.commit({"name": "t", "kind": "checkpoint", "digest": "sha256:" + "a" * 64, "files": listed, **fields})


def test_a_link_reads_as_the_output_it_names_and_never_replaces_a_real_one(bucket):
    from contracts.publish import link_output

    target, link = f"{bucket}/work/runs/x/k1", f"{bucket}/work/latest"
    _commit(target, {"lora/w.bin": b"weights"})
    link_output(target, link)
    manifest = read_manifest(link)
    assert manifest["link_to"] == target and manifest["digest"] == read_manifest(target)["digest"]
    assert output_root(link) == output_root(target)  # readers follow it to the target's attempt
    assert storage.read_bytes(storage.join(output_root(link), "lora/w.bin")) == b"weights"
    assert _files(link) == {"manifest.json"}  # one object, no copy of the files
    with pytest.raises(FileExistsError, match="holds an output of its own"):
        link_output(target, f"{bucket}/work/runs/x/k1")
    # Overwriting the link's own location by a job never deletes the target's files.
    _commit(link, {"other.txt": b"replaced"})
    assert storage.read_bytes(storage.join(output_root(target), "lora/w.bin")) == b"weights"


def test_a_local_copy_is_verified_made_once_and_made_anew_after_an_overwrite(bucket, tmp_path, monkeypatch):
    from contracts.manifest import IntegrityError, verify_files
    from contracts.mirror import local_copy

    monkeypatch.setenv("ALCM_MIRROR_DIR", str(tmp_path / "mirror"))
    dest = f"{bucket}/checkpoints/c1"
    _commit(dest, {"lora/w.bin": b"v1", "pipeline/model_index.json": b"{}"})
    first = local_copy(dest)
    assert (first / "lora/w.bin").read_bytes() == b"v1"
    assert read_manifest(first)["digest"] == read_manifest(dest)["digest"]
    assert local_copy(dest) == first and verify_files(dest) == 2
    _commit(dest, {"lora/w.bin": b"v2", "pipeline/model_index.json": b"{}"})
    second = local_copy(dest)
    assert second != first and (second / "lora/w.bin").read_bytes() == b"v2"
    # A changed object is caught naming it, whether read in place or copied.
    storage.write_bytes(storage.join(output_root(dest), "lora/w.bin"), b"tampered")
    with pytest.raises(IntegrityError, match="lora/w.bin: content digest"):
        verify_files(dest)
    storage.delete_tree(str(second))
    with pytest.raises(IntegrityError, match="lora/w.bin"):
        local_copy(dest)
    assert not any(p.name.startswith(".") for p in (tmp_path / "mirror").iterdir())  # no half copy left


def test_a_raw_prefix_listing_digest_changes_with_a_new_object_and_reads_nothing(bucket):
    from flows.retrain import listing_digest

    prefix = f"{bucket}/listing/raw"
    storage.write_bytes(f"{prefix}/a.parquet", b"1")
    before = listing_digest(prefix)
    assert listing_digest(prefix) == before
    storage.write_bytes(f"{prefix}/b/c.tar", b"2")
    assert listing_digest(prefix) != before
    with pytest.raises(FileNotFoundError, match="holds no files"):
        listing_digest(f"{bucket}/listing/missing")
