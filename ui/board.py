"""What the Leaderboard and Plots tabs do, without Gradio: read the board (`db.leaderboard`) for the
chosen filters and view, sort and colour it, export exactly the shown table, open a run's detail,
fork its config, and read the data behind each plot.

The table shown is `Board.frame` after `sort_board`; the CSV/JSON exports (`ui.exports`) are
`export_board` of the Board the same widget values give, built when a download is asked for, so a
download is always what is on screen. Text that came from users or models reaches Markdown only
through `ui.markdown.escape`; JSON and YAML go to code boxes.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd
import yaml

from backend.pruning import method_families
from backend.models.ids import RANDOM_MODELS, hub_page
from backend.references import compare_run
from db import leaderboard as lb
from db import plot_data, queries
from db.session import read_session
from jobs import access
from jobs.access import ANONYMOUS, User
from ui import plots
from ui.efficiency_view import efficiency_markdown
from ui.markdown import escape
from ui.view_cache import cached

__all__ = [
    "ALL", "RECOVERY_CHOICES", "VIEW_CHOICES", "ORDER_CHOICES", "PINNED_ORDER", "make_filters", "load_board",
    "sort_choices", "sort_board", "arrange_columns", "styled", "summary_markdown", "legend_markdown",
    "BoardView", "board_view", "RunDetail", "run_detail", "fork_config", "job_at_row", "PlotData",
    "plot_data_for", "plot_figures", "score_columns", "busiest_setting", "filter_choices",
]

logger = logging.getLogger(__name__)

ALL = "(all)"
RECOVERY_CHOICES = ["any", "yes", "no"]
VIEW_CHOICES = [("Raw score", "raw"), ("Δ vs dense", "delta"), ("% retained", "retained")]
ORDER_CHOICES = ["best first", "worst first"]
PINNED_ORDER = "(dense first, then method)"
"""The default sort: db.leaderboard's order (dense baseline pinned per model, paradigm and group)."""
_TEXT_SORT = ("job_id", "method", "family", "sparsity", "model")
_VIEW_TEXT = {
    "raw": "Raw scores: each task's primary metric.",
    "delta": "Δ vs dense: run minus its dense baseline, sign-aware (positive is better, perplexity included).",
    "retained": "% retained: 100 × run / dense baseline, sign-aware (above 100 is better).",
}
_GOOD, _MID, _BAD = (87, 187, 138), (255, 255, 255), (230, 124, 115)
"""Colour scale of value cells: best of the column green, worst red, through white."""
_CHOSEN_KEYS = ("removed_layers", "removal_order", "layers_before", "layers_after", "heads_kept", "kv_heads_kept",
                "channels_kept", "params_removed", "sparsity_per_layer", "layer_sparsity")
"""prune_report details that say which layers / blocks / widths a method chose (shown first)."""


# --- the table ----------------------------------------------------------------------------------


def _choice(value: Any) -> str | None:
    return None if value in (None, "", ALL) else str(value)


def make_filters(model: str | None = None, paradigm: str | None = None, families: Sequence[str] | None = None,
                 sparsity_min: float | None = None, sparsity_max: float | None = None,
                 calibration: str | None = None, recovery: str | None = "any", search: str | None = "") -> lb.BoardFilters:
    """BoardFilters from the widget values ("(all)" / "any" / empty: no filter; sparsity in [0, 1])."""
    known_families = set(method_families())
    return lb.BoardFilters(
        model=_choice(model), paradigm=_choice(paradigm),
        families=tuple(f for f in (families or ()) if f in known_families),
        sparsity_min=_number(sparsity_min), sparsity_max=_number(sparsity_max),
        calibration=_choice(calibration),
        recovery={"yes": True, "no": False}.get(recovery or "any"),
        search=(search or "").strip(),
    )


def load_board(filters: lb.BoardFilters, view: str = "raw") -> lb.Board:
    with read_session() as session:
        return lb.board(session, filters, view if view in lb.VIEWS else "raw")


def sort_choices(board: lb.Board) -> list[str]:
    return [PINNED_ORDER, *_TEXT_SORT[:4], *[c for cols in board.column_groups.values() for c in cols]]


