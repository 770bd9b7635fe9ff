"""What ``alcm audit`` prints never carries a terminal control sequence from the data: keys, errors, reasons and
captions come from input files (names, sidecars) that anyone could have written."""

from __future__ import annotations

import re

from registry.render import audit_lines, plain, trace_lines

HOSTILE_KEY = "clip\x1b[2J\x1b[31mred\x9b0m\u202etxt.mp4\udcff"
"""ESC sequences (clear screen, colour), a C1 CSI, a right-to-left override and a lone surrogate (a non-UTF-8 name)."""
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff]")
"""Anything a terminal would act on, except the newline the renderer itself puts between lines."""


def test_plain_escapes_controls_bidi_marks_and_surrogates_and_keeps_the_rest():
    assert plain(HOSTILE_KEY) == "clip\\x1b[2J\\x1b[31mred\\x9b0m\\u202etxt.mp4\\udcff"
    assert plain("a dancer in a 紅 shirt — ok") == "a dancer in a 紅 shirt — ok"
    assert plain(None) == "None"


def test_an_audit_with_hostile_keys_errors_and_captions_prints_no_control_sequence():
    audit = {
        "ref": "toy-curated-videos@1", "rows": 2, "location": "data/x", "consistent": True,
        "by_decision": {"quarantined": 2}, "by_reason": {"bad_schema": 2}, "matching": 2,
        "examples": [
            {"key": HOSTILE_KEY, "decision": "quarantined", "reasons": ["bad_schema"], "caption": "a\x1b]0;pwned\x07",
             "error": f"{HOSTILE_KEY}.json is not valid JSON", "clip_score": 0.5},
            {"key": "plain", "decision": "quarantined", "reasons": ["bad_schema"], "caption": None, "error": None},
        ],
    }  # fmt: skip
    text = "\n".join(audit_lines(audit, "bad_schema", 2))
    assert not UNSAFE.search(text), repr(text)
    assert "clip\\x1b[2J" in text and "plain" in text and "0.5" in text
    trace = {"key": HOSTILE_KEY, "datasets": [{"dataset": "d@1", "decision": "kept", "reasons": None,
                                               "id": f"{HOSTILE_KEY}#000000"}], "checkpoints": []}  # fmt: skip
    for t in (trace, {"key": HOSTILE_KEY, "datasets": [], "checkpoints": []}):
        text = "\n".join(trace_lines(t))
        assert not UNSAFE.search(text) and "\\u202e" in text, repr(text)
