"""Audit thumbnails read rows back through curation's safe decoder: a bomb is reported with its reason, never
decoded, and the other rows still get their thumbnails."""

from __future__ import annotations

import io

from PIL import Image

from filters.decode import DecodeConfig
from pipelines.audit_samples import THUMBNAIL, write_thumbnails


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_a_bomb_row_is_reported_not_decoded_and_the_others_get_thumbnails(tmp_path, monkeypatch):
    root = tmp_path / "in"
    root.mkdir()
    (root / "wide.png").write_bytes(_png(Image.new("RGB", (600, 150), (200, 30, 30))))
    (root / "bomb.png").write_bytes(_png(Image.new("1", (4000, 4000))))  # 16 Mpx in a few kB
    (root / "junk.png").write_bytes(b"not an image")
    rows = [{"id": f"{k}.png", "key": k, "source": "."} for k in ("wide", "bomb", "junk", "gone")]
    decoded_sizes = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded_sizes.append(self.size) or real_load(self))

    out = write_thumbnails(root, rows, tmp_path / "thumbs", decode=DecodeConfig(max_pixels=1_000_000))

    assert out["bomb"].startswith("not decoded (too_large)") and "16000000 pixels > max_pixels=1000000" in out["bomb"]
    assert (4000, 4000) not in decoded_sizes  # the header was read, the pixels never were
    assert out["junk"].startswith("not decoded (undecodable)")
    assert out["gone"].startswith("row gone.png not found")
    thumb = Image.open(out["wide"])
    assert max(thumb.size) <= THUMBNAIL and thumb.size[0] > thumb.size[1]
    assert thumb.convert("RGB").getpixel((thumb.size[0] // 2, thumb.size[1] // 2)) == (200, 30, 30)