SHOWN_FIRST = ["job_id", "method", "sparsity", "family", "model"]
"""Columns shown before the scores (the table pins the first three); the other meta columns follow the scores."""
TABLE_DATATYPES = ["number", "str", "number", "str", "markdown"]
"""Gradio datatypes of the first columns: `model` is a Markdown link to the model's Hub page (the
other columns are plain text)."""
HEADER_HINTS = {
    "average": "Mean of every higher-is-better task column of the row (each task's primary metric); "
               "perplexity and efficiency are left out.",
    " avg": "Mean of this category's task columns (each task's primary metric).",
    "params_M": "Parameters after pruning, in millions (non-zero ones for unstructured pruning: see the run detail).",
    "flops_ratio": "FLOPs per token against the dense model (ideal, from what was removed or skipped).",
    "speedup_ideal": "Speed-up the removed or skipped compute would give (FLOP ratio).",
    "speedup_measured": "Decode speed-up measured against the dense model on the same worker (median of the probe).",
    "reference": "Published result for the same setting (backend/references.yaml): reproduced, or off by how much.",
    "group": "Comparability group: runs outside 'main' used other evaluation settings and are not ranked with it.",
    "flag": "Why a run needs care (no dense baseline under its settings, a calibration leak, ...).",
    "calibration_data": "The calibration text the run used ('(default)' when its config named none).",
}
"""Column header -> what it means, shown on hover (the page's head script reads it; " avg" matches every
category average)."""


def arrange_columns(board: lb.Board) -> lb.Board:
    """The board with its columns in display order: identity, scores by group, then the other meta columns."""
    frame = board.frame
    first = [c for c in SHOWN_FIRST if c in frame.columns]
    values = [c for c in _value_columns(board) if c not in first]
    rest = [c for c in frame.columns if c not in first and c not in values]
    return replace(board, frame=frame[[*first, *values, *rest]])


def sort_board(board: lb.Board, sort_by: str | None = None, order: str = "best first") -> lb.Board:
    """The board with rows sorted by `sort_by` inside each block of (model, paradigm, group), the dense
    baseline staying first in its block. Value columns: "best first" follows the column's direction;
    text columns: "best first" is ascending. Missing values go last."""
    frame = board.frame
    if frame.empty or sort_by in (None, "", PINNED_ORDER) or sort_by not in frame.columns:
        return board
    ascending = sort_by in _TEXT_SORT or not board.higher_is_better.get(sort_by, True)
    if order == "worst first":
        ascending = not ascending
    block_keys = list(zip(frame["model"], frame["paradigm"], frame["group"]))
    block_rank = {key: i for i, key in enumerate(dict.fromkeys(block_keys))}
    keyed = frame.assign(_block=[block_rank[k] for k in block_keys], _dense=(frame["family"] != "dense").astype(int))
    pinned = keyed[keyed["_dense"] == 0]
    rest = keyed[keyed["_dense"] == 1].sort_values(sort_by, ascending=ascending, na_position="last", kind="stable")
    ordered = pd.concat([pinned, rest]).sort_values(["_block", "_dense"], kind="stable")
    return replace(board, frame=ordered.drop(columns=["_block", "_dense"]).reset_index(drop=True))


def _value_columns(board: lb.Board) -> list[str]:
    return [c for cols in board.column_groups.values() for c in cols if c in board.frame.columns]


