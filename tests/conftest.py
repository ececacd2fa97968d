"""The fixtures several test modules share. Plain helpers live in `support.py`."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tensors in these tests are tiny: extra threads only add synchronisation, which is slow on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
