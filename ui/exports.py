"""Leaderboard downloads, built when a user asks for one.

A refresh only renders two links whose query string carries the widget values it was computed
for; `GET /export/leaderboard.csv?...` (or `.json`) then builds exactly that table
(`ui.board.board_view` with the same values, `db.leaderboard.export_board`) and streams it as an
attachment. Nothing is written to disk, so there is nothing to clean up, and a refresh costs no
export work at all.
"""
from __future__ import annotations

import html
from typing import Any
from urllib.parse import urlencode

from fastapi import HTTPException, Request
from fastapi.responses import Response

__all__ = ["EXPORT_FORMATS", "EXPORT_ROUTE", "export_links", "export_query", "export_file", "register_export_route"]

EXPORT_FORMATS = {"csv": "text/csv; charset=utf-8", "json": "application/json"}
"""Format -> media type of the download."""
EXPORT_ROUTE = "/export/leaderboard.{fmt}"
_WIDGETS = ("model", "paradigm", "families", "sparsity_min", "sparsity_max", "calibration", "recovery", "search",
            "view", "sort_by", "order")
"""`ui.board.board_view`'s parameters, in order; the query string uses the same names."""


def export_query(*widgets: Any) -> str:
    """The query string for `board_view(*widgets)` (families repeated; empty values left out)."""
    pairs: list[tuple[str, Any]] = []
    for name, value in zip(_WIDGETS, widgets):
        if name == "families":
            pairs += [("families", family) for family in (value or ())]
        elif value not in (None, ""):
            pairs.append((name, value))
    return urlencode(pairs)


def export_links(*widgets: Any) -> str:
    """HTML of the two download links of the table `board_view(*widgets)` shows. The hrefs are
    relative, so they work wherever the app is mounted."""
    query = html.escape(export_query(*widgets))
    return "".join(
        f'<a class="pb-download" id="pb-board-{fmt}" href="{EXPORT_ROUTE.format(fmt=fmt).lstrip("/")}?{query}" '
        f'download>Export {fmt.upper()} (as shown)</a>'
        for fmt in EXPORT_FORMATS
    )


def export_file(fmt: str, params: dict[str, Any]) -> tuple[str, str]:
    """(file name, text) of the export in `fmt` of the table the query parameters describe."""
    from db.leaderboard import export_board
    from ui.board import board_view

    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    widgets = {name: params.get(name) for name in _WIDGETS if params.get(name) not in (None, "")}
    for name in ("sparsity_min", "sparsity_max"):
        if name in widgets:
            widgets[name] = _float(widgets[name])
    shown = board_view(**widgets)
    view = widgets.get("view") if widgets.get("view") in ("raw", "delta", "retained") else "raw"
    return f"pruneboard-leaderboard-{view}.{fmt}", export_board(shown.board, fmt)


def register_export_route(app) -> None:
    """Add `GET /export/leaderboard.{csv,json}` to a FastAPI app (before Gradio is mounted at "/")."""

    @app.get(EXPORT_ROUTE, include_in_schema=False)
    def export_leaderboard(fmt: str, request: Request) -> Response:
        params: dict[str, Any] = dict(request.query_params)
        params["families"] = request.query_params.getlist("families")
        try:
            name, text = export_file(fmt, params)
        except ValueError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc
        return Response(content=text, media_type=EXPORT_FORMATS[fmt],
                         headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
