"""The top-percent filters (``filters.percentile``): threshold, ties, edge populations, config, the global step."""

import numpy as np
import pandas as pd
import pytest

from contracts.reasons import REJECT_REASONS, percentile_lines
from filters.percentile import PERCENTILE_FILTERS, apply_percentiles, keep_count, top_percent_threshold
from filters.rules import FilterConfig
from pipelines.config import ConfigError, load_config
from pipelines.curate_images import global_decisions, meta_columns

NAN = float("nan")


def test_the_threshold_is_the_kth_highest_score_with_k_rounded_up():
    scores = np.arange(1.0, 11.0)  # 1 .. 10
    assert top_percent_threshold(scores, 30) == 8.0  # k = 3: 10, 9, 8 kept
    assert top_percent_threshold(scores, 25) == 8.0  # k = ceil(2.5) = 3
    assert top_percent_threshold(scores, 10) == 10.0
    assert top_percent_threshold(scores, 0.5) == 10.0  # k = ceil(0.05) = 1: a set percent keeps at least one row


def test_the_percent_is_read_as_the_decimal_it_was_written_as():
    # In binary floating point 1000 * 16.1 / 100 is 161.00000000000003, whose ceiling would keep one row too many.
    assert keep_count(1000, 16.1) == 161
    assert keep_count(10000, 0.07) == 7
    assert keep_count(10, 30) == 3


def test_the_threshold_does_not_depend_on_row_order():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=101)
    expected = top_percent_threshold(scores, 37)
    for _ in range(5):
        assert top_percent_threshold(rng.permutation(scores), 37) == expected
    assert expected == np.sort(scores)[::-1][keep_count(101, 37) - 1]


def test_ties_at_the_threshold_are_all_kept():
    cfg = FilterConfig(clip_top_percent=20)
    scores = np.array([5.0, 1.0, 5.0, 2.0, 5.0])
    reasons, cuts = apply_percentiles({"clip_score": scores}, cfg, rows=5)
    cut = cuts["clip_percentile"]
    assert cut.threshold == 5.0
    assert (cut.population, cut.at_or_above, cut.below) == (5, 3, 2)
    assert reasons == [[], ["below_clip_percentile"], [], ["below_clip_percentile"], []]


def test_one_hundred_percent_keeps_every_row():
    scores = np.array([3.0, -7.5, 0.0, 3.0])
    reasons, cuts = apply_percentiles({"clip_score": scores}, FilterConfig(clip_top_percent=100), rows=4)
    assert cuts["clip_percentile"].threshold == -7.5
    assert reasons == [[], [], [], []]


@pytest.mark.parametrize(("scores", "percent", "threshold"), [([4.2], 1, 4.2), ([4.2], 100, 4.2), ([1.0, 2.0], 50, 2.0),
                                                              ([1.0, 2.0], 50.1, 1.0), ([1.0, 2.0, 3.0], 0.1, 3.0)])
def test_tiny_populations_keep_at_least_one_row(scores, percent, threshold):
    assert top_percent_threshold(np.array(scores), percent) == threshold


def test_an_empty_population_has_no_threshold_and_rejects_nothing():
    assert top_percent_threshold(np.array([]), 30) is None
    assert top_percent_threshold(np.array([NAN, NAN]), 30) is None
    reasons, cuts = apply_percentiles({"clip_score": np.array([])}, FilterConfig(clip_top_percent=30), rows=0)
    assert reasons == []
    assert cuts["clip_percentile"].to_dict() == {"score": "clip_score", "reason": "below_clip_percentile",
                                                 "percent": 30.0, "population": 0, "threshold": None,
                                                 "at_or_above": 0, "below": 0}  # fmt: skip


def test_nan_scores_are_outside_the_population_and_never_rejected():
    scores = np.array([NAN, 1.0, 2.0, 3.0, NAN])
    reasons, cuts = apply_percentiles({"clip_score": scores}, FilterConfig(clip_top_percent=34), rows=5)
    cut = cuts["clip_percentile"]
    assert (cut.population, cut.threshold, cut.below) == (3, 2.0, 1)  # k = ceil(1.02) = 2
    assert reasons == [[], ["below_clip_percentile"], [], [], []]


def test_both_filters_apply_and_a_row_can_fail_both():
    cfg = FilterConfig(clip_top_percent=50, aesthetic_top_percent=50)
    scores = {"clip_score": np.array([1.0, 2.0, 3.0, 4.0]), "aesthetic_score": np.array([0.9, 0.1, 0.8, 0.2])}
    reasons, cuts = apply_percentiles(scores, cfg, rows=4)
    assert reasons == [["below_clip_percentile"], ["below_clip_percentile", "below_aesthetic_percentile"], [],
                       ["below_aesthetic_percentile"]]  # fmt: skip
    assert (cuts["clip_percentile"].threshold, cuts["aesthetic_percentile"].threshold) == (3.0, 0.8)


def test_filters_left_off_decide_nothing_and_read_no_column():
    reasons, cuts = apply_percentiles({}, FilterConfig(), rows=3)
    assert reasons == [[], [], []] and cuts == {}


def test_percentile_reasons_are_documented_reject_reasons():
    for f in PERCENTILE_FILTERS:
        assert f.reason in REJECT_REASONS and f.version
        assert f.percent_field in {"clip_top_percent", "aesthetic_top_percent"}


