"""The two pages a person opens instead of reading tables, as a browser shows them: the eval report's ``report.html``
and the audit contact sheet's page (``alcm audit dataset --sheet``) of the session's curated toy dataset. Headless
system Chromium (Playwright, no browser download, as in test_serve_ui.py) opens each from a ``file://`` URL: the
title, the tables' header cells, every image loaded, and no request leaving the page."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/lib/chromium/chromium"
#: Where the pages' screenshots are left (test artifacts CI keeps with the run).
ARTIFACTS = Path(os.environ.get("ALCM_TEST_ARTIFACTS", ROOT / "data" / "test-artifacts"))

REPORT = {
    "checkpoint": {"name": "toy-video <lcm>", "stage": "video_consistency_distillation", "path": "/ckpt",
                   "digest": "sha256:" + "0" * 64, "kind": "video"},
    "setup": {"prompts": "toyworld/eval", "num_prompts": 2, "videos_per_prompt": 1, "frames": 4, "size": 32,
              "fd": "fvd", "extractor": "toy CLIP image tower", "reference": "the prompt set's reference renders",
              "guidance_scale": 3.5, "reference_steps": 4, "n": 2, "intervals": "95%"},
    "metrics": ["fvd", "kid", "clipsim", "temporal", "unet_evals"],
    "results": {"animatelcm": {str(s): {"fvd": 3.0 / s, "kid": 0.1 / s, "clipsim": 20.0 + s, "temporal": 0.9,
                                        "unet_evals": s, "ci95": {"fvd": [2.0 / s, 4.0 / s]}, "n": 2}
                               for s in (1, 2, 4)},
                "ddim": {str(s): {"fvd": 2.5 / s, "kid": 0.08 / s, "clipsim": 21.0 + s, "temporal": 0.92,
                                  "unet_evals": 2 * s, "n": 2} for s in (2, 4)}},
    "floor": {"fvd": 0.4, "kid": 0.01, "n": 2},
    "speedup": {"4": 2.0}, "samples": "samples.gif", "samples_layout": "rows: prompts 'a red <circle>'",
}  # fmt: skip


@pytest.fixture(scope="module")
def pages(curated, tmp_path_factory) -> dict:
    """report.html of a report directory written by the eval job's own writers (plots, page) with a samples GIF,
    and the contact sheet of the session's curated dataset, through the CLI."""
    from contracts.report import report_html
    from flows.cli import app
    from flows.common import open_registry
    from pipelines.evaluate import write_plots

    tmp = tmp_path_factory.mktemp("pages")
    report_dir = tmp / "eval"
    write_plots(REPORT, report_dir / "plots")
    frames = [Image.new("RGB", (96, 64), c) for c in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    frames[0].save(report_dir / "samples.gif", save_all=True, append_images=frames[1:], duration=125, loop=0)
    (report_dir / "report.html").write_text(report_html(REPORT, report_dir))

    ref = open_registry().register(curated.output).ref
    sheet = tmp / "sheet" / "contact sheet.png"
    result = CliRunner().invoke(app, ["audit", "dataset", ref, "--sheet", str(sheet), "--per-reason", "3"])
    assert result.exit_code == 0, result.output
    return {"report": report_dir / "report.html", "sheet": sheet, "ref": ref}


def _look(page, url: str, shot: str) -> dict:
    """Open ``url``; what the page shows: title, header cells per table, (complete, naturalWidth) per image, and
    every URL it requested."""
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(url, wait_until="load")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
    return {
        "title": page.title(),
        "headers": page.locator("table").evaluate_all(
            "ts => ts.map(t => Array.from(t.querySelectorAll('thead th')).map(th => th.textContent))"),
        "images": page.locator("img").evaluate_all("els => els.map(e => [e.complete, e.naturalWidth])"),
        "requested": requested,
    }  # fmt: skip


def test_the_report_page_and_the_contact_sheet_page_render_from_disk_without_the_network(pages):
    from playwright.sync_api import sync_playwright

    from flows.common import open_registry
    from pipelines.contact_sheet import sheet_size
    from registry.audit import dataset_audit

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        report = _look(browser.new_page(viewport={"width": 1200, "height": 900}), pages["report"].as_uri(),
                       "report-html.png")  # fmt: skip
        sheet = _look(browser.new_page(viewport={"width": 1200, "height": 900}), pages["sheet"].with_suffix(
            ".html").as_uri(), "contact-sheet-html.png")  # fmt: skip
        browser.close()

    assert report["title"] == "Eval report: toy-video <lcm> (video_consistency_distillation)"
    assert report["headers"] == [["method", "1", "2", "4"]] * len(REPORT["metrics"])  # a table per metric
    assert len(report["images"]) == 5 and all(done and width > 0 for done, width in report["images"])  # 4 plots, GIF
    assert report["requested"] and all(u.startswith(("file:", "data:")) for u in report["requested"])

    audit = dataset_audit(open_registry(), pages["ref"])
    assert sheet["title"] == f"Audit contact sheet: {pages['ref']}"
    assert sheet["headers"] == [["decision", "rows"], ["group", "decision", "rows", "shown", "meaning"],
                                ["group", "key", "id", "shown as"]]  # fmt: skip
    assert sheet["images"] and all(done and width > 0 for done, width in sheet["images"])
    assert sheet["images"][0][1] == Image.open(pages["sheet"]).width
    assert sheet["requested"] and all(u.startswith(("file:", "data:")) for u in sheet["requested"])
    # the sheet itself: kept and every reason of the audit, 3 examples each
    groups = 1 + len(audit["by_reason"])
    assert groups >= 4 and Image.open(pages["sheet"]).size == sheet_size(groups, 3)
