"""A small typed name -> object registry shared by pruning methods and tasks.

Method and task modules register themselves on import; `discover(package)` imports every module of
a package once so the registry is complete. Modules must not import torch at top level: the CLI
lists and validates names without loading torch.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownName(KeyError):
    """A name that is not registered; the message lists what is."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want a plain sentence
        return str(self.args[0])


class RegistryIncomplete(ImportError):
    """Some modules of a registry's package failed to import: the catalogue would be partial."""


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str):
        self.kind = kind
        self.package = package
        self._items: dict[str, T] = {}
        self._discovered = False
        self._discovering = False
        self._failures: dict[str, str] = {}
        """module -> "ExceptionType: message" of each module that failed to import."""

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def _discover(self) -> None:
        """Import every module of the package once. A module that fails is recorded and named in a
        RegistryIncomplete on every later lookup, rather than leaving a silently partial catalogue."""
        if not self._discovered and not self._discovering:  # a module may look names up while importing
            self._discovering = True
            try:
                pkg = importlib.import_module(self.package)
                for info in pkgutil.iter_modules(pkg.__path__):
                    if info.name.startswith("_"):
                        continue
                    module = f"{self.package}.{info.name}"
                    try:
                        importlib.import_module(module)
                    except Exception as exc:  # noqa: BLE001  (any failure makes the catalogue partial)
                        self._failures[module] = f"{type(exc).__name__}: {exc}"
                self._discovered = True
            finally:
                self._discovering = False
        if self._failures:
            failed = "; ".join(f"{module} ({reason})" for module, reason in sorted(self._failures.items()))
            raise RegistryIncomplete(f"the {self.kind} catalogue is incomplete: {failed}")

    def get(self, name: str) -> T:
        self._discover()
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownName(
                f"unknown {self.kind} {name!r}{hint}; known: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._items)

    def items(self) -> list[T]:
        return [self._items[n] for n in self.names()]
