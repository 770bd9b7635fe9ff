"""Exact and near-duplicate detection with a deterministic choice of the kept row.

Duplicates are a property of the whole dataset, not of a row, so this runs once over a few columns of every
judged row (id, key, sha256, phash, pixel count, whether the other filters kept it): about 100 bytes a row, which
fits in one process for tens of millions of rows.

- Exact duplicates share the sha256 of their encoded bytes.
- Near duplicates have 64-bit perceptual hashes within ``phash_max_distance`` bits. Candidate pairs come from
  banding: the hash is cut into ``phash_max_distance + 1`` bands, and by the pigeonhole principle two hashes within
  that distance agree exactly on at least one band; candidates are then checked exactly.
- Identical hashes are collapsed before any pairwise work (placeholder images in web data can share one hash across
  tens of thousands of rows): rows with equal sha256 or equal phash are joined in one linear pass, and only the
  distinct phash values are banded. The pairwise check of a band bucket runs in blocks of rows, so its memory is
  bounded by ``_BLOCK_CELLS`` whatever the bucket size.
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


_BLOCK_CELLS = 1 << 22
"""Most cells of one block of the pairwise distance check (4 M: 32 MiB of XOR words, 4 MiB of flags)."""


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
        _join_equal(uf, sha256)
    if cfg.near and n > 1:
        hashes = np.array(phash, dtype=np.uint64)
        distinct, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        _join_equal(uf, inverse.tolist())  # distance 0: the same group, no pairwise work
        for a, b in _close_pairs(distinct, cfg.phash_max_distance):
            uf.union(int(first[a]), int(first[b]))
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


def _join_equal(uf: _UnionFind, values: list) -> None:
    """Join every row to the first row with the same value: one pass, no pairs."""
    first: dict = {}
    for i, value in enumerate(values):
        j = first.setdefault(value, i)
        if j != i:
            uf.union(j, i)


def _close_pairs(distinct: np.ndarray, max_distance: int):
    """Yield index pairs ``(a, b)``, ``a < b``, of distinct hashes within ``max_distance`` bits (some more than once).

    Candidates share a band; each bucket is checked exactly in blocks of at most ``_BLOCK_CELLS`` cells.
    """
    m = len(distinct)
    for lo, hi in _bands(max_distance):
        band = (distinct >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(band, kind="stable")
        starts = np.flatnonzero(np.r_[True, band[order][1:] != band[order][:-1]])
        for start, stop in zip(starts, np.r_[starts[1:], m], strict=True):
            if stop - start < 2:
                continue
            members = order[start:stop]
            bucket = distinct[members]
            rows = max(1, _BLOCK_CELLS // len(members))
            for r0 in range(0, len(members) - 1, rows):
                block = bucket[r0 : r0 + rows]
                # Popcount of the XOR of each block row with every later member of the bucket.
                close = np.bitwise_count(block[:, None] ^ bucket[None, :]) <= max_distance
                close &= np.arange(len(members))[None, :] > (r0 + np.arange(len(block)))[:, None]
                for a, b in zip(*np.nonzero(close), strict=True):
                    yield members[r0 + a], members[b]
