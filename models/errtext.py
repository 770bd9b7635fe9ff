"""Error text for audits: stable across runs and workers."""

from __future__ import annotations

import re

_OBJECT_REPR = re.compile(r"<[^<>]*? object at 0x[0-9a-fA-F]+>")


def describe_error(exc: BaseException) -> str:
    """``Type: message`` of a decoding error without object reprs (``<_io.BytesIO object at 0x7f…>``), so that an
    audit's error text is the same on every run and every worker."""
    return f"{type(exc).__name__}: {_OBJECT_REPR.sub('the bytes', str(exc))}"
