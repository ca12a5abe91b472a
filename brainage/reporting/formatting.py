"""Numbers and tables as the reports print them (years, bits, Cohen's d, p-values).

A table is a plain dict that the templates render: ``caption``, ``columns``,
``rows`` (lists of cells: a string, or ``{"text": ..., "href": ...}`` for a link
to a local file) and ``note``. Missing values print as an en dash.
"""

from __future__ import annotations

import math

__all__ = ["DASH", "ci", "fmt", "fmt_p", "link", "make_table", "signed"]

DASH = "–"


def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def fmt(x, digits: int = 1, unit: str = "") -> str:
    """``x`` rounded to ``digits`` decimals with an optional unit; a dash when missing.

    Examples
    --------
    >>> fmt(3.14159, 2, "y")
    '3.14 y'
    >>> fmt(float("nan"))
    '–'
    """
    if not _finite(x):
        return DASH
    text = f"{float(x):.{digits}f}"
    if text.startswith("-") and float(text) == 0:
        text = text[1:]
    return f"{text} {unit}" if unit else text


def signed(x, digits: int = 1, unit: str = "") -> str:
    """Like :func:`fmt` with an explicit sign: ``+2.1 y``, ``−0.4 y``."""
    if not _finite(x):
        return DASH
    text = fmt(x, digits)
    if not text.startswith("-") and float(x) != 0 and text.strip("0.") != "":
        text = "+" + text
    text = text.replace("-", "−")
    return f"{text} {unit}" if unit else text


def ci(low, high, digits: int = 1) -> str:
    """Format a 95 % interval as ``[a, b]``; a dash when either end is missing."""
    if not (_finite(low) and _finite(high)):
        return DASH
    return f"[{fmt(low, digits).replace('-', '−')}, {fmt(high, digits).replace('-', '−')}]"


def fmt_p(p) -> str:
    """Format a p-value: three decimals, ``< 0.001`` below."""
    if not _finite(p):
        return DASH
    p = float(p)
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def link(text: str, href: str) -> dict:
    """Return a table cell that links to a local file (relative path)."""
    return {"text": text, "href": href}


def make_table(caption: str, columns: list[str], rows: list[list], note: str = "") -> dict:
    """Return a table for the templates; every cell becomes a string or a link dict."""
    clean = [[c if isinstance(c, dict) else ("" if c is None else str(c)) for c in row] for row in rows]
    return {"caption": caption, "columns": list(columns), "rows": clean, "note": note}
