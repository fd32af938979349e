"""A self-contained HTML report: sections of tables and matplotlib figures as inline base64 PNG.

No external URLs, scripts or stylesheets: the file opens from disk in any browser, offline.
"""
from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display needed; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;color:#1e293b}
h1{font-size:1.6em} h2{border-bottom:1px solid #cbd5e1;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #cbd5e1;padding:.25em .6em;text-align:left}
th{background:#f1f5f9} td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#64748b;font-size:.9em} img{max-width:100%}
"""


def figure_png(fig) -> str:
    """A matplotlib figure as an inline ``<img>`` (base64 PNG); closes the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def format_value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}"
    return html.escape(str(v))


def table(rows: dict[str, Any] | list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A dict as a two-column key/value table, or a list of dicts as a table with ``columns``."""
    if isinstance(rows, dict):
        body = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td class='num'>{format_value(v)}</td></tr>"
            for k, v in rows.items() if not isinstance(v, (list, dict))
        )
        return f"<table>{body}</table>"
    columns = columns or (list(rows[0]) if rows else [])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td class='num'>{format_value(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


@dataclass
class Report:
    """Sections appended in order, rendered as one HTML page."""

    title: str
    sections: list[tuple[str, str]] = field(default_factory=list)

    def add(self, heading: str, *fragments: str) -> None:
        self.sections.append((heading, "\n".join(fragments)))

    def html(self) -> str:
        toc = "".join(f'<li><a href="#s{i}">{html.escape(h)}</a></li>' for i, (h, _) in enumerate(self.sections))
        body = "".join(f'<h2 id="s{i}">{html.escape(h)}</h2>\n{frag}\n' for i, (h, frag) in enumerate(self.sections))
        return (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head>"
            f"<body><h1>{html.escape(self.title)}</h1><ul>{toc}</ul>{body}</body></html>"
        )

    def write(self, path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.html())


def note(text: str) -> str:
    return f"<p class='note'>{html.escape(text)}</p>"
