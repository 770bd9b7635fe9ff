"""Exact and near-duplicate detection with a deterministic choice of the kept row.

Duplicates are a property of the whole dataset, not of a row, so this runs once over a few columns of every
judged row (id, key, sha256, phash, pixel count, whether the other filters kept it): about 100 bytes a row, which
fits in one process for tens of millions of rows.

- Exact duplicates share the sha256 of their encoded bytes.
- Near duplicates have 64-bit perceptual hashes within ``phash_max_distance`` bits. Candidate pairs come from
  banding: the hash is cut into ``phash_max_distance + 1`` bands, and by the pigeonhole principle two hashes within
  that distance agree exactly on at least one band; candidates are then checked exactly.
- Rows linked by either relation form groups (union-find, so the relation is made transitive). In each group the
  representative is a row the other filters kept if there is one, then the one with the most pixels, ties broken
  by the smallest key, then the smallest id: the same input always keeps the same row, whatever order the rows
  arrive in. Every other member is a duplicate of it, so a copy of a rejected row is reported as a duplicate too
  (and a clean copy of a watermarked original is kept in its place).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DedupConfig:
    """Settings of the duplicate filter."""

    exact: bool = True
    """Drop rows whose encoded bytes have the same sha256 as a kept row."""
    near: bool = True
    """Drop rows whose perceptual hash is within ``phash_max_distance`` bits of a kept row."""
    phash_max_distance: int = 6
    """Largest Hamming distance (of 64 bits) between two perceptual hashes that counts as a near duplicate."""

    def __post_init__(self) -> None:
        if not 0 <= self.phash_max_distance <= 16:
            raise ValueError(f"phash_max_distance={self.phash_max_distance!r}: must be in [0, 16] bits (e.g. 6)")


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _bands(max_distance: int) -> list[tuple[int, int]]:
    n = max_distance + 1
    edges = np.linspace(0, 64, n + 1).round().astype(int)
    return [(int(edges[i]), int(edges[i + 1])) for i in range(n)]


def find_duplicates(
    ids: list[str],
    keys: list[str],
    sha256: list[str],
    phash: list[int],
    pixels: list[int],
    cfg: DedupConfig,
    preferred: list[bool] | None = None,
) -> dict[str, str]:
    """Map the id of every duplicate row to the key of its group's representative.

    ``preferred`` marks rows the other filters kept; a group's representative is one of them when it can be.
    Rows not in the result are unique (or the representative of their group).
    """
    n = len(ids)
    preferred = [True] * n if preferred is None else preferred
    if not (len(keys) == len(sha256) == len(phash) == len(pixels) == len(preferred) == n):
        raise ValueError("find_duplicates: ids, keys, sha256, phash, pixels, preferred must have the same length")
    uf = _UnionFind(n)
    if cfg.exact:
        first: dict[str, int] = {}
        for i, digest in enumerate(sha256):
            if digest in first:
                uf.union(first[digest], i)
            else:
                first[digest] = i
    if cfg.near and n > 1:
        d = cfg.phash_max_distance
        hashes = np.array(phash, dtype=np.uint64)
        for lo, hi in _bands(d):
            band = (hashes >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
            order = np.argsort(band, kind="stable")
            starts = np.flatnonzero(np.r_[True, band[order][1:] != band[order][:-1]])
            for start, stop in zip(starts, np.r_[starts[1:], n], strict=True):
                if stop - start < 2:
                    continue
                members = order[start:stop]
                # Exact check of every pair in the bucket at once: popcount of the XOR matrix.
                close = np.bitwise_count(hashes[members, None] ^ hashes[None, members]) <= d
                for a, b in zip(*np.nonzero(np.triu(close, k=1)), strict=True):
                    uf.union(int(members[a]), int(members[b]))
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        groups[uf.find(i)].append(i)
    duplicate_of: dict[str, str] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        keeper = min(members, key=lambda i: (not preferred[i], -pixels[i], keys[i], ids[i]))
        for i in members:
            if i != keeper:
                duplicate_of[ids[i]] = keys[keeper]
    return duplicate_of
