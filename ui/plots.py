"""Plotly figure builders for the Plots tab: pure functions of DataFrames (no Gradio, no database).

Every builder returns a `go.Figure`; with nothing to draw it returns `message_figure(...)`, a blank
figure whose only content is an annotation saying what to do. Labels that come from user data (method
names, tasks) are HTML-escaped: plotly renders a subset of HTML in text and hover labels.
"""
from __future__ import annotations

import html
import math
import textwrap
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

__all__ = [
    "message_figure", "is_message_figure", "pareto_front", "run_label", "sparsity_figure", "pareto_figure",
    "heatmap_figure", "thinking_figure", "scaling_figure", "PARETO_AXES",
]

PARETO_AXES = {
    "speedup_measured": ("Measured speed-up (x)", True),
    "params_M": ("Parameters (millions)", False),
}
"""x column of the Pareto plot -> (axis title, whether larger is better)."""
_LEGEND_BELOW = dict(orientation="h", yanchor="top", y=-0.22, x=0, title=None)
_LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50), legend=dict(title=None))


def message_figure(message: str) -> go.Figure:
    """An empty figure that says why it is empty and what to do."""
    figure = go.Figure()
    lines = textwrap.wrap(message, width=60) or [""]
    figure.add_annotation(text="<br>".join(_escape(line) for line in lines), x=0.5, y=0.5, xref="paper", yref="paper",
                          showarrow=False, font=dict(size=15))
    figure.update_layout(**_LAYOUT, xaxis=dict(visible=False), yaxis=dict(visible=False), height=320)
    figure.layout.meta = {"empty": True}
    return figure


def is_message_figure(figure: go.Figure) -> bool:
    return isinstance(figure.layout.meta, dict) and bool(figure.layout.meta.get("empty"))


def run_label(method: str, sparsity: float | None) -> str:
    """"wanda @ 50%" (escaped: used in plot text)."""
    if sparsity is None or (isinstance(sparsity, float) and math.isnan(sparsity)):
        return _escape(str(method))
    return f"{_escape(str(method))} @ {sparsity:.0%}"


def pareto_front(xs: Sequence[float], ys: Sequence[float], maximize_x: bool = True,
                 maximize_y: bool = True) -> list[int]:
    """Indices of the points no other point dominates (at least as good on both axes, better on one),
    ordered by x. NaN/None points are never on the front."""
    sx, sy = (1 if maximize_x else -1), (1 if maximize_y else -1)
    points = [(i, sx * float(x), sy * float(y)) for i, (x, y) in enumerate(zip(xs, ys)) if _finite(x) and _finite(y)]
    front = []
    for i, x, y in points:
        dominated = any(ox >= x and oy >= y and (ox > x or oy > y) for j, ox, oy in points if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: float(xs[i]))


def sparsity_figure(frame: pd.DataFrame, column: str, higher_is_better: bool = True) -> go.Figure:
    """Score vs sparsity, one line per method; dense baselines as dashed horizontal lines.

    `frame`: one row per run with `method`, `sparsity`, `column` (and optionally `model`, `family`).
    """
    if frame.empty or column not in frame.columns or frame[column].notna().sum() == 0:
        return message_figure(f"No scores for {column} yet: run some pruned models (Submit tab) and refresh.")
    data = frame[frame[column].notna()]
    dense = _is_dense(data)
    figure = go.Figure()
    seen: set[str] = set()
    for value, method in zip(data.loc[dense, column], data.loc[dense, "method"]):
        if method in seen:  # one reference line per dense label (the board lists the pinned one first)
            continue
        seen.add(method)
        figure.add_hline(y=float(value), line_dash="dash", line_color="#666",
                         annotation_text=_escape(str(method)), annotation_position="top left")
    for method, runs in data[~dense].groupby("method", sort=True):
        runs = runs.sort_values("sparsity")
        figure.add_trace(go.Scatter(
            x=runs["sparsity"], y=runs[column], mode="lines+markers", name=_escape(str(method)),
            hovertemplate="sparsity %{x:.0%}<br>" + _escape(column) + " %{y:.4g}<extra>%{fullData.name}</extra>",
        ))
    direction = "higher is better" if higher_is_better else "lower is better"
    top = min(1.0, float(data["sparsity"].max()) + 0.05)
    figure.update_layout(**_LAYOUT, title=f"{_escape(column)} vs sparsity ({direction})", showlegend=True,
                         xaxis=dict(title="Sparsity", tickformat=".0%", range=[-0.02, max(top, 0.1)]),
                         yaxis=dict(title=_escape(column)))
    figure.update_layout(legend=_LEGEND_BELOW)
    return figure


