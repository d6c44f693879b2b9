"""Plots tab (being built)."""
from __future__ import annotations

import gradio as gr


def build(shared) -> None:
    gr.Markdown("Coming soon.")


def wire(shared, demo) -> None:
    pass
