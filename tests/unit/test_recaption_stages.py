"""Recaptioning: candidate frame positions, aggregation, and the caption actor's row contract (fake captioner)."""

import numpy as np
import pyarrow as pa
import pytest

from models.video_io import encode_png
from pipelines import recaption
from pipelines.video_ingest import CLIP_SCHEMA


def test_candidate_positions_cover_ten_fifty_ninety_percent_of_the_clip():
    assert recaption.candidate_positions(8, (0.1, 0.5, 0.9)) == [1, 4, 6]
    assert recaption.candidate_positions(16, (0.1, 0.5, 0.9)) == [2, 8, 14]


def test_candidate_positions_drop_duplicates_on_short_clips():
    assert recaption.candidate_positions(2, (0.1, 0.5, 0.9)) == [0, 1]


def test_clip_best_picks_the_highest_score_and_breaks_ties_towards_the_middle():
    cands = ["a red circle", "a blue circle", "a red square"]
    assert recaption.aggregate(cands, [1, 4, 6], 8, [70.0, 80.0, 75.0], "clip_best") == 1
    assert recaption.aggregate(cands, [1, 4, 5], 8, [80.0, 70.0, 80.0], "clip_best") == 2


def test_most_common_picks_the_majority_caption():
    cands = ["a red circle", "a blue circle", "a blue circle"]
    assert recaption.aggregate(cands, [1, 4, 6], 8, None, "most_common") == 1
    assert recaption.aggregate(["x", "y", "z"], [1, 4, 6], 8, None, "most_common") == 1


def test_unknown_aggregation_is_an_error_listing_the_choices():
    with pytest.raises(ValueError, match="clip_best, first or most_common"):
        recaption.aggregate(["a"], [0], 1, None, "vote")
    with pytest.raises(ValueError, match="needs CLIP scores"):
        recaption.aggregate(["a"], [0], 1, None, "clip_best")


class _FakeCaptioner:
    model_id = "fake@sha256:0000"

    def generate(self, images):
        return [f"a frame of mean {int(np.asarray(im).mean())}" for im in images]


def _clip_row(rid, *, frames=None, quarantine=None, reasons=()):
    row = {name: None for name in CLIP_SCHEMA.names}
    row.update(id=rid, parent_id=rid, key=rid, source="s", kind="video", caption="orig", reasons=list(reasons))
    row["quarantine"] = quarantine
    if frames is not None:
        row["frames"] = [encode_png(np.full((8, 8, 3), v, np.uint8)) for v in frames]
        row["frame_indices"] = list(range(0, 2 * len(frames), 2))
    return row


def test_caption_actor_captions_judgeable_clips_and_passes_the_rest_through():
    actor = recaption.CaptionActor.__new__(recaption.CaptionActor)
    actor.captioner, actor.frames_at, actor.aggregation, actor.clip = _FakeCaptioner(), (0.0, 1.0), "first", None
    actor.generation = '{"num_beams":3}'
    table = pa.Table.from_pylist(
        [
            _clip_row("ok", frames=[10, 20, 30, 40]),
            _clip_row("bad", quarantine="undecodable"),
            _clip_row("short", reasons=["too_short"]),
        ],
        schema=CLIP_SCHEMA,
    )
    out = actor(table).to_pylist()
    ok, bad, short = out
    assert ok["decision"] == "kept"
    assert ok["caption_candidates"] == ["a frame of mean 10", "a frame of mean 40"]
    assert ok["caption"] == "a frame of mean 10" and ok["source_caption"] == "orig"
    assert ok["caption_frames"] == [0, 6] and ok["caption_model"] == "fake@sha256:0000"
    assert ok["generation"] == '{"num_beams":3}'
    assert (bad["decision"], bad["reasons"], bad["caption_candidates"]) == ("quarantined", ["undecodable"], None)
    assert (short["decision"], short["reasons"]) == ("rejected", ["too_short"])
