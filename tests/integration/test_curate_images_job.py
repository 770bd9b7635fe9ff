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