def styled(board: lb.Board, view: str = "raw") -> "pd.io.formats.style.Styler":
    """Board.frame with number formats, a per-column colour scale (green = better) and the dense rows
    marked. Cells are text in the table (Gradio renders them as text, never as HTML)."""
    frame = board.frame
    styler = frame.style
    efficiency = set(board.column_groups.get("efficiency", []))
    value_format = {"raw": "{:.4f}", "delta": "{:+.4f}", "retained": "{:.1f}%"}.get(view, "{:.4f}")
    formats: dict[str, Any] = {"sparsity": "{:.2f}", "baseline_job_id": lambda v: "" if pd.isna(v) else str(int(v)),
                               "model": model_link}
    for column in _value_columns(board):
        formats[column] = "{:.3g}" if column in efficiency else value_format
    styler = styler.format({c: f for c, f in formats.items() if c in frame.columns}, na_rep="")
    for column in _value_columns(board):
        colours = _colours(frame[column], board.higher_is_better.get(column, True))
        styler = styler.apply(lambda _s, c=colours: c, subset=[column], axis=0)
    if "family" in frame.columns:
        dense = frame["family"] == "dense"
        weight = ["font-weight: 600" if d else "" for d in dense]
        meta = [c for c in board.meta_columns if c in frame.columns]
        styler = styler.apply(lambda _s: weight, subset=meta, axis=0)
    if "group" in frame.columns:  # runs ranked apart (other evaluation settings) in italics
        apart = ["font-style: italic; color: #6b7280" if g != "main" else "" for g in frame["group"]]
        styler = styler.apply(lambda _s: apart, subset=["method", "group"], axis=0)
    if "flag" in frame.columns:
        styler = styler.apply(lambda s: ["color: #b45309" if v else "" for v in s], subset=["flag"], axis=0)
    return styler


def _colours(values: pd.Series, higher_is_better: bool) -> list[str]:
    numbers = pd.to_numeric(values, errors="coerce")
    low, high = numbers.min(), numbers.max()
    if pd.isna(low) or high == low:
        return ["" for _ in numbers]
    out = []
    for value in numbers:
        if pd.isna(value):
            out.append("")
            continue
        t = (value - low) / (high - low)
        t = t if higher_is_better else 1 - t  # t = 1: best
        a, b, u = (_BAD, _MID, 2 * t) if t < 0.5 else (_MID, _GOOD, 2 * t - 1)
        rgb = tuple(round(x + (y - x) * u) for x, y in zip(a, b))
        out.append(f"background-color: rgb{rgb}")
    return out


def summary_markdown(board: lb.Board, filters: lb.BoardFilters, view: str) -> str:
    """One line saying what is shown, or what to do when nothing is."""
    count = len(board.frame)
    if count == 0:
        if board.total_runs == 0:
            return ("No finished runs yet. Submit a configuration in the **Submit** tab (the pre-filled tiny "
                    "example finishes in under a minute on CPU), then press **Refresh**.")
        return "No runs match these filters. Clear the search, widen the sparsity range or pick **(all)**."
    groups = board.frame["group"].nunique() if "group" in board.frame.columns else 1
    flagged = int((board.frame["flag"].fillna("") != "").sum()) if "flag" in board.frame.columns else 0
    parts = [f"{count} run(s)", _VIEW_TEXT.get(view, "")]
    if groups > 1:
        parts.append(f"{groups} comparability groups (`group`: runs outside *main* used other evaluation settings)")
    if flagged:
        parts.append(f"{flagged} flagged run(s) (see `flag`)")
    parts.append("Click a row to open the run.")
    notes = [f"- *Note:* {escape(note)}" for note in board.notes]
    random_models = sorted(set(board.frame["model"]) & RANDOM_MODELS) if "model" in board.frame.columns else []
    if random_models:
        notes.append(f"- *Note:* {escape(', '.join(random_models))} "
                     f"{'has' if len(random_models) == 1 else 'have'} random weights (test models): "
                     "their scores are chance level and say nothing about pruning.")
    return "\n\n".join([" · ".join(p for p in parts if p), "\n".join(notes)]).strip()


def legend_markdown(board: lb.Board) -> str:
    """Column groups: tasks by category with their averages, overall, perplexity, efficiency."""
    lines = []
    for name, columns in board.column_groups.items():
        if name == "overall":
            lines.append("- **overall**: `average` = mean of the higher-is-better task columns")
            continue
        direction = {"perplexity": " (lower is better in raw view)", "efficiency": " (raw in every view)"}.get(name, "")
        lines.append(f"- **{escape(name)}**{direction}: " + ", ".join(escape(c) for c in columns))
    return "\n".join(lines)


@dataclass
class BoardView:
    """Everything the Leaderboard tab shows for one set of widget values."""

    board: lb.Board
    table: Any
    """`styled(board)`, or the bare (empty) frame when there are no rows."""
    summary: str
    legend: str
    sort_choices: list[str]
    column_choices: list[str] = field(default_factory=list)
    """Every value column the board has (the column picker's choices)."""


