"""The README's method and task tables name exactly the registered methods and tasks, each with its
family / category, so the documentation cannot drift from the registries."""
from __future__ import annotations

import re
from pathlib import Path

from backend.pruning import list_methods
from backend.tasks import list_tasks

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
ROW = re.compile(r"^\| `([a-z0-9-]+)` \| ([^|]+) \|", re.M)


def _table(heading: str, next_heading: str) -> dict[str, str]:
    section = README[README.index(heading):README.index(next_heading)]
    return {name: second.split()[0] for name, second in ROW.findall(section)}


def test_the_method_table_is_the_registry():
    table = _table("\n### Methods\n", "\n### Tasks\n")
    registered = {m.name: m.family for m in list_methods()}
    assert set(table) == set(registered)
    for name, family in registered.items():
        assert table[name] == ("baseline" if family == "dense" else family), name


def test_the_task_table_is_the_registry():
    table = _table("\n### Tasks\n", "\n### Task data\n")
    registered = {t.name: t.category for t in list_tasks()}
    assert set(table) == set(registered)
    for name, category in registered.items():
        assert table[name] == category, name
