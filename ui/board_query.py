"""The Leaderboard's widget values as a URL query, so a view can be linked
(`?tab=leaderboard&paradigm=think&family=depth,width&smax=0.4&view=retained&cols=piqa,average`).

`parse_query` reads untrusted query parameters into widget values, keeping only what the widgets
accept (unknown words become the default); `query_string` writes them back, leaving defaults out.
No Gradio and no database.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from urllib.parse import urlencode

__all__ = ["ALL", "BoardQuery", "parse_query", "query_string"]

ALL = "(all)"
VIEWS = ("raw", "delta", "retained")
RECOVERY = ("any", "yes", "no")
ORDERS = ("best first", "worst first")
MAX_TEXT = 300
"""Longest model, search, sort or column name taken from a URL (longer ones are ignored)."""


@dataclass
class BoardQuery:
    model: str = ALL
    paradigm: str = ALL
    families: tuple[str, ...] = ()
    sparsity_min: float = 0.0
    sparsity_max: float = 1.0
    calibration: str = ALL
    recovery: str = "any"
    search: str = ""
    view: str = "raw"
    sort_by: str = ""
    order: str = "best first"
    columns: tuple[str, ...] = ()
    """Value columns shown (empty: every column)."""


_NAMES = {"model": "model", "paradigm": "paradigm", "families": "family", "sparsity_min": "smin",
          "sparsity_max": "smax", "calibration": "calibration", "recovery": "recovery", "search": "q", "view": "view",
          "sort_by": "sort", "order": "order", "columns": "cols"}
"""Widget value -> its URL parameter (short, as people share them)."""


def _text(value: str | None, default: str) -> str:
    value = (value or "").strip()
    return value if value and len(value) <= MAX_TEXT else default


def _fraction(value: str | None, default: float) -> float:
    try:
        number = float(value) if value not in (None, "") else default
    except ValueError:
        return default
    return min(max(number, 0.0), 1.0) if math.isfinite(number) else default


def _words(value: str | None, known: frozenset[str] | None = None) -> tuple[str, ...]:
    words = [w.strip() for w in (value or "").split(",") if w.strip() and len(w.strip()) <= MAX_TEXT]
    return tuple(dict.fromkeys(w for w in words if known is None or w in known))


def parse_query(params: dict[str, str], families: frozenset[str]) -> BoardQuery:
    """Widget values from query parameters (`families`: the family names the filter knows)."""
    get = params.get
    low, high = _fraction(get("smin"), 0.0), _fraction(get("smax"), 1.0)
    return BoardQuery(
        model=_text(get("model"), ALL), paradigm=_text(get("paradigm"), ALL),
        families=_words(get("family"), families),
        sparsity_min=min(low, high), sparsity_max=max(low, high),
        calibration=_text(get("calibration"), ALL),
        recovery=get("recovery") if get("recovery") in RECOVERY else "any",
        search=_text(get("q"), ""),
        view=get("view") if get("view") in VIEWS else "raw",
        sort_by=_text(get("sort"), ""),
        order=get("order") if get("order") in ORDERS else "best first",
        columns=_words(get("cols")),
    )


def query_string(query: BoardQuery) -> str:
    """`?tab=leaderboard&...` with every value that differs from its default, URL-encoded."""
    default = BoardQuery()
    params: list[tuple[str, str]] = [("tab", "leaderboard")]
    for field in fields(BoardQuery):
        value = getattr(query, field.name)
        if value == getattr(default, field.name):
            continue
        if isinstance(value, tuple):
            value = ",".join(value)
        elif isinstance(value, float):
            value = f"{value:g}"
        params.append((_NAMES[field.name], str(value)))
    return "?" + urlencode(params)
