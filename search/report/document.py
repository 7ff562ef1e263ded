"""The report's document: headings, paragraphs, tables and images, rendered as Markdown (with
its PNGs beside it) and as one self-contained HTML page (the same PNGs as data URIs)."""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from search.rundir import REPORT_DIR

DPI = 110


@dataclass
class Doc:
    """Headings, paragraphs, tables and images, rendered as Markdown and as one HTML file."""

    blocks: list[tuple[str, Any]] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", (header, rows)))

    def image(self, name: str, png: bytes, alt: str) -> None:
        self.images[name] = png
        self.blocks.append(("img", (name, alt)))

    def markdown(self) -> str:
        out = []
        for kind, v in self.blocks:
            if kind == "h":
                out.append(f"{'#' * v[0]} {v[1]}")
            elif kind == "p":
                out.append(v)
            elif kind == "table":
                header, rows = v
                cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
                out.append("\n".join(
                    ["| " + " | ".join(map(cell, header)) + " |",
                     "|" + "|".join("---" for _ in header) + "|",
                     *("| " + " | ".join(map(cell, r)) + " |" for r in rows)]
                ))  # fmt: skip
            else:
                name, alt = v
                out.append(f"![{alt}]({REPORT_DIR}/{name})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        body = []
        for kind, v in self.blocks:
            if kind == "h":
                body.append(f"<h{v[0]}>{html.escape(v[1])}</h{v[0]}>")
            elif kind == "p":
                body.append(f"<p>{html.escape(v)}</p>")
            elif kind == "table":
                header, rows = v
                head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
                trs = "".join(
                    "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                    for r in rows
                )
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
            else:
                name, alt = v
                data = base64.b64encode(self.images[name]).decode()
                body.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
                    f"<figcaption>{html.escape(alt)}</figcaption></figure>"
                )
        return _HTML.format(title=html.escape(title), body="\n".join(body))


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; line-height: 1.45; }}
h1 {{ border-bottom: 2px solid #ddd; padding-bottom: .3em; }}
h2 {{ border-bottom: 1px solid #eee; padding-bottom: .2em; margin-top: 1.8em; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: .92em; }}
th, td {{ border: 1px solid #ccc; padding: .3em .7em; text-align: right; }}
th {{ background: #f3f3f3; }}
td:first-child, th:first-child {{ text-align: left; }}
tbody tr:nth-child(even) {{ background: #fafafa; }}
figure {{ margin: 1em 0; }}
img {{ max-width: 100%; height: auto; border: 1px solid #eee; }}
figcaption {{ color: #666; font-size: .9em; }}
</style></head>
<body>
{body}
</body></html>
"""


def png(fig: Figure) -> bytes:
    """A figure as PNG bytes (Agg canvas: no pyplot, no global backend)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def fmt(v: Any, key: str = "") -> str:
    """A number for a table, formatted by what `key` names: mean IC +0.0123, returns +12.3%,
    bps 12.3, probabilities 0.123, anything else (Sharpes) 1.23; '-' for None/NaN."""
    if v is None:
        return "-"
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(x):
        return "-"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if key.endswith("mean_ic"):
        return f"{x:+.4f}"
    if key.endswith("_return"):
        return f"{x:+.1%}"
    if key.endswith("bps"):
        return f"{x:.1f}"
    if key in ("pbo", "dsr", "psr"):
        return f"{x:.3f}"
    return f"{x:.2f}"


def pm(mean: Any, std: Any, replicated: bool, key: str = "") -> str:
    """`mean ± std` (just the mean when not replicated)."""
    if not replicated:
        return fmt(mean, key)
    sd = fmt(std, key).lstrip("+")
    return f"{fmt(mean, key)} ± {sd}"


def point_text(p: dict[str, Any]) -> str:
    """A grid point as `key=value, ...`."""
    return ", ".join(
        f"{k}={v:g}" if isinstance(v, int | float) else f"{k}={v}" for k, v in p.items()
    )