@pytest.mark.parametrize("field", ["clip_top_percent", "aesthetic_top_percent"])
@pytest.mark.parametrize("bad", [0, 0.0, -1, 100.0001, 250, float("nan")])
def test_a_percent_outside_zero_to_one_hundred_names_the_field(field, bad):
    with pytest.raises(ValueError, match=rf"^{field}=.*\(0, 100\]"):
        FilterConfig(**{field: bad})


@pytest.mark.parametrize("field", ["clip_top_percent", "aesthetic_top_percent"])
def test_a_bad_percent_in_a_profile_override_names_the_dotted_key(field):
    with pytest.raises(ConfigError, match=rf"curate_images\.filters\.{field}=0\.0: must be a percent in \(0, 100\]"):
        load_config("toy", [f"curate_images.filters.{field}=0"])
    with pytest.raises(ConfigError, match=rf"curate_images\.filters\.{field}='x': expected a number"):
        load_config("toy", [f"curate_images.filters.{field}=x"])
    cfg = load_config("toy", [f"curate_images.filters.{field}=30"])
    assert getattr(cfg.curate_images.filters, field) == 30.0
    assert getattr(load_config("toy").curate_images.filters, field) is None


def _meta(rows):
    cols = ["id", "key", "decision", "sha256", "phash", "width", "height", "clip_score"]
    return pd.DataFrame([dict(zip(cols, r, strict=True)) for r in rows]).astype({"clip_score": "float32"})


def test_the_global_step_ranks_judged_rows_only_and_prefers_a_passing_duplicate():
    cfg = load_config("toy", ["curate_images.filters.clip_top_percent=40"])
    assert meta_columns(cfg)[-1] == "clip_score"
    meta = _meta([
        ("s#0", "a", "kept", "h1", "0000000000000001", 32, 32, 90.0),   # same bytes as s#4, fewer pixels
        ("s#1", "b", "kept", "h2", "00000000ffff0000", 64, 64, 85.0),
        ("s#2", "c", "rejected", "h3", "0000ffff00000000", 64, 64, 95.0),  # another filter's rejection still ranks
        ("s#3", "d", "kept", "h5", "ffff000000000000", 64, 64, 80.0),
        ("s#4", "e", "kept", "h1", "0000000000000001", 64, 64, 70.0),
        ("s#5", "f", "quarantined", None, None, None, None, NAN),       # never judged: not in the population
        ("s#6", "b", "kept", "h6", "0f0f0f0f0f0f0f0f", 64, 64, 10.0),   # duplicate_key: quarantined, not ranked
    ])  # fmt: skip
    decided = global_decisions(meta, cfg)
    cut = decided.percentiles["clip_percentile"]
    # Population: s#0..s#4 (5 rows); k = ceil(5 · 0.4) = 2; the 2nd highest of 95, 90, 85, 80, 70 is 90.
    assert (cut.population, cut.threshold, cut.at_or_above, cut.below) == (5, 90.0, 2, 3)
    u = decided.updates
    assert u["s#6"][:2] == ("quarantined", ("duplicate_key",))
    assert u["s#1"] == ("rejected", ("below_clip_percentile",), None, None)
    assert u["s#3"] == ("rejected", ("below_clip_percentile",), None, None)
    # s#0 passes every filter, so it represents its group although s#4 has more pixels.
    assert "s#0" not in u
    assert u["s#4"] == ("rejected", ("below_clip_percentile", "duplicate"), "a", None)
    assert "s#2" not in u and "s#5" not in u


def test_the_global_step_without_percentiles_gathers_no_scores_and_records_no_cut():
    cfg = load_config("toy")
    assert "clip_score" not in meta_columns(cfg) and "aesthetic_score" not in meta_columns(cfg)
    meta = _meta([("s#0", "a", "kept", "h1", "0000000000000001", 64, 64, 90.0)]).drop(columns=["clip_score"])
    decided = global_decisions(meta, cfg)
    assert decided.updates == {} and decided.percentiles == {}


def test_the_recorded_cut_reads_as_one_line_in_the_cli_the_flow_summary_and_the_audit():
    from pipelines.curate_images import percentile_record
    from registry.render import audit_lines

    _, cuts = apply_percentiles({"clip_score": np.array([1.0, 2.0, 3.0, 4.0])}, FilterConfig(clip_top_percent=50),
                                rows=4)  # fmt: skip
    record = percentile_record(cuts)
    assert record["clip_percentile"]["config_key"] == "curate_images.filters.clip_top_percent"
    (line,) = percentile_lines(record)
    assert line == ("curate_images.filters.clip_top_percent=50: kept clip_score ≥ 3 (2 of 4 scored rows; 2 "
                    "below_clip_percentile)")  # fmt: skip
    _, empty = apply_percentiles({"clip_score": np.array([])}, FilterConfig(clip_top_percent=50), rows=0)
    assert percentile_lines(percentile_record(empty)) == [
        "curate_images.filters.clip_top_percent=50: no scored row to rank, nothing rejected"]
    assert percentile_lines({}) == percentile_lines(None) == []
    audit = {"ref": "d@1", "rows": 4, "location": "x", "consistent": True, "by_decision": {"kept": 2, "rejected": 2},
             "by_reason": {"below_clip_percentile": 2}, "percentiles": record}  # fmt: skip
    assert f"  top percent: {line}" in audit_lines(audit, None, 0)
