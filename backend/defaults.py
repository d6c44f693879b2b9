"""The history of defaults that change what a run computes, so that a stored config keeps its meaning.

Configs are stored without the fields left at their default (`backend.config.canonical_dict`), so
changing a default would silently change what an old config means. Each such change is recorded
here with the `DEFAULTS_VERSION` that introduced it and the value it replaced; configs written
under an older version get the old value written out (`pin_changed_defaults`): the database
migration that comes with a change does this to stored configs (and recomputes their hashes), and
results bundles carry the version they were written under, so their configs are pinned on import.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["DEFAULTS_VERSION", "DefaultChange", "CHANGES", "pin_changed_defaults"]


@dataclass(frozen=True)
class DefaultChange:
    version: int
    """The DEFAULTS_VERSION that introduced the new default."""
    description: str
    pin: Callable[[dict[str, Any]], dict[str, Any]]
    """Writes the old value into a config document that relied on the old default (a copy)."""


def _pin_param(method: str, param: str, old: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def pin(document: dict[str, Any]) -> dict[str, Any]:
        pruning = document.get("pruning") or {}
        if pruning.get("method") != method or param in (pruning.get("params") or {}):
            return document
        pinned = copy.deepcopy(document)
        pinned["pruning"].setdefault("params", {})[param] = old
        return pinned
    return pin


CHANGES: tuple[DefaultChange, ...] = ()
"""Every change, oldest first."""

DEFAULTS_VERSION = max((c.version for c in CHANGES), default=1)
"""The version of the defaults this code applies (1: the defaults before any recorded change)."""


def pin_changed_defaults(document: dict[str, Any], since_version: int) -> dict[str, Any]:
    """`document` (a canonical config written under defaults `since_version`) with the old value of
    every default changed after that version written out."""
    for change in CHANGES:
        if change.version > since_version:
            document = change.pin(document)
    return document
