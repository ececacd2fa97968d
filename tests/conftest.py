"""The fixtures several test modules share. Plain helpers live in `support.py`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tensors in these tests are tiny: extra threads only add synchronisation, which is slow on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(prepared dataset, its trained checkpoint): the tiny trained model of the bad-input matrix (test_bad_*.py),
    trained once for the session."""
    from support import TINY_TRAIN_ARGS, WIDTH, prepare_tiny_dataset

    from mrhp.cli import main
    from mrhp.studies.synthetic import SyntheticSpec

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("matrix")
    spec = SyntheticSpec(products=(8, 3, 3), reviews_per_product=(3, 5), num_topics=3, feature_dim=WIDTH)
    prepared = prepare_tiny_dataset(root, spec)
    assert main(["train", "--data", str(prepared), "--out", str(root / "run"), "--set", "train.epochs=1",
                 *TINY_TRAIN_ARGS]) == 0
    return prepared, root / "run" / "best.safetensors"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A tiny prepared dataset (official-format synthetic data, 12/4/4 products) for the end-to-end tests."""
    from support import prepare_tiny_dataset

    from mrhp.studies.synthetic import SyntheticSpec

    spec = SyntheticSpec(products=(12, 4, 4), reviews_per_product=(3, 6), num_topics=4, feature_dim=8)
    return prepare_tiny_dataset(tmp_path_factory.mktemp("e2e"), spec)
