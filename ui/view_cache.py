"""Views computed from the stored results (leaderboard tables, plots, findings, compare pages),
kept in memory until the results change.

A view is cached under its key (which view, and the widget values it was computed for) together
with the *results state* it was computed at (`results_state`): the database's deployment id, its
results version (`db.results_version`, bumped in the transaction of every change to the results)
and the queued or running dense jobs (the leaderboard's flags name them). Each read asks the
database for the current state first, one short read transaction, so a result committed by any
worker in any process shows on the next request; nothing relies on this process being told.

A view that is missing or stale is computed once, however many requests ask for it at the same
moment: the first computes, the others wait for its value. At most `MAX_ENTRIES` views are kept,
the least recently used dropped first. No Gradio here: callers cache whatever is costly to build,
down to the values Gradio sends.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["MAX_ENTRIES", "ViewCache", "cached", "results_state", "view_cache"]

T = TypeVar("T")

MAX_ENTRIES = 256
"""Views kept per process. A leaderboard table with its styles is about 100 KB and a plot a few
hundred KB, so the cache stays within tens of MB; the search box makes the key space unbounded."""


def results_state() -> Hashable:
    """What every cached view depends on: (deployment id, results version, queued or running dense
    jobs). A new database has a new deployment id, so a version number is never mistaken across
    databases."""
    from sqlalchemy import select

    from db.leaderboard import pending_dense
    from db.results_version import ROW_ID
    from db.schema import Deployment, ResultsVersion
    from db.session import read_session

    with read_session() as session:
        deployment, version = session.execute(select(
            select(Deployment.id).limit(1).scalar_subquery(),
            select(ResultsVersion.version).where(ResultsVersion.id == ROW_ID).scalar_subquery(),
        )).one()
        pending = tuple(sorted(pending_dense(session).items()))
    return deployment, version, pending


@dataclass
class _Flight:
    """One computation in progress; requests for the same view and state wait on it."""

    done: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: BaseException | None = None


class ViewCache:
    """Values keyed by view, each valid for the results state it was computed at (see the module
    docstring). Thread-safe: Gradio runs callbacks in a thread pool."""

    def __init__(self, max_entries: int = MAX_ENTRIES, state: Callable[[], Hashable] = results_state):
        self.max_entries = max_entries
        self._state = state
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, tuple[Hashable, Any]] = OrderedDict()
        self._flights: dict[tuple[Hashable, Hashable], _Flight] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The cached value of `key` for the current results state, else `compute()` (once)."""
        state = self._state()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] == state:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[1]
            flight = self._flights.get((key, state))
            owner = flight is None
            if owner:
                flight = self._flights[(key, state)] = _Flight()
                self.misses += 1
        if not owner:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value
        try:
            flight.value = compute()
        except BaseException as error:
            flight.error = error
            raise
        finally:
            with self._lock:
                del self._flights[(key, state)]
                if flight.error is None:
                    self._entries[key] = (state, flight.value)
                    self._entries.move_to_end(key)
                    while len(self._entries) > self.max_entries:
                        self._entries.popitem(last=False)
            flight.done.set()
        return flight.value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


view_cache = ViewCache()
"""The app's cache (one per process: every Gradio callback of the process shares it)."""


def cached(key: Hashable, compute: Callable[[], T]) -> T:
    """`view_cache.get(key, compute)`."""
    return view_cache.get(key, compute)
