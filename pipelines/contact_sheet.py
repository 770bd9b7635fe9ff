"""The audit contact sheet (``alcm audit dataset REF --sheet FILE.png``): a dataset version's decisions to look at.

What it draws, from :func:`registry.audit.sheet_audit` (counts and examples) and :func:`sheet_tiles` (pixels):

- a title line: the version, its row count and the rows per decision;
- a horizontal bar chart (matplotlib) of the rows per group, one bar each, in the order of the rows below: ``kept``
  (green), each reject reason (orange), each quarantine reason (red); a row with several reasons counts in each;
- one row per group: on the left its name, count and decision, then up to ``per_reason`` tiles, the group's first
  rows by key (the same version always shows the same examples). A tile is the row's thumbnail (an image; a video
  clip's first frame) at most :data:`THUMBNAIL` pixels a side, centred in a square cell, with the row's key and its
  scores (clip / aes / wm / motion, where the audit has them) written under it.

Rows the sheet never decodes: a quarantined row (``too_large`` — a decompression bomb —, ``undecodable``, an
unsafe path, a FIFO...) is a grey placeholder tile naming its reason; its input is not even read. A rejected row
whose input is gone or fails the safe decoder (:mod:`pipelines.audit_samples`) is a placeholder saying why.

Groups with no rows: the reasons are the ones the audit holds, so a reason no row carries has no row on the sheet
(nor a bar); the ``kept`` row is always drawn, empty (``0 rows``) when nothing was kept. The sheet's size follows
from the number of groups and ``per_reason`` alone (:func:`sheet_size`), whatever the thumbnails' shapes.

Next to ``FILE.png`` the command writes ``FILE.html``: the sheet (by its file name, relative), the counts per
decision and per group with each reason's meaning (:mod:`contracts.reasons`), and the examples shown, as tables, in
a page that loads nothing else (:mod:`contracts.html`).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from contracts import storage
from contracts.html import esc, page, relative_src, table
from contracts.reasons import ALL_REASONS, KEPT, QUARANTINE_REASONS, QUARANTINED, REJECTED
from filters.decode import DecodeConfig
from pipelines.audit_samples import THUMBNAIL, decode_thumbnail, image_thumbnails, video_thumbnails
from pipelines.data_config import ClipConfig

GAP = 8
"""Pixels between cells and around the sheet."""
HEAD_W = 190
"""Width of the left column (the group's name, count and decision)."""
LINE_H = 13
"""Height of one line of text under a tile."""
LABEL_LINES = 4
"""Lines under a tile: the key, then the scores."""
ROW_H = GAP + THUMBNAIL + LABEL_LINES * LINE_H + GAP
TITLE_H = 36
BAR_H = 22
"""Chart height per bar (plus :data:`CHART_PAD`)."""
CHART_PAD = 70
MIN_WIDTH = 640
COLOURS = {KEPT: "#4c9a2a", REJECTED: "#e08a1e", QUARANTINED: "#c0392b"}
#: Score columns written under a tile, with their short names, in this order.
SCORES = (("clip_score", "clip"), ("aesthetic_score", "aes"), ("watermark_prob", "wm"), ("motion_score", "motion"))


@dataclass(frozen=True)
class Tile:
    """One drawn example: its row, where its cell is, and what it shows."""

    id: str
    key: str
    box: tuple[int, int, int, int]
    """The thumbnail cell (left, top, right, bottom) in sheet pixels; the label lines are under it."""
    placeholder: str | None = None
    """Why the cell holds no thumbnail (its text), or None when it shows the row's pixels."""


@dataclass(frozen=True)
class Row:
    """One group's row of the sheet."""

    name: str
    count: int
    decision: str
    top: int
    tiles: list[Tile] = field(default_factory=list)


@dataclass(frozen=True)
class Layout:
    """Where everything is on a written sheet (what the HTML page and the tests read)."""

    size: tuple[int, int]
    chart: tuple[int, int, int, int]
    rows: list[Row]
    counts: dict[str, int]
    """Rows per group, as the bar chart draws them."""


def group_decision(name: str) -> str:
    """The decision a group's rows have: ``kept``, or the decision its reason leads to."""
    if name == KEPT:
        return KEPT
    return QUARANTINED if name in QUARANTINE_REASONS else REJECTED


def chart_height(groups: int) -> int:
    return CHART_PAD + BAR_H * max(groups, 1)


def sheet_size(groups: int, per_reason: int) -> tuple[int, int]:
    """(width, height) in pixels of a sheet of ``groups`` rows of up to ``per_reason`` tiles."""
    width = max(MIN_WIDTH, HEAD_W + per_reason * (THUMBNAIL + GAP) + GAP)
    return width, TITLE_H + chart_height(groups) + GAP + groups * ROW_H


def sheet_tiles(sheet: dict, *, decode: DecodeConfig | None = None, clip: ClipConfig | None = None) -> dict:
    """``id → PIL thumbnail`` or ``id → placeholder text`` for every example of ``sheet``: kept rows from the
    version's kept data (``sheet["payloads"]``), rejected rows re-read from its raw input, quarantined rows never
    read (their reason)."""
    tiles: dict = {}
    to_read: dict[str, dict] = {}
    for group in sheet["groups"]:
        for ex in group["examples"]:
            rid = ex["id"]
            if rid in tiles or rid in to_read:
                continue
            if ex["decision"] == QUARANTINED:
                tiles[rid] = f"{(ex.get('reasons') or ['quarantined'])[0]}: quarantined, not decoded"
            elif ex["decision"] == KEPT and rid in sheet["payloads"]:
                tiles[rid] = decode_thumbnail(sheet["payloads"][rid], decode)
            else:
                to_read[rid] = ex
    root = sheet.get("input_root")
    if not to_read:
        return tiles
    if not root or storage.is_uri(root):
        why = f"not read: the input root {root} is not a local directory" if root else "the manifest names no input"
        return {**tiles, **{rid: why for rid in to_read}}
    if sheet["kind"] == "video":
        return {**tiles, **video_thumbnails(root, list(to_read.values()), clip=clip)}
    return {**tiles, **image_thumbnails(root, list(to_read.values()), decode=decode)}


def reason_chart(counts: dict[str, int], width: int, height: int):
    """The bar chart of rows per group (a matplotlib Figure, ``width`` × ``height`` pixels): one horizontal bar
    per group, top to bottom in ``counts``' order, coloured by decision, its count written at its end."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    ax = fig.add_subplot()
    names = list(counts)
    values = [counts[n] for n in names]
    bars = ax.barh(range(len(names)), values, color=[COLOURS[group_decision(n)] for n in names])
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.bar_label(bars, fontsize=8, padding=2)
    ax.set_xlim(0, max(values, default=0) * 1.12 + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("rows", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_title("rows per group (a row with several reasons counts in each)", fontsize=9)
    fig.subplots_adjust(left=HEAD_W / width, right=1 - GAP / width, top=1 - 24 / height, bottom=40 / height)
    return fig


def _figure_image(fig):
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _fit(draw, text: str, font, width: int) -> str:
    """``text`` cut (with an ellipsis) to ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _wrap(draw, text: str, font, width: int, lines: int) -> list[str]:
    """``text`` in at most ``lines`` lines of ``width`` pixels (words kept whole where they fit)."""
    out: list[str] = []
    for word in text.split():
        if out and draw.textlength(out[-1] + " " + word, font=font) <= width:
            out[-1] += " " + word
        else:
            out.append(word)
    out = out[:lines]
    return [_fit(draw, line, font, width) for line in out]


def score_lines(example: dict) -> list[str]:
    """The scores written under a tile: ``clip 0.31  aes 5.20``, two a line, the audit's columns only."""
    parts = []
    for column, short in SCORES:
        value = example.get(column)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            parts.append(f"{short} {value:.2f}" if abs(value) < 100 else f"{short} {value:.0f}")
    return ["  ".join(parts[i : i + 2]) for i in range(0, len(parts), 2)]


def render_sheet(sheet: dict, tiles: dict):
    """The contact sheet as a PIL image, and its :class:`Layout` (module docstring)."""
    from PIL import Image, ImageDraw, ImageFont

    groups = sheet["groups"]
    per = sheet["per_reason"]
    width, height = sheet_size(len(groups), per)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font, bold = ImageFont.load_default(size=11), ImageFont.load_default(size=14)
    decisions = ", ".join(f"{d} {n}" for d, n in sheet["by_decision"].items())
    draw.text((GAP, GAP), _fit(draw, f"{sheet['ref']}: {sheet['rows']} rows ({decisions})", bold, width - 2 * GAP),
              fill="black", font=bold)  # fmt: skip
    counts = {g["name"]: g["count"] for g in groups}
    chart = (0, TITLE_H, width, TITLE_H + chart_height(len(groups)))
    img.paste(_figure_image(reason_chart(counts, width, chart[3] - chart[1])), chart[:2])
    rows = []
    top = chart[3] + GAP
    for group in groups:
        decision = group_decision(group["name"])
        draw.line((GAP, top, width - GAP, top), fill="#cccccc")
        draw.rectangle((GAP, top + GAP, GAP + 4, top + GAP + THUMBNAIL), fill=COLOURS[decision])
        draw.text((GAP + 10, top + GAP), _fit(draw, group["name"], bold, HEAD_W - 20), fill="black", font=bold)
        shown = f"{group['count']} row{'s' if group['count'] != 1 else ''}"
        draw.text((GAP + 10, top + GAP + 20), shown, fill="#333333", font=font)
        draw.text((GAP + 10, top + GAP + 20 + LINE_H), decision, fill=COLOURS[decision], font=font)
        row = Row(group["name"], group["count"], decision, top)
        for i, ex in enumerate(group["examples"]):
            left = HEAD_W + i * (THUMBNAIL + GAP)
            box = (left, top + GAP, left + THUMBNAIL, top + GAP + THUMBNAIL)
            thumb = tiles.get(ex["id"], "no thumbnail")
            placeholder = thumb if isinstance(thumb, str) else None
            _draw_tile(img, draw, box, thumb, font, bold)
            labels = [_fit(draw, str(ex.get("key")), font, THUMBNAIL), *score_lines(ex)]
            if placeholder is not None and ex.get("error"):
                labels.append(str(ex["error"]))
            for j, text in enumerate(labels[:LABEL_LINES]):
                draw.text((left, box[3] + 2 + j * LINE_H), _fit(draw, text, font, THUMBNAIL), fill="#222222",
                          font=font)  # fmt: skip
            row.tiles.append(Tile(ex["id"], str(ex.get("key")), box, placeholder))
        rows.append(row)
        top += ROW_H
    return img, Layout((width, height), chart, rows, counts)


def _draw_tile(img, draw, box, thumb, font, bold) -> None:
    """A thumbnail centred in its cell, or a grey placeholder with the reason (first word large) in it."""
    left, top, right, bottom = box
    if isinstance(thumb, str):
        draw.rectangle((left, top, right - 1, bottom - 1), fill="#d5d5d5", outline="#999999")
        head, _, rest = thumb.partition(":") if ":" in thumb else ("not shown", "", thumb)
        heads = _wrap(draw, head, bold, THUMBNAIL - 12, 2)
        for j, line in enumerate(heads):
            draw.text((left + 6, top + 6 + j * 17), line, fill="#7a1f16", font=bold)
        for j, line in enumerate(_wrap(draw, rest.strip(), font, THUMBNAIL - 12, 7 - len(heads))):
            draw.text((left + 6, top + 12 + 17 * len(heads) + j * LINE_H), line, fill="#333333", font=font)
        return
    draw.rectangle((left, top, right - 1, bottom - 1), fill="#f2f2f2")
    img.paste(thumb.convert("RGB"), (left + (THUMBNAIL - thumb.width) // 2, top + (THUMBNAIL - thumb.height) // 2))


def sheet_html(sheet: dict, layout: Layout, png_name: str) -> str:
    """The page next to the sheet: the sheet image (``png_name``, relative), the counts and the examples."""
    decisions = table(["decision", "rows"], [[d, n] for d, n in sheet["by_decision"].items()])
    groups = table(["group", "decision", "rows", "shown", "meaning"],
                   [[r.name, r.decision, r.count, len(r.tiles), "passed every filter" if r.name == KEPT
                     else ALL_REASONS.get(r.name, "")] for r in layout.rows])  # fmt: skip
    examples = table(["group", "key", "id", "shown as"],
                     [[r.name, t.key, t.id, t.placeholder or "thumbnail"] for r in layout.rows for t in r.tiles])
    mismatch = f"The audit does not match the manifest's counts ({sheet['manifest_by_decision']})."
    note = "" if sheet["consistent"] else f"<p><strong>{esc(mismatch)}</strong></p>"
    body = "\n".join([
        f"<p>{esc(sheet['rows'])} rows; up to {esc(sheet['per_reason'])} examples per group, the first by key.</p>",
        note,
        f'<img src="{relative_src(png_name)}" alt="contact sheet of {esc(sheet["ref"])}" width="{layout.size[0]}">',
        "<h2>Rows per decision</h2>", decisions, "<h2>Rows per group</h2>", groups, "<h2>Examples shown</h2>", examples,
    ])  # fmt: skip
    return page(f"Audit contact sheet: {sheet['ref']}", body, images="'self' file:")


def write_contact_sheet(sheet: dict, png: Path, *, decode: DecodeConfig | None = None,
                        clip: ClipConfig | None = None) -> Layout:  # fmt: skip
    """Write the sheet of ``sheet`` (:func:`registry.audit.sheet_audit`) to ``png`` and its page to ``png`` with
    ``.html``; returns the layout."""
    png = Path(png)
    if png.suffix.lower() != ".png":
        raise ValueError(f"--sheet {png}: the contact sheet is a .png file (its page is written next to it as .html)")
    img, layout = render_sheet(sheet, sheet_tiles(sheet, decode=decode, clip=clip))
    png.parent.mkdir(parents=True, exist_ok=True)
    img.save(png)
    png.with_suffix(".html").write_text(sheet_html(sheet, layout, png.name))
    return layout
