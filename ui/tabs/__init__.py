"""One module per tab. Each has `build(shared)`, called inside its `gr.Tab` to create components
(registering the ones other tabs need on `shared`), and `wire(shared, demo)`, called once every tab
is built to attach events (so a tab may send values to a component of a later tab)."""

TAB_IDS = {"Leaderboard": "leaderboard", "Plots": "plots", "Equal cost": "equal-cost", "Submit": "submit",
           "Queue": "queue", "Compare traces": "compare", "Findings": "findings", "API tokens": "tokens"}
"""Tab label -> id, in the page's order. The ids are stable (`gr.Tabs(selected=...)`, `?tab=` links,
tests); a tab module reads them here, not from `ui.layout`, which imports every tab."""
