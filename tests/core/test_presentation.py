"""What the UI shows: numbers rounded to significant digits, report links, inline PNGs."""

import base64
import io
import math

import numpy as np
from matplotlib.image import imread

from clickloop.presentation import (
    REPORTS_FOLDER,
    figure_png,
    new_figure,
    png_markdown,
    report_url,
    significant,
    significant_values,
)

#: matplotlib's "tab:red", "tab:blue" and "tab:orange" (0-255)
TAB_RED = (214, 39, 40)
TAB_BLUE = (31, 119, 180)
TAB_ORANGE = (255, 127, 14)


def decode_png(png: bytes) -> np.ndarray:
    """The pixels (RGBA in [0, 1]) of a PNG."""
    return imread(io.BytesIO(png), format="png")


def count_color(png: bytes, rgb: tuple[int, int, int], tolerance: float = 0.02) -> int:
    """How many pixels of the PNG have the colour ``rgb`` (0-255)."""
    pixels = decode_png(png)[..., :3]
    return int((np.abs(pixels - np.array(rgb) / 255).max(axis=-1) < tolerance).sum())


def test_significant_keeps_four_digits_of_floats_only() -> None:
    assert significant(0.27036999) == 0.2704
    assert significant(1234.5678) == 1235.0
    assert significant(0.000312449) == 0.0003124
    assert significant(-12.3456) == -12.35
    assert significant(0.27036999, 2) == 0.27
    for unchanged in (0.0, 3, None, "0.27036999", True):
        assert significant(unchanged) == unchanged and type(significant(unchanged)) is type(unchanged)
    assert math.isnan(significant(float("nan"))) and significant(math.inf) == math.inf
    assert significant_values({"ctr": 0.031234567, "clicks": 12, "metric": "ctr", "none": None}) == {
        "ctr": 0.03123,
        "clicks": 12,
        "metric": "ctr",
        "none": None,
    }


def test_report_url_maps_the_served_folder() -> None:
    root = f"/data/{REPORTS_FOLDER}"
    path = f"{root}/drift/date=2026-10-02/drift report.html"
    expected = "http://127.0.0.1:3001/drift/date=2026-10-02/drift%20report.html"
    assert report_url("http://127.0.0.1:3001", root, path) == expected
    assert report_url("http://127.0.0.1:3001/", root + "/", path) == expected
    assert report_url("", root, path) is None  # not served: no URL
    assert report_url("http://127.0.0.1:3001", root, "/elsewhere/report.html") is None
    assert report_url("http://127.0.0.1:3001", root, f"{root}-old/report.html") is None


def test_png_markdown_is_an_inline_image() -> None:
    figure = new_figure(2, 1)
    figure.add_subplot(1, 1, 1).plot([0, 1], [0, 1])
    png = figure_png(figure)
    text = png_markdown(png, "a line")
    assert text.startswith("![a line](data:image/png;base64,") and text.endswith(")")
    assert base64.b64decode(text[len("![a line](data:image/png;base64,") : -1]) == png
    assert decode_png(png).shape[:2] == (90, 180)  # 2 x 1 inches at 90 dpi
