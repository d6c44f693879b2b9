"""What the Equal cost tab does, without Gradio: one model's runs (one paradigm) in bands of matched
measured cost (`db.equal_cost.equal_cost_view`), as a table and a summary. Model names reach
Markdown only through `ui.markdown.escape`."""
from __future__ import annotations

import pandas as pd

from db.equal_cost import MEASURES, TOLERANCE, equal_cost_view
from db.leaderboard import VIEWS
from db.session import read_session
from ui.services import ALL, escape

__all__ = ["MEASURE_CHOICES", "equal_cost_table"]

MEASURE_CHOICES = [("Parameters kept", "params"), ("FLOPs per token", "flops"), ("Measured latency", "latency")]
"""(label, `db.equal_cost` measure); the Findings tab offers the same measures for its pairing."""
_LABELS = dict((measure, label) for label, measure in MEASURE_CHOICES)


def equal_cost_table(model: str | None, paradigm: str | None, measure: str = "params",
                     view: str = "raw") -> tuple[pd.DataFrame, str]:
    """(the table shown, a Markdown summary). Needs one model and one paradigm: costs are fractions of
    that model's dense run and mean nothing across models."""
    if model in (None, "", ALL) or paradigm in (None, "", ALL):
        return pd.DataFrame(), "Choose a model and a paradigm: costs are fractions of that model's dense run."
    measure = measure if measure in MEASURES else "params"
    view = view if view in VIEWS else "raw"
    with read_session() as session:
        result = equal_cost_view(session, model, paradigm, measure, view)
    frame = result.frame.copy()
    if frame.empty:
        return frame, f"No finished runs of **{escape(model)}** ({escape(paradigm)}) yet."
    cost_column = f"{_LABELS[measure].lower()} (% of dense)"
    frame["cost"] = (100 * frame["cost"]).round(1)
    frame[result.value_columns] = frame[result.value_columns].round(4)
    frame = frame.rename(columns={"cost": cost_column})
    bands = frame["band"].nunique()
    summary = (f"**{escape(model)}** ({escape(paradigm)}): {len(frame)} run(s) in {bands} band(s) of "
               f"{escape(MEASURES[measure])}. Runs in one band cost within {100 * TOLERANCE[measure]:.0f} points "
               "of each other, so their scores compare methods at equal cost; nominal sparsity means layers, "
               "block parameters, hidden size or skip ratio depending on the method, and is only the fallback.")
    if result.notes:
        summary += "\n\n" + "\n".join(f"* {escape(note)}" for note in result.notes)
    return frame, summary
