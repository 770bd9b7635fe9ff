import numpy as np

from contracts.reasons import ALL_REASONS, QUARANTINE_REASONS, REJECT_REASONS
from filters.rules import FILTERS, FilterConfig, apply_filters

CFG = FilterConfig(
    min_side=48,
    max_aspect=2.0,
    caption_min_words=3,
    caption_max_chars=40,
    watermark_max=0.5,
    aesthetic_min=0.5,
    clip_min=20.0,
)


def batch(**cols):
    n = len(next(iter(cols.values())))
    base = {
        "key": np.array([f"k{i}" for i in range(n)], dtype=object),
        "caption": np.array(["a red circle on the left"] * n, dtype=object),
        "width": np.full(n, 64),
        "height": np.full(n, 64),
        "decodable": np.ones(n, dtype=bool),
        "clip_score": np.full(n, 30.0),
        "aesthetic_score": np.full(n, 0.9),
        "watermark_prob": np.full(n, 0.1),
    }
    base.update({k: np.array(v, dtype=object if k in ("caption", "key") else None) for k, v in cols.items()})
    return base


def test_clean_rows_pass_every_filter():
    assert apply_filters(batch(width=[64, 64, 100]), CFG) == [[], [], []]


def test_low_resolution_and_bad_aspect_are_separate_reasons():
    b = batch(width=[32, 64, 200], height=[32, 200, 100])
    assert apply_filters(b, CFG) == [["low_resolution"], ["bad_aspect"], []]


def test_caption_rules_emit_their_reasons():
    b = batch(caption=["   ", "circle", "a red circle\x07 on the left", "word " * 20, None])
    assert apply_filters(b, CFG) == [
        ["caption_empty"],
        ["caption_too_short"],
        ["caption_control_chars"],
        ["caption_too_long"],
        ["caption_empty"],
    ]


def test_watermarked_rows_are_rejected_with_reason():
    b = batch(watermark_prob=[0.9, 0.5, 0.49])
    assert apply_filters(b, CFG) == [["watermark"], [], []]


def test_model_scores_reject_below_threshold_and_nan_never_rejects():
    b = batch(clip_score=[10.0, np.nan, 25.0], aesthetic_score=[0.9, 0.1, np.nan])
    assert apply_filters(b, CFG) == [["low_clip_score"], ["low_aesthetic"], []]


def test_all_failing_filters_are_listed_in_order():
    b = batch(width=[20], height=[20], caption=[""], watermark_prob=[0.99], clip_score=[0.0])
    assert apply_filters(b, CFG) == [["low_resolution", "caption_empty", "watermark", "low_clip_score"]]


def test_undecodable_rows_are_not_judged_by_filters():
    b = batch(width=[0, 0, 64], height=[0, 0, 64], decodable=[False, False, True])
    assert apply_filters(b, CFG) == [[], [], []]


def test_every_filter_emits_a_documented_reject_reason_and_names_are_unique():
    assert len({f.name for f in FILTERS}) == len(FILTERS)
    for f in FILTERS:
        assert f.reason in REJECT_REASONS
        assert f.version


def test_reason_vocabulary_has_the_required_codes():
    required_reject = {
        "low_resolution",
        "bad_aspect",
        "caption_empty",
        "caption_too_short",
        "caption_too_long",
        "caption_control_chars",
        "watermark",
        "low_aesthetic",
        "low_clip_score",
        "duplicate",
    }
    required_quarantine = {"undecodable", "too_large", "bad_schema", "unsafe_path"}
    assert required_reject <= set(REJECT_REASONS)
    assert required_quarantine <= set(QUARANTINE_REASONS)
    assert not set(REJECT_REASONS) & set(QUARANTINE_REASONS)
    assert all(ALL_REASONS.values())
