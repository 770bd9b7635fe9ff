"""Self-contained HTML pages (torch- and Ray-free): the eval report's ``report.html`` and the audit contact sheet's
page.

A page opens from disk, from MLflow's artifact browser and from a mail attachment alike, so it fetches nothing:
no scripts, no stylesheets or fonts from elsewhere, images either embedded as ``data:`` URIs or named by a path
relative to the page. Every text value goes through :func:`esc` (keys, captions and checkpoint names are data a
user wrote, not markup).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from urllib.parse import quote

#: The pages' whole stylesheet, inline.
STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; }
th.num, td.num { text-align: right; }
thead th { background: #eee; }
code { background: #f4f4f4; padding: 0 0.2em; }
img { display: block; margin: 0.5em 0; max-width: 100%; }
figure { margin: 0 0 1.5em; }
.figures { display: flex; flex-wrap: wrap; gap: 0 1.5em; }
figcaption { font-size: 0.9em; color: #555; }
"""

MIME = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def esc(value: object) -> str:
    """Any value as HTML text, quotes included (safe in element text and in attribute values)."""
    return html.escape(str(value), quote=True)


def data_uri(data: bytes, name: str) -> str:
    """``data:<mime>;base64,...`` of a file's bytes; the MIME type from ``name``'s extension (PNG, GIF, JPEG)."""
    suffix = name[name.rfind(".") :].lower() if "." in name else ""
    if suffix not in MIME:
        raise ValueError(f"{name}: cannot embed a {suffix or 'extensionless'} file; choose one of {sorted(MIME)}")
    return f"data:{MIME[suffix]};base64," + base64.b64encode(data).decode("ascii")


def relative_src(name: str) -> str:
    """An ``src``/``href`` value naming a file next to the page (percent-encoded, so a name never becomes a
    scheme or leaves the page's folder)."""
    if "/" in name or "\\" in name or name in ("", ".", ".."):
        raise ValueError(f"{name!r}: a file next to the page, without a folder")
    return quote(name, safe="")


def table(header: Sequence[object], rows: Iterable[Sequence[object]], *, right: Iterable[int] | None = None) -> str:
    """A ``<table>`` with a ``<thead>`` row of ``header`` cells and one ``<tr>`` per row; every cell escaped.
    ``right``: the columns aligned right (default: those whose every cell is a number)."""
    rows = [list(row) for row in rows]
    if right is None:
        right = [i for i in range(len(header)) if rows and all(
            isinstance(row[i], int | float) and not isinstance(row[i], bool) for row in rows)]  # fmt: skip
    right = set(right)

    def cell(tag: str, i: int, value: object) -> str:
        return f'<{tag} class="num">{esc(value)}</{tag}>' if i in right else f"<{tag}>{esc(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, body: str, *, images: str = "data:") -> str:
    """A whole HTML document: ``title`` (escaped) as its title and first heading, then ``body`` (already HTML).
    Its content security policy lets the browser load nothing but the inline style and images from ``images``
    (CSP sources: ``data:`` for embedded ones; add ``'self'`` for files next to the page): no script runs, no
    request leaves."""
    csp = f"default-src 'none'; style-src 'unsafe-inline'; img-src {images}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{esc(csp)}\">"
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n"
        f"<body><h1>{esc(title)}</h1>\n{body}\n</body></html>\n"
    )
