"""The curation job end to end on the toy profile: layout, accounting, decisions against ground truth."""

from __future__ import annotations

import json

import pyarrow.dataset as pads
import pytest

from contracts.reasons import ALL_REASONS, QUARANTINE_REASONS


def audit_of(out):
    return pads.dataset(out / "audit").to_table().to_pandas()


def kept_of(out):
    return pads.dataset(out / "kept").to_table().to_pandas()


def test_output_layout_is_kept_audit_and_manifest_only(curated):
    out = curated.output
    assert sorted(p.name for p in out.iterdir()) == ["audit", "kept", "manifest.json"]
    assert list((out / "kept").glob("*.parquet")) and list((out / "audit").glob("*.parquet"))
    assert not list(out.parent.glob(".out.staging-*"))


def test_every_input_row_is_accounted_for_exactly_once(curated, toy_images):
    _, labels = toy_images
    audit = audit_of(curated.output)
    assert len(audit) == len(labels)
    assert audit["id"].is_unique
    assert sorted(audit["key"]) == sorted(labels.index)
    counts = audit["decision"].value_counts().to_dict()
    assert sum(counts.values()) == len(labels)
    kept = kept_of(curated.output)
    assert kept["key"].is_unique and len(kept) == counts["kept"]
    assert set(kept["key"]) == set(audit.loc[audit.decision == "kept", "key"])


def test_manifest_counts_match_the_audit(curated):
    manifest = json.loads((curated.output / "manifest.json").read_text())
    audit = audit_of(curated.output)
    assert manifest["counts"]["input"] == len(audit)
    assert manifest["counts"]["by_decision"] == {
        d: int((audit.decision == d).sum()) for d in ("kept", "rejected", "quarantined")
    }
    exploded = audit.explode("reasons").reasons.dropna().value_counts().to_dict()
    assert manifest["counts"]["by_reason"] == exploded
    assert manifest["digest"].startswith("sha256:") and manifest["version"] == manifest["digest"][7:19]
    assert all(i["digest"].startswith("sha256:") for i in manifest["inputs"])
    assert manifest["config"]["profile"] == "toy"
    assert set(manifest["filters"]) >= {"watermark", "clip_score", "min_resolution"}


def test_reasons_are_from_the_vocabulary_and_quarantined_rows_have_one_reason_and_an_error(curated):
    audit = audit_of(curated.output)
    for _, row in audit.iterrows():
        reasons = list(row.reasons)
        assert all(r in ALL_REASONS for r in reasons)
        if row.decision == "quarantined":
            assert len(reasons) == 1 and reasons[0] in QUARANTINE_REASONS and row.error
        elif row.decision == "rejected":
            assert reasons and not set(reasons) & set(QUARANTINE_REASONS)
        else:
            assert reasons == []


@pytest.mark.parametrize(
    ("label", "decision", "reason"),
    [
        ("corrupt", "quarantined", "undecodable"),
        ("oversized", "quarantined", "too_large"),
        ("low_resolution", "rejected", "low_resolution"),
        ("bad_aspect", "rejected", "bad_aspect"),
        ("caption_empty", "rejected", "caption_empty"),
        ("caption_too_short", "rejected", "caption_too_short"),
        ("caption_too_long", "rejected", "caption_too_long"),
        ("caption_control_chars", "rejected", "caption_control_chars"),
    ],
)
def test_rule_based_degradations_are_caught_exactly(curated, toy_images, label, decision, reason):
    _, labels = toy_images
    keys = labels.index[labels.label == label]
    assert len(keys) > 0, f"toy world has no {label} rows"
    audit = audit_of(curated.output).set_index("key").loc[keys]
    assert (audit.decision == decision).all(), audit[["decision", "reasons"]]
    assert all(reason in list(r) for r in audit.reasons)


def test_exact_duplicates_are_rejected_pointing_at_the_kept_original(curated, toy_images):
    _, labels = toy_images
    dups = labels[labels.label == "exact_duplicate"]
    assert len(dups) > 0
    audit = audit_of(curated.output).set_index("key")
    for key, row in dups.iterrows():
        assert audit.loc[key, "decision"] == "rejected"
        assert "duplicate" in list(audit.loc[key, "reasons"])
        assert audit.loc[key, "duplicate_of"] == row.duplicate_of


def test_most_clean_rows_are_kept(curated, toy_images):
    _, labels = toy_images
    clean = labels.index[labels.label == "clean"]
    audit = audit_of(curated.output).set_index("key").loc[clean]
    assert (audit.decision == "kept").mean() >= 0.85, audit[audit.decision != "kept"][["reasons"]]


def test_tar_and_parquet_inputs_give_the_same_decisions(curated, toy_images, ray_local, tmp_path):
    from pipelines.config import load_config
    from pipelines.runtime import run_job

    src, _ = toy_images
    result = run_job("curate_images", load_config("toy"), src / "wds", tmp_path / "from_tar")
    a = audit_of(curated.output).set_index("key").sort_index()
    b = audit_of(result.output).set_index("key").sort_index()
    assert list(a.index) == list(b.index)
    assert (a.decision == b.decision).all()
    assert result.manifest["digest"] == curated.manifest["digest"]


def test_non_empty_output_is_refused_before_any_work(toy_images, tmp_path):
    from pipelines.config import load_config
    from pipelines.runtime import run_job

    src, _ = toy_images
    out = tmp_path / "busy"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        run_job("curate_images", load_config("toy"), src / "parquet", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]