def pareto_figure(frame: pd.DataFrame, x_column: str, y_column: str) -> go.Figure:
    """Score vs speed-up or parameter count; the Pareto-optimal runs joined by a highlighted line.

    Where `frame` has `<x_column>_low` and `<x_column>_high` (the measured speed-up's quartile range),
    points carry them as horizontal error bars; runs without them (the older one-run probe) have none."""
    title, x_up = PARETO_AXES.get(x_column, (x_column, True))
    if frame.empty or not {x_column, y_column} <= set(frame.columns):
        return message_figure(f"No runs with both {title.lower()} and {y_column} yet: "
                              "finished runs report efficiency figures; refresh when some have.")
    data = frame[frame[x_column].notna() & frame[y_column].notna()].reset_index(drop=True)
    if data.empty:
        return message_figure(f"No runs with both {title.lower()} and {y_column} yet: "
                              "finished runs report efficiency figures; refresh when some have.")
    labels = [run_label(m, s) for m, s in zip(data["method"], data["sparsity"])]
    front = pareto_front(data[x_column].tolist(), data[y_column].tolist(), maximize_x=x_up)
    bars = _ErrorBars(data, x_column)
    figure = go.Figure()
    figure.add_trace(go.Scatter(
        x=data[x_column], y=data[y_column], mode="markers", name="runs", text=labels,
        marker=dict(size=9, color="#9aa5b1"), error_x=bars(range(len(data)), "#9aa5b1"),
        hovertemplate="%{text}<br>x %{x:.4g}<br>y %{y:.4g}<extra></extra>",
    ))
    figure.add_trace(go.Scatter(
        x=data.loc[front, x_column], y=data.loc[front, y_column], mode="lines+markers+text", name="Pareto front",
        text=[labels[i] for i in front], textposition="top center", cliponaxis=False,
        marker=dict(size=12, color="#d1495b", line=dict(width=1, color="#222")), line=dict(color="#d1495b"),
        error_x=bars(front, "#d1495b"),
        hovertemplate="%{text}<br>x %{x:.4g}<br>y %{y:.4g}<extra>Pareto front</extra>",
    ))
    low, high = float(data[x_column].min()), float(data[x_column].max())
    if bars.known:
        low, high = min(low, float(data[f"{x_column}_low"].min())), max(high, float(data[f"{x_column}_high"].max()))
    pad = 0.12 * (high - low) or 0.1 * abs(high) or 1.0  # room for the labels at both ends
    figure.update_layout(**_LAYOUT, title=f"{_escape(y_column)} vs {title.lower()}",
                         xaxis=dict(title=title, range=[low - pad, high + pad]), yaxis=dict(title=_escape(y_column)))
    figure.layout.meta = {"front": [int(i) for i in front]}
    return figure


class _ErrorBars:
    """Plotly `error_x` of chosen rows from `<column>_low` / `<column>_high` (None where unknown)."""

    def __init__(self, data: pd.DataFrame, column: str):
        present = {f"{column}_low", f"{column}_high"} <= set(data.columns)
        self.plus = (data[f"{column}_high"] - data[column]).tolist() if present else []
        self.minus = (data[column] - data[f"{column}_low"]).tolist() if present else []
        self.known = present and data[f"{column}_low"].notna().any()

    def __call__(self, rows, colour: str) -> dict | None:
        if not self.known:
            return None
        rows = list(rows)
        return dict(type="data", symmetric=False, color=colour, thickness=1.2, width=4,
                    array=[_or_none(self.plus[i]) for i in rows], arrayminus=[_or_none(self.minus[i]) for i in rows])


def _or_none(value) -> float | None:
    return float(value) if _finite(value) else None


def heatmap_figure(frame: pd.DataFrame, columns: Sequence[str]) -> go.Figure:
    """Δ vs dense, method (rows) x task (columns); a diverging scale centred on 0.

    `frame`: the Δ view of the leaderboard (dense rows are dropped: their Δ is 0 by definition).
    """
    columns = [c for c in columns if c in frame.columns]
    data = frame[~_is_dense(frame)] if "method" in frame.columns else frame.iloc[0:0]
    if data.empty or not columns or data[columns].notna().sum().sum() == 0:
        return message_figure("No Δ vs dense yet: it needs a dense run and pruned runs of the same model "
                              "under the same evaluation settings.")
    rows = [run_label(m, s) for m, s in zip(data["method"], data["sparsity"])]
    z = data[columns].astype("float64")
    span = float(z.abs().max().max()) or 1.0
    text = [["" if pd.isna(v) else f"{v:+.3f}" for v in row] for row in z.itertuples(index=False)]
    figure = go.Figure(go.Heatmap(
        z=z.values.tolist(), x=[_escape(c) for c in columns], y=rows, text=text, texttemplate="%{text}",
        colorscale="RdBu", zmid=0, zmin=-span, zmax=span, colorbar=dict(title="Δ"),
        hovertemplate="%{y}<br>%{x}: %{z:+.4f}<extra></extra>",
    ))
    figure.update_layout(**_LAYOUT, title="Δ vs dense per task (sign-aware: positive is better)",
                         xaxis=dict(title="Task"), yaxis=dict(title="Method @ sparsity", autorange="reversed"),
                         height=max(320, 60 + 28 * len(rows)))
    return figure


