"""Server-side bounds on one job's work, for users who are not admins (the web UI's submissions;
admins and operators on the CLI are not bounded):

* wall time: a config without `resources.max_wall_minutes` gets `settings.default_wall_minutes()`
  (the worker fails the attempt past it, WallTimeExceeded); one asking for more than
  `settings.max_wall_minutes()` is refused;
* estimated work: more than `settings.max_work_tokens()` (`backend.work.work_tokens`: tokens
  generated, scored, calibrated on and trained on) is refused;
* `keep_model: true`, which saves the pruned model on the worker's disk, is for admins only.

`bound(config)` returns the config to queue or raises `WorkLimitExceeded` with a sentence for the user.
"""
from __future__ import annotations

from common import settings
from backend.config import JobConfig, canonical_dict, validate_config
from backend.work import work_tokens

__all__ = ["WorkLimitExceeded", "bound"]


class WorkLimitExceeded(ValueError):
    """A config past a bound; str() is a sentence to show the user."""


def bound(config: JobConfig) -> JobConfig:
    """`config` within the bounds for a non-admin, with the default wall time filled in."""
    if config.keep_model:
        raise WorkLimitExceeded("keep_model saves the pruned model on the worker's disk: only admins may set it.")
    limit = settings.max_wall_minutes()
    asked = config.resources.max_wall_minutes if config.resources is not None else None
    if asked is not None and asked > limit:
        raise WorkLimitExceeded(f"resources.max_wall_minutes is {asked:g}; the most allowed is {limit:g}.")
    tokens, most = work_tokens(config), settings.max_work_tokens()
    if most and tokens > most:
        raise WorkLimitExceeded(f"This job asks for about {tokens:,} tokens of work (generated, scored, calibrated "
                                f"and trained on); the most allowed is {most:,}. Lower limits, steps or lengths.")
    if asked is not None:
        return config
    data = canonical_dict(config)
    data["resources"] = {**data.get("resources", {}), "max_wall_minutes": min(settings.default_wall_minutes(), limit)}
    return validate_config(data)
