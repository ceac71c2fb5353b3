"""Small HTML builders for the report page: escaped text, numbers, tables, bars, sections and the document.

Every piece of text passes through ``text()`` (html.escape) unless it is already ``Html``, which only these
builders make; manifest values are untrusted, so nothing from them reaches the page unescaped.
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

log = logging.getLogger(__name__)


class Html(str):
    """A string that is already HTML (built here from escaped parts); ``text()`` passes it through."""

    __slots__ = ()


def text(value: Any) -> Html:
    """Escaped text for any value; ``Html`` passes through unchanged."""
    if isinstance(value, Html):
        return value
    return Html(html.escape("" if value is None else str(value), quote=True))


def join(parts: Iterable[Any], sep: str = "") -> Html:
    """Escaped parts joined by ``sep`` (a literal HTML separator)."""
    return Html(sep.join(text(p) for p in parts))


def tag(name: str, content: Any = "", **attrs: Any) -> Html:
    """``<name attrs>content</name>``; attribute values are escaped, ``class_`` becomes ``class``."""
    rendered = "".join(f' {k.rstrip("_").replace("_", "-")}="{text(v)}"' for k, v in attrs.items() if v is not None)
    return Html(f"<{name}{rendered}>{text(content)}</{name}>")


def plain(value: Any, spec: str = ".4g", suffix: str = "") -> str:
    """A number formatted by ``spec`` as plain text; a missing value is a dash, anything else its ``str``."""
    if value is None:
        return "\u2013"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:{spec}}{suffix}"


def num(value: Any, spec: str = ".4g", suffix: str = "") -> Html:
    """``plain()``, escaped: for table cells."""
    return text(plain(value, spec, suffix))


def as_dict(value: Any) -> dict[str, Any]:
    """A manifest value that should be an object; anything else reads as empty."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    """A manifest value that should be a list; anything else reads as empty."""
    return value if isinstance(value, list) else []


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def human(value: Any) -> Html:
    """1234567 -> 1.23M: counts and bytes at a glance."""
    if not is_number(value):
        return num(value)
    n = float(value)
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return text(f"{n:.3g}{unit}")
        n /= 1000
    return text(f"{n:.3g}P")


def bar(share: Any, label: Any = None) -> Html:
    """A share (0..1) as a small horizontal bar with its percentage; negative shares are drawn in red."""
    if not is_number(share):
        return num(share)
    width = min(abs(float(share)), 1.0) * 100
    kind = "bar neg" if share < 0 else "bar"
    shown = text(label) if label is not None else text(f"{share:+.0%}" if share < 0 else f"{share:.0%}")
    return Html(f'<span class="{kind}"><span style="width:{width:.1f}%"></span></span> {shown}')


def short_ep(name: Any) -> str:
    """An EP name without the ``ExecutionProvider`` suffix (CPU, XNNPACK, ...), for narrow table columns."""
    return str(name).removesuffix("ExecutionProvider") or str(name)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = (),
          caption: Any = None) -> Html:
    """A table; cells are escaped unless ``Html``; columns in ``numeric`` are right-aligned."""
    head = "".join(f'<th{" class=num" if i in numeric else ""}>{text(h)}</th>' for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = "".join(f'<td{" class=num" if i in numeric else ""}>{text(c)}</td>' for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    cap = f"<caption>{text(caption)}</caption>" if caption is not None else ""
    return Html(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def facts(rows: Iterable[tuple[Any, Any]]) -> Html:
    """A two-column list of label: value (a definition list)."""
    return Html('<dl class="facts">' + "".join(f"<dt>{text(k)}</dt><dd>{text(v)}</dd>" for k, v in rows) + "</dl>")


def para(*parts: Any, class_: str | None = None) -> Html:
    """A paragraph of escaped parts."""
    return tag("p", join(parts), class_=class_)


def none_line(message: Any) -> Html:
    """The one line a section shows when it does not apply to this bundle."""
    return tag("p", message, class_="none")


def section(ident: str, title: str, body: Iterable[Html] | Html) -> Html:
    """A page section with an id (for the contents and for tests), its heading and its body."""
    content = body if isinstance(body, Html) else Html("".join(body))
    return Html(f'<section id="{text(ident)}"><h2>{text(title)}</h2>{content}</section>')


def details(summary: Any, content: Any, is_open: bool = True) -> Html:
    """A collapsible block; open by default, so the page prints and screenshots whole."""
    return Html(f"<details{' open' if is_open else ''}><summary>{text(summary)}</summary>{text(content)}</details>")


def image(data_uri: str, alt: Any) -> Html:
    """An inline image from a data: URI (the page loads nothing from elsewhere)."""
    if not data_uri.startswith("data:image/png;base64,"):
        raise ValueError("only inline PNG data URIs are embedded")
    return Html(f'<figure><img src="{data_uri}" alt="{text(alt)}"></figure>')


def chart(draw: Callable[[], str], alt: str) -> Html:
    """An inline chart from ``draw()`` (a data: URI), or one line saying why it could not be drawn."""
    try:
        return image(draw(), alt)
    except Exception as exc:  # matplotlib on odd manifest figures: the page stands without this chart
        log.warning("report chart %r not drawn: %s", alt, exc)
        return none_line(f"Chart not drawn ({alt}): {exc}")


# No network: the policy forbids every fetch; images come inline as data: URIs, styles inline, no scripts.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d232b;
 background:#f4f5f7;margin:0}
main{max-width:1180px;margin:0 auto;padding:20px 28px 40px}
header{background:#1f3a5f;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:24px}header p{margin:0;opacity:.85}
nav{max-width:1180px;margin:0 auto;padding:10px 28px 0;font-size:14px}
nav a{color:#1f3a5f;margin-right:14px;text-decoration:none;border-bottom:1px dotted #1f3a5f}
section{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:14px 20px 18px;margin:18px 0}
h2{font-size:19px;margin:0 0 10px;color:#1f3a5f}h3{font-size:16px;margin:16px 0 6px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13.5px}
caption{text-align:left;font-weight:600;padding:4px 0}
th,td{padding:4px 10px;border-bottom:1px solid #e6e8eb;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr.chosen td{background:#fff4d6;font-weight:600}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:3px 18px;margin:6px 0 10px}
dl.facts dt{color:#5a6470}dl.facts dd{margin:0}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:18px}.grid>div{min-width:0}
.grid table{width:100%}.grid td{overflow-wrap:anywhere}td.num,td:has(.bar){white-space:nowrap}
.none{color:#5a6470;font-style:italic}.warn{color:#9a5b00}.bad{color:#b3261e;font-weight:600}
.good{color:#1e7b34;font-weight:600}
.bar{display:inline-block;width:70px;height:9px;background:#e6e8eb;border-radius:2px;vertical-align:middle}
.bar>span{display:block;height:100%;background:#3a78c2;border-radius:2px}.bar.neg>span{background:#c0504d}
figure{margin:8px 0}figure img{max-width:100%;border:1px solid #e6e8eb}
details summary{cursor:pointer;color:#1f3a5f;margin:6px 0}
pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:12px;max-height:320px}
code{font-size:12.5px}
footer{color:#5a6470;font-size:12.5px;margin-top:24px}
"""


def document(title: str, subtitle: Any, sections: Sequence[tuple[str, str, Html]], footer: Any) -> str:
    """The whole page: head with the no-network policy and inline CSS, header, contents, sections, footer."""
    nav = "".join(f'<a href="#{text(ident)}">{text(name)}</a>' for ident, name, _ in sections)
    body = "".join(section(ident, name, content) for ident, name, content in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{text(title)}</title><style>{_CSS}</style></head>\n"
            f"<body><header><h1>{text(title)}</h1><p>{text(subtitle)}</p></header>"
            f"<nav>{nav}</nav><main>{body}<footer>{text(footer)}</footer></main></body></html>\n")
