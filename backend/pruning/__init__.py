"""Pruning methods. To add one: write `backend/pruning/<name>.py` with a `PruningMethod` subclass
decorated by `@register_method`, give it a `Params` pydantic model for its own knobs, and add
`tests/test_pruning_<name>.py`. Method modules import torch inside `prune`, never at top level.
"""
from backend.pruning.base import (
    PruneReport,
    PruningMethod,
    get_method,
    list_methods,
    method_families,
    register_method,
    saved_format_method,
)

__all__ = ["PruneReport", "PruningMethod", "get_method", "list_methods", "method_families", "register_method", "saved_format_method"]
