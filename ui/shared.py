"""Components that more than one tab uses, registered on one object while the layout is built."""
from __future__ import annotations

from types import SimpleNamespace


class Shared(SimpleNamespace):
    """Attributes are set by the tab that owns the component, e.g. `shared.submit_editor` by the
    Submit tab; `shared.tabs` is the `gr.Tabs` (select a tab with `gr.Tabs(selected=TAB_ID)`)."""