def board_view(model=None, paradigm=None, families=None, sparsity_min=None, sparsity_max=None, calibration=None,
               recovery="any", search="", view="raw", sort_by=PINNED_ORDER, order="best first",
               columns=None) -> BoardView:
    """`columns`: the value columns to show (empty or None: all; names the board lacks are ignored)."""
    view = view if view in lb.VIEWS else "raw"
    filters = make_filters(model, paradigm, families, sparsity_min, sparsity_max, calibration, recovery, search)
    full = arrange_columns(with_references(sort_board(load_board(filters, view), sort_by, order)))
    board = chosen_columns(full, columns)
    table = styled(board, view) if len(board.frame) else board.frame
    return BoardView(board=board, table=table, summary=summary_markdown(board, filters, view),
                     legend=legend_markdown(board), sort_choices=sort_choices(board),
                     column_choices=_value_columns(full))


def chosen_columns(board: lb.Board, columns: Sequence[str] | None) -> lb.Board:
    """The board with only the chosen value columns (and every meta column); all of them when none is chosen."""
    wanted = [c for c in (columns or ()) if c in _value_columns(board)]
    if not wanted:
        return board
    dropped = set(_value_columns(board)) - set(wanted)
    groups = {name: [c for c in cols if c not in dropped] for name, cols in board.column_groups.items()}
    return replace(board, frame=board.frame[[c for c in board.frame.columns if c not in dropped]],
                   column_groups={name: cols for name, cols in groups.items() if cols})


def model_link(model: str) -> str:
    """Markdown for a model cell: a link to its Hub page where it has one, else its name, escaped."""
    page = hub_page(model)
    return f"[{escape(model)}](https://huggingface.co/{page})" if page else escape(model)


def with_references(board: lb.Board) -> lb.Board:
    """The board with a `reference` column: for runs whose setting has a published result
    (`backend.references`), "reproduced" or "off by x %" per matching row."""
    frame = board.frame
    if frame.empty:
        return board
    with read_session() as session:
        runs = queries.configs_and_scores(session, [int(i) for i in frame["job_id"]])
    notes = []
    for job_id in frame["job_id"]:
        config, scores = runs.get(int(job_id), ({}, {}))
        notes.append("; ".join(f"{c.reference.task}: {c.verdict}" for c in compare_run(config, scores)))
    return replace(board, frame=frame.assign(reference=notes), meta_columns=[*board.meta_columns, "reference"])


def filter_choices() -> dict[str, Any]:
    """`db.leaderboard.filter_options` with "(all)" first in the dropdown lists (cached per results state)."""
    options = cached(("filter_choices",), _filter_choices)
    return {key: list(value) if isinstance(value, list) else value for key, value in options.items()}  # own lists


def _filter_choices() -> dict[str, Any]:
    with read_session() as session:
        options = lb.filter_options(session)
    return {**options, "models": [ALL, *options["models"]], "paradigms": [ALL, *options["paradigms"]],
            "calibrations": [ALL, *options["calibrations"]]}


def busiest_setting() -> tuple[str, str]:
    """(model, paradigm) with the most runs on the board, or ("(all)", "(all)") when it is empty: the
    plots' default, since curves of different models or paradigms do not belong on one axis (cached
    per results state)."""
    return cached(("busiest_setting",), _busiest_setting)


def _busiest_setting() -> tuple[str, str]:
    with read_session() as session:
        frame = lb.board(session).frame
    if frame.empty:
        return ALL, ALL
    model, paradigm = frame.groupby(["model", "paradigm"]).size().sort_values(ascending=False, kind="stable").index[0]
    return str(model), str(paradigm)


def job_id_of(value: Any) -> int | None:
    """A job id typed or clicked (None for an empty box, which reads 0, or anything not a whole number)."""
    return access.job_id_from(value)


def job_at_row(table: Any, row: int | None, row_value: Sequence[Any] | None = None) -> int | None:
    """The job id of a clicked row: from the clicked row's values when Gradio sends them, else row
    `row` of the table value (a DataFrame)."""
    if table is None or not isinstance(table, pd.DataFrame) or "job_id" not in table.columns:
        return None
    if row_value is not None and len(row_value) == len(table.columns):
        value = row_value[table.columns.get_loc("job_id")]
    elif row is not None and 0 <= int(row) < len(table):
        value = table["job_id"].iloc[int(row)]
    else:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# --- a run's detail and fork --------------------------------------------------------------------


