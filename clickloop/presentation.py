"""What a person reads in the UI: Markdown tables, numbers rounded to what matters, inline plots."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def fmt(value: float | int | None, spec: str = ".4f") -> str:
    """A number for a table cell; '–' when it is undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


#: Significant digits a number keeps in an asset's metadata (0.2704, 1,235, 0.0003124).
SIGNIFICANT_DIGITS = 4
#: The folder of the HTML reports (Evidently drift, Data Docs) under the data directory; ``make ui``
#: serves it over HTTP so the UI can link to them.
REPORTS_FOLDER = "reports"


def significant(value: Any, digits: int = SIGNIFICANT_DIGITS) -> Any:
    """A float rounded to ``digits`` significant digits (what matters of it); anything else, as is."""
    if not isinstance(value, float) or not math.isfinite(value) or value == 0:
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def significant_values(values: Mapping[str, Any], digits: int = SIGNIFICANT_DIGITS) -> dict[str, Any]:
    """The mapping with its floats rounded to ``digits`` significant digits."""
    return {key: significant(value, digits) for key, value in values.items()}


def report_url(base_url: str, reports_root: str, path: str) -> str | None:
    """The HTTP address of the report at ``path`` when the reports folder ``reports_root`` is served
    at ``base_url``; None without a base URL or for a file outside the folder."""
    root = reports_root.rstrip("/") + "/"
    if not base_url or not path.startswith(root):
        return None
    relative = path[len(root) :]
    return base_url.rstrip("/") + "/" + "/".join(quote(part, safe="=") for part in relative.split("/"))


def cell(value: Any, limit: int = 80) -> str:
    """Any value as a Markdown table cell: short, and without characters that break the table."""
    text = "" if value is None else str(value)
    text = text.replace("|", "¦").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], right: Sequence[int] | None = None
) -> str:
    """A Markdown table; the columns at the indexes in ``right`` are right-aligned (numbers)."""
    aligned = set(right or ())
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if i in aligned else "---" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def new_figure(width: float = 6.0, height: float = 4.5) -> Figure:
    figure = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(figure)
    return figure


def figure_png(figure: Figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def png_markdown(png: bytes, alt: str) -> str:
    """A PNG inline in Markdown (the Dagster UI renders it in the asset's metadata)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"
