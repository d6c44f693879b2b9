"""Untrusted text (a model's output, a user's input, an error message) made inert before Markdown."""
from __future__ import annotations

import html
import re
from typing import Any

__all__ = ["escape"]

_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+!|~-])")


def escape(text: Any) -> str:
    """Make untrusted text inert in Markdown: HTML tags become entities, link/emphasis syntax is escaped."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", html.escape(str(text), quote=False))
