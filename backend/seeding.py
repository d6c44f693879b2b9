"""Seeding every generator a run draws from (Python, NumPy, torch), so a config reruns the same."""
from __future__ import annotations

import random


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
