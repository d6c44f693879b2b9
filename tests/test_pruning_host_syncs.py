"""Layer-at-a-time pruning keeps an accelerator busy: the pure mask and reconstruction functions read
values back to the host (`.item()`, `.tolist()`, `int(t)`, `.cpu()`, ...) a fixed number of times per
matrix or per block of columns, never once per row. Counted on CPU tensors, where the same calls
would each be a device synchronisation on a GPU."""
from __future__ import annotations

import pytest
import torch

READBACKS = ("item", "tolist", "cpu", "numpy", "__int__", "__float__", "__bool__", "__index__")


@pytest.fixture
def readbacks(monkeypatch):
    """A counter of host readbacks of tensors while the test runs."""
    counted = {"n": 0}
    for name in READBACKS:
        real = getattr(torch.Tensor, name)

        def counting(self, *args, __real=real, **kwargs):
            counted["n"] += 1
            return __real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return counted


def _count(readbacks, fn) -> int:
    before = readbacks["n"]
    fn()
    return readbacks["n"] - before


def _weight(rows: int, cols: int = 256) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows))


@pytest.mark.parametrize("pattern", [None, (2, 4)])
def test_wanda_masks_read_back_independently_of_the_row_count(readbacks, pattern):
    from backend.pruning.wanda import wanda_mask

    norms = torch.rand(256) + 0.1
    counts = [_count(readbacks, lambda r=rows: wanda_mask(_weight(r), norms, r * 128, pattern)) for rows in (64, 512)]
    assert counts[0] == counts[1]


def test_sparsegpt_reads_back_per_block_not_per_row(readbacks):
    from backend.pruning.sparsegpt import sparsegpt_prune

    x = torch.randn(512, 256, generator=torch.Generator().manual_seed(0))
    hessian = 2 * x.t() @ x / 512
    counts = [_count(readbacks, lambda r=rows: sparsegpt_prune(_weight(r), hessian, r * 128, blocksize=64))
              for rows in (64, 512)]
    assert counts[0] == counts[1]
    assert counts[0] <= 4 * 3 + 8  # per 64-column block a diagonal read, plus the Cholesky checks


def test_magnitude_masks_read_back_independently_of_the_row_count(readbacks):
    from backend.pruning.magnitude import magnitude_mask

    counts = [_count(readbacks, lambda r=rows: magnitude_mask(_weight(r), 0.5)) for rows in (64, 512)]
    assert counts[0] == counts[1]