@dataclass
class RunDetail:
    summary: str
    """Markdown; every value escaped."""
    config_yaml: str
    manifest_json: str
    efficiency_json: str
    structure_json: str
    """The prune report, with what the method chose (layers, blocks, widths) under `chosen`."""
    log_tail: str


def run_detail(job_id: float | int | None, user: User = ANONYMOUS) -> RunDetail:
    """The run as `user` may see it (`access.visible_job_detail`: hidden runs and others' log tails left out)."""
    if not job_id:
        hint = ("Click a row of the table (or enter a job id) to see the run's config, manifest, efficiency, "
                "chosen layers and log.")
        return RunDetail(hint, "", "", "", "", "")
    detail = access.visible_job_detail(user, job_id)
    if detail is None:
        return RunDetail(f"No job {escape(str(job_id)[:24])}.", "", "", "", "", "")
    lines = [
        f"### Job {detail['id']}: {escape(detail['method'])} @ {detail['sparsity']:.0%} on {escape(detail['model'])}",
        (f"State **{escape(detail['state'])}** · paradigm {escape(detail['paradigm'])} · submitted by "
         f"{escape(detail['submitter'] or 'unknown')} · finished {escape(detail['finished_at'] or '-')}"),
    ]
    if detail["error_type"]:
        lines.append(f"**{escape(detail['error_type'])}**: {escape(detail['error_message'] or '')}")
    if detail["imported"]:
        lines.append(imported_note(detail))
    if detail["model"] in RANDOM_MODELS:
        lines.append(RANDOM_MODEL_NOTE)
    scores = {(s["task"], s["metric"]): s["value"] for s in detail["scores"]}
    for comparison in compare_run(detail["config"], scores):
        ref = comparison.reference
        lines.append(f"**Published reference ({escape(comparison.verdict)}):** {escape(comparison.summary())}. "
                     f"Source: {escape(ref.paper)}, {escape(ref.table)}.")
    primary = [s for s in detail["scores"] if s["primary"]]
    if primary:
        lines += ["", "| task | metric | value | stderr |", "|---|---|---|---|"]
        lines += [f"| {escape(s['task'])} | {escape(s['metric'])} | {_fmt(s['value'])} | {_fmt(s['stderr'])} |"
                  for s in primary]
    lines += efficiency_markdown(detail["efficiency"])
    report = detail["prune_report"] or {}
    details = report.get("details") if isinstance(report.get("details"), dict) else {}
    chosen = {key: details[key] for key in _CHOSEN_KEYS if key in details}
    structure = {"chosen": chosen, "prune_report": report} if chosen else report
    return RunDetail(
        summary="\n".join(lines),
        config_yaml=_config_yaml(detail["config"], detail["id"]),
        manifest_json=_json(detail["manifest"]),
        efficiency_json=_json(detail["efficiency"]),
        structure_json=_json(structure),
        log_tail=detail["log_tail"] or "",
    )


def imported_note(detail: dict[str, Any]) -> str:
    """Where an imported run was produced (escaped Markdown)."""
    provenance = detail.get("provenance") or {}
    commit = str(provenance.get("commit") or "unknown")
    where = provenance.get("deployment_name") or provenance.get("deployment") or "another deployment"
    return (f"**Imported** {escape(detail.get('imported_at') or '')} from {escape(provenance.get('bundle') or 'a bundle')}: "
            f"produced by commit `{escape(commit[:12])}` on {escape(where)} (origin {escape(detail.get('origin_id') or '')})")


RANDOM_MODEL_NOTE = ("**Random test model:** its weights are random (a fixed seed), so its scores are chance level "
                     "and say nothing about pruning; it exists to test the pipeline quickly.")


def fork_config(job_id: float | int | None, user: User = ANONYMOUS) -> str:
    """The run's config as YAML for the Submit editor ("" when there is no such job for `user`)."""
    if not job_id:
        return ""
    detail = access.visible_job_detail(user, job_id)
    return "" if detail is None else _config_yaml(detail["config"], detail["id"])


