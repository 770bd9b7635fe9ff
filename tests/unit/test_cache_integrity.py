"""Latent caches are verified against their recorded digests before reuse; a corrupted one is encoded again."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipelines.latent_cache as lc
from contracts.digests import sha256_file


@pytest.fixture
def fake_encode(monkeypatch):
    """``_encode`` without Ray or a teacher: writes two Parquet files and a cache.json with their digests, as the
    real one does; counts its calls."""
    calls = []

    def encode(spec, files, key, tmp, pool):
        calls.append(key)
        (tmp / "data").mkdir(parents=True)
        for i in range(2):
            pq.write_table(pa.table({"id": [i * 10 + j for j in range(10)]}), tmp / "data" / f"part-{i:05d}.parquet")
        meta = {"key": key, "counts": {"rows": 20, "encoded": 20, "failed": {}}, "columns": [], "seconds": 0.0,
                "files": {f"data/{p.name}": sha256_file(p) for p in sorted((tmp / "data").glob("*.parquet"))}}
        (tmp / "cache.json").write_text(json.dumps(meta))
        return meta

    monkeypatch.setattr(lc, "_encode", encode)
    return calls


def run(tmp_path):
    return lc.encode_cached(None, [], "k1", cache_dir=str(tmp_path), pool=None)


def test_a_verified_cache_is_reused_and_a_flipped_byte_makes_it_encode_again(tmp_path, fake_encode):
    data_dir, meta = run(tmp_path)
    assert meta["hit"] is False and len(fake_encode) == 1
    assert run(tmp_path)[1]["hit"] is True and len(fake_encode) == 1
    victim = data_dir / "part-00001.parquet"
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    assert "does not match" in lc.cache_problem(tmp_path / "k1", meta)
    _, again = run(tmp_path)
    assert again["hit"] is False and len(fake_encode) == 2
    assert lc.cache_problem(tmp_path / "k1", again) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k1"]  # the corrupted copy is gone


@pytest.mark.parametrize("damage", ["missing", "extra", "no_digests"])
def test_a_cache_with_a_missing_or_unlisted_file_or_no_digests_is_encoded_again(tmp_path, fake_encode, damage):
    data_dir, meta = run(tmp_path)
    if damage == "missing":
        (data_dir / "part-00000.parquet").unlink()
    elif damage == "extra":
        pq.write_table(pa.table({"id": [99]}), data_dir / "part-00002.parquet")
    else:
        (tmp_path / "k1" / "cache.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "files"}))
    words = {"missing": "is missing", "extra": "is not listed", "no_digests": "records no file digests"}[damage]
    assert words in lc.cache_problem(tmp_path / "k1", json.loads((tmp_path / "k1" / "cache.json").read_text()))
    assert run(tmp_path)[1]["hit"] is False and len(fake_encode) == 2