def test_kept_rows_carry_their_original_bytes_and_scores(curated):
    import hashlib

    kept = kept_of(curated.output)
    assert len(kept) > 0
    for _, row in kept.head(20).iterrows():
        assert hashlib.sha256(row.image).hexdigest() == row.sha256
    assert kept[["clip_score", "aesthetic_score", "watermark_prob"]].notna().all().all()


def test_a_folder_of_captioned_images_is_curated_with_sidecars(toy_images, ray_local, tmp_path):
    import pyarrow.parquet as pq

    from pipelines.config import load_config
    from pipelines.runtime import run_job

    src, labels = toy_images
    table = pq.read_table(next((src / "parquet").glob("*.parquet"))).to_pylist()[:30]
    folder = tmp_path / "folder"
    folder.mkdir()
    for rec in table:
        ext = "png" if rec["png"] is not None else "jpg"
        (folder / f"{rec['key']}.{ext}").write_bytes(rec["png"] or rec["jpg"])
        (folder / f"{rec['key']}.txt").write_text(rec["caption"] or "", encoding="utf-8")
    result = run_job("curate_images", load_config("toy"), folder, tmp_path / "out")
    audit = audit_of(result.output).set_index("key")
    assert sorted(audit.index) == sorted(r["key"] for r in table)
    for key in audit.index:
        if labels.loc[key, "label"] in ("corrupt", "oversized"):
            assert audit.loc[key, "decision"] == "quarantined"


PERCENTS = {"clip_percentile": ("clip_score", 30.0), "aesthetic_percentile": ("aesthetic_score", 60.0)}


@pytest.fixture(scope="module")
def curated_top_percent(toy_images, ray_local, tmp_path_factory):
    """The toy Parquet shards curated with both top-percent filters on (30% by CLIP score, 60% by aesthetic)."""
    from pipelines.config import load_config
    from pipelines.runtime import run_job

    src, _ = toy_images
    cfg = load_config("toy", ["curate_images.filters.clip_top_percent=30",
                              "curate_images.filters.aesthetic_top_percent=60"])  # fmt: skip
    return run_job("curate_images", cfg, src / "parquet", tmp_path_factory.mktemp("top") / "out")


@pytest.mark.parametrize("name", list(PERCENTS))
def test_top_percent_keeps_that_share_of_the_scored_rows_and_records_the_threshold(curated_top_percent, name):
    score, percent = PERCENTS[name]
    short = score.split("_")[0]
    reason = f"below_{short}_percentile"
    manifest = json.loads((curated_top_percent.output / "manifest.json").read_text())
    audit = audit_of(curated_top_percent.output)
    # The population: every row that reached scoring and was not quarantined.
    scored = audit[(audit.decision != "quarantined") & audit[score].notna()]
    values = scored[score].astype("float64")
    n = len(scored)
    k = -(-n * int(percent) // 100)  # ceil(N · P / 100) in integers
    threshold = float(values.sort_values(ascending=False).iloc[k - 1])
    at_or_above, ties = int((values >= threshold).sum()), int((values == threshold).sum())
    assert manifest["percentiles"][name] == {
        "config_key": f"curate_images.filters.{short}_top_percent", "score": score, "reason": reason,
        "percent": percent, "population": n, "threshold": threshold, "at_or_above": at_or_above,
        "below": n - at_or_above,
    }  # fmt: skip
    assert 0 < n < len(audit)  # the toy world has quarantined rows: they are not ranked
    # The share passing the filter is the requested percent, up to rounding k up and rows tied at the threshold.
    assert (values > threshold).sum() < k <= at_or_above
    assert 0 <= at_or_above / n - percent / 100 < ties / n
    flagged = audit.reasons.apply(lambda rs: reason in list(rs))
    assert (audit.loc[flagged, score].astype("float64") < threshold).all()
    assert set(audit.index[flagged]) == set(scored.index[values < threshold])
    assert (audit.loc[flagged, "decision"] == "rejected").all()
    kept = kept_of(curated_top_percent.output)
    assert len(kept) > 0 and (kept[score].astype("float64") >= threshold).all()
    assert manifest["counts"]["by_reason"][reason] == n - at_or_above == int(flagged.sum())
    assert manifest["filters"][name] == "1"
    assert manifest["config"]["curate_images"]["filters"][f"{short}_top_percent"] == percent


def test_top_percent_keeps_every_row_accounted_exactly_once(curated_top_percent, toy_images):
    _, labels = toy_images
    manifest = json.loads((curated_top_percent.output / "manifest.json").read_text())
    audit = audit_of(curated_top_percent.output)
    assert len(audit) == len(labels) == manifest["counts"]["input"] and audit["id"].is_unique
    assert sorted(audit["key"]) == sorted(labels.index)
    assert sum(manifest["counts"]["by_decision"].values()) == len(labels)
    assert manifest["counts"]["by_decision"] == {d: int((audit.decision == d).sum())
                                                 for d in ("kept", "rejected", "quarantined")}  # fmt: skip
    assert manifest["counts"]["by_reason"] == audit.explode("reasons").reasons.dropna().value_counts().to_dict()
    kept = kept_of(curated_top_percent.output)
    assert set(kept["key"]) == set(audit.loc[audit.decision == "kept", "key"])
    # Both filters apply on top of the absolute thresholds, so fewer rows are kept than with the profile alone.
    both = manifest["percentiles"]
    assert len(kept) <= min(c["at_or_above"] for c in both.values())


def test_without_a_percent_the_manifest_records_no_cut(curated):
    manifest = json.loads((curated.output / "manifest.json").read_text())
    assert manifest["percentiles"] == {}
    assert not {"below_clip_percentile", "below_aesthetic_percentile"} & set(manifest["counts"]["by_reason"])