def _config_yaml(config: dict[str, Any], job_id: int) -> str:
    body = yaml.safe_dump(config, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return f"# forked from job {job_id}: edit, then submit (tick Force to rerun it unchanged)\n{body}"


def _json(value: Any) -> str:
    return "" if value is None else json.dumps(value, indent=2, default=str, ensure_ascii=False)


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.4g}"


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


# --- plots --------------------------------------------------------------------------------------


@dataclass
class PlotData:
    raw: lb.Board
    delta: lb.Board
    thinking: pd.DataFrame
    scaling: pd.DataFrame
    speedup_ranges: pd.DataFrame
    """`db.plot_data.speedup_ranges` of the raw board's runs (error bars of the measured speed-up)."""


def plot_data_for(model: str | None = None, paradigm: str | None = None, scaling_by: str = "k") -> PlotData:
    filters = make_filters(model, paradigm)
    with read_session() as session:
        raw = lb.board(session, filters, "raw")
        return PlotData(
            raw=raw,
            delta=lb.board(session, filters, "delta"),
            thinking=plot_data.thinking_points(session, filters.model, filters.paradigm),
            scaling=plot_data.scaling_points(session, scaling_by, filters.model, filters.paradigm),
            speedup_ranges=plot_data.speedup_ranges(session, [int(i) for i in raw.frame["job_id"]]),
        )


def score_columns(board: lb.Board) -> list[str]:
    """Columns a score axis can show: tasks, category averages, the overall average, perplexity."""
    return [c for name, cols in board.column_groups.items() if name != "efficiency" for c in cols]


def _labelled(frame: pd.DataFrame, unique: bool = False) -> pd.DataFrame:
    """Runs with `method` relabelled: plus model/paradigm when several, group when not main; `unique`:
    also the job id where two rows would share a label and sparsity (heatmap rows)."""
    if frame.empty:
        return frame
    frame = frame.copy()
    several = frame[["model", "paradigm"]].drop_duplicates().shape[0] > 1
    labels = []
    for row in frame.itertuples(index=False):
        label = str(row.method)
        if several:
            label += f" ({row.model}, {row.paradigm})"
        if row.group != "main":
            label += f" [group {row.group}]"
        labels.append(label)
    frame["method"] = labels
    if not unique:
        return frame
    duplicated = frame.duplicated(["method", "sparsity"], keep=False)
    frame.loc[duplicated, "method"] = frame.loc[duplicated, "method"] + " #" + frame.loc[duplicated, "job_id"].astype(str)
    return frame


def plot_figures(model: str | None = None, paradigm: str | None = None, score_column: str | None = "average",
                 pareto_x: str = "speedup_measured", scaling_by: str = "k") -> tuple[Any, ...]:
    """(sparsity, pareto, heatmap, thinking, scaling) figures and the score-column choices."""
    data = plot_data_for(model, paradigm, scaling_by)
    columns = score_columns(data.raw)
    column = score_column if score_column in columns else ("average" if "average" in columns else
                                                           (columns[0] if columns else "average"))
    raw = data.raw.frame
    sparsity = plots.sparsity_figure(_labelled(raw) if not raw.empty else raw, column,
                                     data.raw.higher_is_better.get(column, True))
    pareto_y = column if data.raw.higher_is_better.get(column, True) else "average"
    with_ranges = raw.merge(data.speedup_ranges, on="job_id", how="left") if not raw.empty else raw
    pareto = plots.pareto_figure(_labelled(with_ranges) if not raw.empty else raw, pareto_x, pareto_y)
    # perplexity deltas are in other units (and often far larger): they would wash out the colour scale
    tasks = [c for name, cols in data.delta.column_groups.items() if name not in ("overall", "efficiency", "perplexity")
             for c in cols if not c.endswith(" avg")]
    delta = data.delta.frame
    heatmap = plots.heatmap_figure(_labelled(delta, unique=True) if not delta.empty else delta, tasks)
    thinking = plots.thinking_figure(data.thinking)
    scaling = plots.scaling_figure(data.scaling, scaling_by)
    return sparsity, pareto, heatmap, thinking, scaling, columns, column
