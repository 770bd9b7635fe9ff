"""Duplicate detection at scale: many rows sharing one hash (placeholder images), against the all-pairs bucket check.

Prints, for each size, the time and the peak traced memory (``tracemalloc``: numpy's buffers included) of
``filters.dedup.find_duplicates``, and at the sizes where it fits, of the baseline measured in the same run: the
former check, one m x m XOR matrix per band bucket (kept here as the reference, ``all_pairs``). The ratio lines
compare the two at the same size. The issue-22 target: 100,000 rows sharing one hash in < 1 GB and < 60 s.

    .venv/bin/python -m bench.dedup_scale [--rows 100000] [--baseline-rows 1000] [--out report.json]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

import numpy as np

from bench.common import write_json
from filters.dedup import DedupConfig, find_duplicates


def all_pairs(phash: list[int], d: int) -> int:
    """The former near-duplicate pass: one m x m popcount matrix per band bucket. Returns the number of groups."""
    n = len(phash)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    hashes = np.array(phash, dtype=np.uint64)
    edges = np.linspace(0, 64, d + 2).round().astype(int)  # d + 1 bands, as filters.dedup cuts them
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
        band = (hashes >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(band, kind="stable")
        starts = np.flatnonzero(np.r_[True, band[order][1:] != band[order][:-1]])
        for start, stop in zip(starts, np.r_[starts[1:], n], strict=True):
            if stop - start < 2:
                continue
            members = order[start:stop]
            close = np.bitwise_count(hashes[members, None] ^ hashes[None, members]) <= d
            for a, b in zip(*np.nonzero(np.triu(close, k=1)), strict=True):
                ra, rb = find(int(members[a])), find(int(members[b]))
                parent[max(ra, rb)] = min(ra, rb)
    return len({find(i) for i in range(n)})


def rows(n: int, placeholder_share: float, seed: int = 0) -> tuple[list[str], list[str], list[str], list[int]]:
    """``n`` rows: a share of placeholders (one phash, varied bytes), the rest random distinct images."""
    rng = np.random.default_rng(seed)
    k = int(n * placeholder_share)
    ph = [0x0F0F_F0F0_1234_5678] * k + [int(x) for x in rng.integers(0, 2**63, n - k, dtype=np.int64)]
    ids = [f"s#{i}" for i in range(n)]
    return ids, [f"k{i:07d}" for i in range(n)], [f"sha{i}" for i in range(n)], ph


def measure(fn) -> tuple[object, float, float]:
    tracemalloc.start()
    t = time.perf_counter()
    try:
        out = fn()
        seconds = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return out, seconds, peak / 2**20


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000, help="rows of the large runs (default 100000)")
    ap.add_argument("--baseline-rows", type=int, default=1000,
                    help="rows where the all-pairs baseline also runs (its pairs loop is slow: 4000 rows take minutes)")
    ap.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    args = ap.parse_args(argv)
    cfg = DedupConfig()
    report: dict = {"runs": []}
    cases = [("all one hash", 1.0), ("30% one hash, 70% distinct", 0.3)]
    for n in (args.baseline_rows, args.rows):
        for name, share in cases:
            ids, keys, sha, ph = rows(n, share)
            dups, s, mib = measure(lambda: find_duplicates(ids, keys, sha, ph, [1] * n, cfg))  # noqa: B023
            run = {"rows": n, "case": name, "seconds": round(s, 3), "peak_mib": round(mib, 1),
                   "duplicates": len(dups)}  # fmt: skip
            if n == args.baseline_rows:
                groups, bs, bmib = measure(lambda: all_pairs(ph, cfg.phash_max_distance))  # noqa: B023
                assert groups == n - len(dups), f"baseline found {groups} groups, find_duplicates {n - len(dups)}"
                run |= {"baseline_seconds": round(bs, 3), "baseline_peak_mib": round(bmib, 1),
                        "time_ratio": round(bs / s, 1), "memory_ratio": round(bmib / mib, 1)}  # fmt: skip
            report["runs"].append(run)
            line = f"{n:>8} rows  {name:<28} {s:7.2f} s  {mib:8.1f} MiB peak  {len(dups):>7} duplicates"
            if "baseline_seconds" in run:
                line += (f"   | all-pairs baseline {bs:.2f} s, {bmib:.0f} MiB: "
                         f"{run['time_ratio']}x the time, {run['memory_ratio']}x the memory")  # fmt: skip
            print(line, flush=True)
    big = [r for r in report["runs"] if r["rows"] == args.rows and r["case"] == "all one hash"][0]
    report["target_met"] = big["seconds"] < 60 and big["peak_mib"] < 1024
    verdict = "met" if report["target_met"] else "NOT met"
    print(f"target (< 60 s, < 1 GiB at {args.rows} rows sharing one hash): {verdict}")
    write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