def thinking_figure(frame: pd.DataFrame) -> go.Figure:
    """Accuracy vs mean thinking length, one point per run and task, coloured by task.

    `frame` (db.plot_data.thinking_points): method, sparsity, task, mean_thinking_tokens,
    mean_output_tokens, accuracy. Runs without thinking tokens use their output length (hover says so).
    """
    if frame.empty or frame["accuracy"].notna().sum() == 0:
        return message_figure("No generation runs with stored samples yet: run a generation or reasoning "
                              "task (think paradigm for thinking lengths) and refresh.")
    data = frame[frame["accuracy"].notna()].copy()
    data["length"] = data["mean_thinking_tokens"].where(data["mean_thinking_tokens"].notna(),
                                                        data["mean_output_tokens"])
    data["length_kind"] = data["mean_thinking_tokens"].notna().map({True: "thinking", False: "output"})
    figure = go.Figure()
    for task, points in data.groupby("task", sort=True):
        labels = [f"{run_label(m, s)} ({kind} tokens)" for m, s, kind
                  in zip(points["method"], points["sparsity"], points["length_kind"])]
        figure.add_trace(go.Scatter(
            x=points["length"], y=points["accuracy"], mode="markers", name=_escape(str(task)), text=labels,
            marker=dict(size=10), hovertemplate="%{text}<br>%{x:.0f} tokens, accuracy %{y:.3f}<extra>%{fullData.name}</extra>",
        ))
    only_output = not data["mean_thinking_tokens"].notna().any()
    figure.update_layout(**_LAYOUT, showlegend=True, title="Accuracy vs thinking length (per run and task)",
                         xaxis=dict(title="Mean output tokens" if only_output else "Mean thinking tokens"),
                         yaxis=dict(title="Accuracy", rangemode="tozero"))
    return figure


def scaling_figure(frame: pd.DataFrame, by: str = "k") -> go.Figure:
    """Test-time-scaling curves: score vs k (samples per prompt) or vs thinking budget.

    `frame` (db.plot_data.scaling_points): series, metric, k, thinking_budget, value. One line per
    (series, metric); `by` is "k" or "thinking_budget".
    """
    axis = {"k": "k (samples per prompt)", "thinking_budget": "Thinking budget (tokens)"}[by]
    data = frame[frame[by].notna() & frame["value"].notna()] if not frame.empty else frame
    if data.empty:
        hint = ("runs of a test-time-scaling task with generation.num_samples > 1" if by == "k"
                else "think-paradigm runs with generation.thinking_budget set")
        return message_figure(f"No test-time-scaling scores yet: submit {hint}, then refresh.")
    curves = [(key, points.sort_values(by)) for key, points in data.groupby(["series", "metric"], sort=True)]
    if any(points[by].nunique() > 1 for _, points in curves):  # a curve needs two points; lone runs are noise here
        curves = [(key, points) for key, points in curves if points[by].nunique() > 1]
    names = _short_names([f"{series} · {metric}" for (series, metric), _ in curves])
    figure = go.Figure()
    for name, (_, points) in zip(names, curves):
        figure.add_trace(go.Scatter(
            x=points[by], y=points["value"], mode="lines+markers", name=_escape(name),
            hovertemplate=f"{axis} " + "%{x}<br>score %{y:.4g}<extra>%{fullData.name}</extra>",
        ))
    figure.update_layout(**_LAYOUT, title=f"Test-time scaling: score vs {axis.split(' (')[0]}",
                         xaxis=dict(title=axis, type="log" if by == "thinking_budget" else "linear"),
                         yaxis=dict(title="Score"))
    figure.update_layout(legend=_LEGEND_BELOW)
    return figure


def _short_names(names: list[str]) -> list[str]:
    """Drop the " · "-separated parts every name shares (model, paradigm, ... when all curves have them)."""
    split = [name.split(" · ") for name in names]
    if len(split) < 2:
        return names
    common = set.intersection(*(set(parts) for parts in split))
    return [" · ".join(p for p in parts if p not in common) or " · ".join(parts) for parts in split]


def _escape(text) -> str:
    """Plotly text allows a few tags (<b>, <br>, <a>) and decodes &lt; &gt; &amp; only, so quotes stay as they are."""
    return html.escape(str(text), quote=False)


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _is_dense(frame: pd.DataFrame) -> pd.Series:
    """Dense baseline rows: by `family` when present (labels may carry a suffix), else by method."""
    return frame["family"] == "dense" if "family" in frame.columns else frame["method"] == "dense"
