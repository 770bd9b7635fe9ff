"""The curation job's stage functions on tiny batches (no Ray): decode, decide, global decisions."""

import io

import pyarrow as pa
from PIL import Image

from pipelines.config import load_config
from pipelines.curate_images import apply_global, decide, decode_rows, global_decisions

CFG = load_config("toy")


def png(color, size=(64, 64)):
    buf = io.BytesIO()
    img = Image.new("RGB", size, color)
    for x in range(0, size[0], 8):
        img.putpixel((x, x % size[1]), (x * 3 % 256, 0, 0))
    img.save(buf, format="PNG")
    return buf.getvalue()


def raw(rows):
    base = {"source": "s.parquet", "url": None, "quarantine": None, "error": None}
    return pa.Table.from_pylist([{**base, **r} for r in rows])


def decided(rows):
    table = decode_rows(raw(rows), cfg=CFG.decode)
    # Scores of a good image-text pair under the profile's thresholds, so only decoding and the rule filters decide.
    f = CFG.curate_images.filters
    for c, value in (("clip_score", f.clip_min + 1), ("aesthetic_score", f.aesthetic_min + 1), ("watermark_prob", 0.0)):
        table = table.set_column(table.schema.get_field_index(c), c, pa.array([value] * table.num_rows, pa.float32()))
    return decide(table.drop_columns(["_pixels", "_pixels_w", "_pixels_h"]), cfg=CFG.curate_images.filters)


def test_decode_quarantines_bad_bytes_and_keeps_reader_quarantine():
    table = decode_rows(
        raw(
            [
                {"id": "s#0", "key": "a", "caption": "a red circle here", "image": png((255, 0, 0))},
                {"id": "s#1", "key": "b", "caption": "a red circle here", "image": b"garbage"},
                {
                    "id": "s#2",
                    "key": "c",
                    "caption": None,
                    "image": None,
                    "quarantine": "bad_schema",
                    "error": "no key",
                },
            ]
        ),
        cfg=CFG.decode,
    )
    assert table.column("decodable").to_pylist() == [True, False, False]
    assert table.column("quarantine").to_pylist() == [None, "undecodable", "bad_schema"]
    assert table.column("error").to_pylist()[2] == "no key"
    assert len(table.column("_pixels")[0].as_py()) == 64 * 64 * 3


def test_decide_lists_reasons_and_quarantine_wins():
    table = decided(
        [
            {"id": "s#0", "key": "a", "caption": "a red circle here", "image": png((255, 0, 0))},
            {"id": "s#1", "key": "b", "caption": "", "image": png((0, 255, 0), (20, 20))},
            {"id": "s#2", "key": "c", "caption": "x y z", "image": b""},
        ]
    )
    assert table.column("decision").to_pylist() == ["kept", "rejected", "quarantined"]
    assert table.column("reasons").to_pylist() == [[], ["low_resolution", "caption_empty"], ["undecodable"]]


def test_later_duplicate_keys_are_quarantined_and_exact_duplicates_point_at_the_kept_key():
    img = png((0, 0, 255))
    table = decided(
        [
            {"id": "s#00000000", "key": "k1", "caption": "a blue square here", "image": img},
            {"id": "s#00000001", "key": "k1", "caption": "a blue square here", "image": png((9, 9, 9))},
            {"id": "s#00000002", "key": "k0", "caption": "a blue square here", "image": img},
        ]
    )
    meta = table.select(["id", "key", "decision", "sha256", "phash", "width", "height"]).to_pandas()
    updates = global_decisions(meta, CFG).updates
    assert updates["s#00000001"][:2] == ("quarantined", ("duplicate_key",))
    # k0 and k1 share bytes; the smaller key is kept.
    assert updates["s#00000000"] == ("rejected", ("duplicate",), "k0", None)
    out = apply_global(table, updates=updates)
    assert out.column("decision").to_pylist() == ["rejected", "quarantined", "kept"]
    assert out.column("reasons").to_pylist() == [["duplicate"], ["duplicate_key"], []]
    assert out.column("duplicate_of").to_pylist() == ["k0", None, None]
