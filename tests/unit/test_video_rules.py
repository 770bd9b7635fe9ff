import numpy as np
import pytest

from contracts.reasons import REJECT_REASONS
from filters.video_rules import (
    VIDEO_FILTERS,
    VideoFilterConfig,
    apply_video_filters,
    detect_cuts,
    histogram_distances,
    motion_score,
    split_segments,
    video_filter_versions,
)

T, SIZE = 10, 32
CFG = VideoFilterConfig(min_side=48, caption_max_chars=60)


def texture(seed: int, level: float) -> np.ndarray:
    """A smooth textured background around grey ``level`` (values stay inside [0, 1])."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    phase = rng.uniform(0, 2 * np.pi, size=2)
    return (level + 0.08 * np.sin(2 * np.pi * 2 * x + phase[0]) * np.cos(2 * np.pi * 3 * y + phase[1])).astype(
        np.float32
    )


def static_clip() -> np.ndarray:
    return np.repeat(texture(0, 0.4)[None], T, axis=0)


def moving_square_clip(backgrounds: list[np.ndarray] | None = None) -> np.ndarray:
    """An 8x8 white square moving 2 pixels right per frame; frame t uses ``backgrounds[t]`` (default one texture)."""
    frames = []
    for t in range(T):
        frame = (backgrounds[t] if backgrounds else texture(1, 0.3)).copy()
        frame[12:20, 2 + 2 * t : 10 + 2 * t] = 1.0
        frames.append(frame)
    return np.stack(frames)


def cut_clip() -> np.ndarray:
    """The moving square, over a dark background until frame 4 and a bright one from frame 5 on."""
    dark, bright = texture(2, 0.2), texture(3, 0.75)
    return moving_square_clip([dark if t < 5 else bright for t in range(T)])


def noise_clip() -> np.ndarray:
    return np.random.default_rng(4).uniform(0, 1, size=(T, SIZE, SIZE)).astype(np.float32)


def strobe_clip() -> np.ndarray:
    return np.stack([texture(5, 0.15) if t % 2 else texture(6, 0.85) for t in range(T)])


def batch(**cols) -> dict[str, np.ndarray]:
    n = len(next(iter(cols.values())))
    base = {
        "caption": ["a red circle moving right"] * n,
        "width": [64] * n,
        "height": [64] * n,
        "duration_s": [2.0] * n,
        "motion_score": [5.0] * n,
        "watermark_prob": [0.1] * n,
        "aesthetic_score": [5.0] * n,
        "clip_score": [30.0] * n,
        "scene_cuts": [0] * n,
    }
    base.update(cols)
    dtypes = {"caption": object, "width": np.int64, "height": np.int64, "scene_cuts": np.int64}
    return {k: np.array(v, dtype=dtypes.get(k, np.float64)) for k, v in base.items()}


def test_a_static_clip_has_zero_motion_and_no_cuts():
    clip = static_clip()
    assert motion_score(clip) == 0.0
    assert detect_cuts(clip, threshold=CFG.cut_threshold) == []


def test_a_moving_square_has_motion_inside_the_default_band_and_no_cut():
    clip = moving_square_clip()
    assert CFG.motion_min < motion_score(clip) < CFG.motion_max
    assert detect_cuts(clip, threshold=CFG.cut_threshold) == []


def test_motion_score_is_mean_grey_levels_changed_per_sampled_step():
    clip = np.zeros((3, 4, 4), dtype=np.float32)
    clip[1, :2] = 1.0  # step 0->1: half the pixels change by 1; step 1->2: the same half changes back
    assert motion_score(clip) == pytest.approx(0.5 * 255)
    assert motion_score(clip[:1]) == 0.0


def test_a_switch_to_another_background_at_frame_5_is_one_cut_and_splits_the_clip_there():
    clip = cut_clip()
    cuts = detect_cuts(clip, threshold=CFG.cut_threshold)
    assert cuts == [5]
    assert split_segments(T, cuts) == [(0, 5), (5, T)]


def test_noise_is_too_jumpy_but_not_a_cut_at_every_step():
    clip = noise_clip()
    assert motion_score(clip) > CFG.motion_max
    assert detect_cuts(clip, threshold=CFG.cut_threshold) == []


def test_a_strobing_clip_changes_its_histogram_every_step_but_reports_no_cut():
    clip = strobe_clip()
    assert (histogram_distances(clip) > CFG.cut_threshold).all()
    assert detect_cuts(clip, threshold=CFG.cut_threshold) == []


def test_a_two_frame_clip_with_a_cut_only_needs_to_exceed_the_threshold():
    clip = cut_clip()[4:6]
    assert detect_cuts(clip, threshold=CFG.cut_threshold) == [1]
    assert detect_cuts(clip, threshold=1.0) == []


def test_analysis_frames_must_be_float_grey_stacks():
    with pytest.raises(ValueError, match="dtype uint8"):
        motion_score(np.zeros((3, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="shape"):
        detect_cuts(np.zeros((3, 4, 4, 3), dtype=np.float32), threshold=0.35)


def test_split_segments_cover_every_frame_and_reject_bad_cuts():
    assert split_segments(8, []) == [(0, 8)]
    assert split_segments(8, [2, 5]) == [(0, 2), (2, 5), (5, 8)]
    assert split_segments(0, []) == []
    for bad in ([0], [8], [5, 3], [3, 3]):
        with pytest.raises(ValueError, match="cuts="):
            split_segments(8, bad)


def test_reasons_of_three_synthetic_clips_follow_their_motion():
    clips = [static_clip(), moving_square_clip(), noise_clip()]
    b = batch(
        motion_score=[motion_score(c) for c in clips],
        scene_cuts=[len(detect_cuts(c, threshold=CFG.cut_threshold)) for c in clips],
    )
    assert apply_video_filters(b, CFG) == [["too_static"], [], ["too_jumpy"]]


def test_every_failing_filter_is_listed_in_filter_order():
    b = batch(
        caption=["", "one two", "a dancer\x07 spinning slowly", "word " * 20],
        width=[32, 64, 640, 64],
        height=[400, 64, 480, 64],
        duration_s=[90.0, 2.0, 2.0, 2.0],
        watermark_prob=[0.9, 0.1, 0.1, 0.1],
        aesthetic_score=[5.0, 3.0, 5.0, 5.0],
        clip_score=[30.0, 30.0, 10.0, 30.0],
    )
    assert apply_video_filters(b, CFG) == [
        ["low_resolution", "too_long", "caption_empty", "watermark"],
        ["caption_too_short", "low_aesthetic"],
        ["caption_control_chars", "low_clip_score"],
        ["caption_too_long"],
    ]


def test_nan_scores_never_reject():
    nan = [np.nan, np.nan]
    b = batch(motion_score=nan, watermark_prob=nan, aesthetic_score=nan, clip_score=nan, duration_s=nan)
    assert apply_video_filters(b, CFG) == [[], []]


def test_scene_cuts_reject_only_under_the_reject_policy():
    b = batch(scene_cuts=[0, 1, 3])
    assert apply_video_filters(b, VideoFilterConfig(min_side=48, scene_cut="reject")) == [
        [],
        ["scene_cut"],
        ["scene_cut"],
    ]
    assert apply_video_filters(b, VideoFilterConfig(min_side=48, scene_cut="split")) == [[], [], []]
    assert apply_video_filters(b, VideoFilterConfig(min_side=48, scene_cut="ignore")) == [[], [], []]


def test_undecodable_rows_are_not_judged():
    b = batch(width=[8, 8])
    b["decodable"] = np.array([False, True])
    assert apply_video_filters(b, CFG) == [[], ["low_resolution"]]


def test_a_batch_missing_a_column_is_refused_with_the_column_named():
    b = batch(width=[64])
    del b["motion_score"]
    with pytest.raises(ValueError, match="motion_score"):
        apply_video_filters(b, CFG)


def test_every_video_filter_emits_a_documented_reject_reason_and_is_versioned():
    assert len({f.name for f in VIDEO_FILTERS}) == len(VIDEO_FILTERS)
    assert all(f.reason in REJECT_REASONS for f in VIDEO_FILTERS)
    assert video_filter_versions() == {f.name: f.version for f in VIDEO_FILTERS}
    assert {"too_long", "too_static", "too_jumpy", "scene_cut"} <= {f.reason for f in VIDEO_FILTERS}


@pytest.mark.parametrize(
    "field, value",
    [
        ("min_side", 0),
        ("max_duration_s", 0.0),
        ("motion_min", -1.0),
        ("motion_max", 0.1),
        ("watermark_max", 1.5),
        ("aesthetic_min", float("nan")),
        ("clip_min", 150.0),
        ("caption_min_words", -1),
        ("caption_max_chars", 0),
        ("scene_cut", "cut"),
        ("cut_threshold", 0.0),
        ("cut_threshold", 1.5),
    ],
)
def test_an_invalid_config_value_is_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}="):
        VideoFilterConfig(**{field: value})


def test_the_default_config_matches_the_documented_defaults():
    cfg = VideoFilterConfig()
    assert (cfg.min_side, cfg.max_duration_s, cfg.motion_min, cfg.motion_max) == (256, 60.0, 0.5, 40.0)
    assert (cfg.watermark_max, cfg.aesthetic_min, cfg.clip_min) == (0.8, 4.5, 20.0)
    assert (cfg.caption_min_words, cfg.caption_max_chars, cfg.scene_cut, cfg.cut_threshold) == (3, 300, "split", 0.35)
