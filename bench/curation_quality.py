"""Curation quality against ground truth: precision and recall per degradation on a fresh toy seed.

The seed (default 90210) is never used to train the toy zoo (``toyworld.scorers`` trains on seeds < 1000 and
validates on its own held-out seed). Per label, *recall* is the fraction of rows with that label whose decision
carries the expected reason; per reason, *precision* is the fraction of rows flagged with it whose label expects it.
Clean rows' false-rejection rate is the fraction of ``clean`` rows not kept.

Targets (issue 2): watermark recall ≥ 0.9 at precision ≥ 0.9; caption mismatch recall ≥ 0.8; low resolution,
corrupt, empty caption and exact duplicates 100%; false rejections of clean rows ≤ 5%.

    python bench/curation_quality.py [--seed 90210] [--rows 3000] [--out bench/results/quality.json]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import bench.common as common

TARGETS = {
    "watermark": {"recall": 0.9, "precision": 0.9},
    "caption_mismatch": {"recall": 0.8},
    "low_resolution": {"recall": 1.0},
    "corrupt": {"recall": 1.0},
    "caption_empty": {"recall": 1.0},
    "exact_duplicate": {"recall": 1.0},
}
#: The reason each label is expected to produce (the toy world's labels carry the same mapping).
EXPECTED = {
    "watermark": "watermark",
    "blur": "low_aesthetic",
    "noise": "low_aesthetic",
    "low_resolution": "low_resolution",
    "bad_aspect": "bad_aspect",
    "caption_mismatch": "low_clip_score",
    "caption_empty": "caption_empty",
    "caption_too_short": "caption_too_short",
    "caption_too_long": "caption_too_long",
    "caption_control_chars": "caption_control_chars",
    "exact_duplicate": "duplicate",
    "near_duplicate": "duplicate",
    "corrupt": "undecodable",
    "oversized": "too_large",
}


def evaluate(audit, labels) -> dict:
    """Per-label recall, per-reason precision and the clean false-rejection rate from an audit joined to labels."""
    audit_cols = audit.set_index("key")[["decision", "reasons", "duplicate_of"]].add_suffix("_audit")
    df = labels.join(audit_cols.rename(columns={"decision_audit": "decision", "reasons_audit": "reasons"}), how="left")
    missing = int(df["decision"].isna().sum())
    df["reasons"] = df["reasons"].apply(lambda r: [] if r is None else list(r))
    per_label = {}
    for label, reason in EXPECTED.items():
        rows = df[df["label"] == label]
        if rows.empty:
            continue
        hit = rows["reasons"].apply(lambda rs, r=reason: r in rs)
        flagged = df[df["reasons"].apply(lambda rs, r=reason: r in rs)]
        expected_labels = [lb for lb, rr in EXPECTED.items() if rr == reason]
        precision = float(flagged["label"].isin(expected_labels).mean()) if len(flagged) else float("nan")
        per_label[label] = {
            "rows": int(len(rows)),
            "recall": float(hit.mean()),
            "reason": reason,
            "precision_of_reason": precision,
        }
    clean = df[df["label"] == "clean"]
    false_rej = clean[clean["decision"] != "kept"]
    reasons_of_false = false_rej["reasons"].explode().value_counts().to_dict()
    odd = df[df["label"] == "odd_mode"]
    return {
        "rows": int(len(df)),
        "missing_from_audit": missing,
        "per_label": per_label,
        "clean": {
            "rows": int(len(clean)),
            "false_rejection_rate": float(len(false_rej) / max(len(clean), 1)),
            "false_rejections_by_reason": {k: int(v) for k, v in reasons_of_false.items()},
        },
        "odd_mode_kept_rate": float((odd["decision"] == "kept").mean()) if len(odd) else float("nan"),
    }


def check_targets(result: dict) -> list[str]:
    """Lines ``PASS/FAIL target`` for every target."""
    lines = []
    for label, target in TARGETS.items():
        got = result["per_label"].get(label)
        if got is None:
            lines.append(f"FAIL {label}: no rows")
            continue
        ok = got["recall"] >= target["recall"]
        text = f"{label} recall {got['recall']:.3f} ≥ {target['recall']}"
        if "precision" in target:
            ok = ok and got["precision_of_reason"] >= target["precision"]
            text += f", precision {got['precision_of_reason']:.3f} ≥ {target['precision']}"
        lines.append(("PASS " if ok else "FAIL ") + text)
    fr = result["clean"]["false_rejection_rate"]
    lines.append(("PASS " if fr <= 0.05 else "FAIL ") + f"clean false rejections {fr:.3f} ≤ 0.05")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=90210)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--profile", default="toy")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--out", type=Path, default=None, help="write the full result as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    from pipelines.config import load_config
    from pipelines.runtime import run_job

    with tempfile.TemporaryDirectory() as tmp:
        t = time.monotonic()
        world = common.toy_image_world(Path(tmp) / "world", seed=args.seed, rows=args.rows)
        gen_s = time.monotonic() - t
        t = time.monotonic()
        result = run_job("curate_images", load_config(args.profile, args.overrides), world / "parquet",
                         Path(tmp) / "curated")
        curate_s = time.monotonic() - t
        audit = pads.dataset(result.output / "audit").to_table().to_pandas()
        labels = pq.read_table(world / "labels.parquet").to_pandas().set_index("key")
    res = evaluate(audit, labels)
    res.update(
        {
            "seed": args.seed,
            "profile": args.profile,
            "generate_s": round(gen_s, 1),
            "curate_s": round(curate_s, 1),
            "thresholds": result.manifest["config"]["curate_images"]["filters"],
        }
    )
    print(
        f"curation quality on toy seed {args.seed}, {res['rows']} rows "
        f"(generate {gen_s:.0f} s, curate {curate_s:.0f} s)"
    )
    print(f"{'label':<24}{'rows':>6}{'recall':>9}  {'reason':<22}{'precision':>10}")
    for label, r in res["per_label"].items():
        print(f"{label:<24}{r['rows']:>6}{r['recall']:>9.3f}  {r['reason']:<22}{r['precision_of_reason']:>10.3f}")
    c = res["clean"]
    print(
        f"{'clean (false rejections)':<24}{c['rows']:>6}{c['false_rejection_rate']:>9.3f}  "
        f"{c['false_rejections_by_reason']}"
    )
    print(f"odd modes kept: {res['odd_mode_kept_rate']:.3f}; rows missing from audit: {res['missing_from_audit']}")
    for line in check_targets(res):
        print(line)
    common.write_json(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
