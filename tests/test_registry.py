"""The registry imports every module of its package and names the ones that fail, instead of going
on with a partial catalogue."""
from __future__ import annotations

import sys

import pytest

from backend.registry import Registry, RegistryIncomplete, UnknownName


def _package(tmp_path, monkeypatch, name: str, modules: dict[str, str]) -> None:
    root = tmp_path / name
    root.mkdir()
    (root / "__init__.py").write_text("from backend.registry import Registry\nREG = Registry('widget', %r)\n" % name)
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_every_module_registers(tmp_path, monkeypatch):
    _package(tmp_path, monkeypatch, "widgets_ok", {
        "a": "from widgets_ok import REG\nREG.register('a', 1)\n",
        "b": "from widgets_ok import REG\nREG.register('b', 2)\nREG.names()  # a lookup while discovering\n",
        "_private": "raise RuntimeError('never imported')\n",
    })
    from widgets_ok import REG

    assert REG.names() == ["a", "b"] and REG.get("b") == 2
    with pytest.raises(UnknownName, match="did you mean 'a'"):
        REG.get("aa")


def test_a_failing_module_is_named_on_every_lookup(tmp_path, monkeypatch):
    _package(tmp_path, monkeypatch, "widgets_bad", {
        "good": "from widgets_bad import REG\nREG.register('good', 1)\n",
        "broken": "import a_module_that_does_not_exist\n",
    })
    from widgets_bad import REG

    for lookup in (REG.names, lambda: REG.get("good")):
        with pytest.raises(RegistryIncomplete, match=r"widgets_bad\.broken \(ModuleNotFoundError: .*a_module_that_does_not_exist"):
            lookup()


def test_the_real_catalogues_are_complete():
    from backend.pruning import list_methods
    from backend.tasks import list_tasks

    assert len(list_methods()) >= 14 and len(list_tasks()) >= 20


def test_a_name_registers_once():
    registry: Registry[int] = Registry("thing", "backend.registry_has_no_such_package")
    registry.register("x", 1)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("x", 2)
