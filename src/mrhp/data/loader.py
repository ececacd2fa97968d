"""Training batches through a `torch.utils.data.DataLoader`: `loader_workers` processes assemble the batches of
an epoch plan (`mrhp.data.batching.mixed_training_batches`) from the memory-mapped prepared datasets while the model
computes, in plan order. With 0 workers the batches are assembled in this process, between steps; on a GPU they
come in pinned memory, so that copying them to the device does not block the host."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import signal
import sys
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mrhp.data.batching import Batch, collate, split_item_lists
from mrhp.data.prepared import PreparedDataset, PreparedSplit


class PlannedBatches(Dataset):
    """Item i is the collated i-th batch of `plan`, a sequence of (source, product index, review indices) groups
    over the split `split` of each dataset of `datasets` (the sources; `mixed_training_batches`).

    A worker process gets the datasets' paths, not their arrays: it maps the files itself (copying a memory map
    into each worker would read the whole split)."""

    def __init__(self, datasets: Sequence[PreparedDataset], split: str,
                 plan: Sequence[Sequence[tuple[int, int, np.ndarray]]], *, max_tokens: int, max_regions: int) -> None:
        self.paths, self.split_name, self.plan = [dataset.path for dataset in datasets], split, plan
        self.max_tokens, self.max_regions, self.feature_dim = max_tokens, max_regions, datasets[0].feature_dim
        self._splits: list[PreparedSplit] | None = [dataset.split(split) for dataset in datasets]
        # Each source's products get their own range of list groups, so products of two sources never share one.
        sizes = [split_.num_products for split_ in self._splits]
        self.group_offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64).tolist()

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> Batch:
        if self._splits is None:
            self._splits = [PreparedDataset.open(path).split(self.split_name) for path in self.paths]
        lists = []
        for source, product, reviews in self.plan[index]:
            lists.extend(split_item_lists(self._splits[source], [(product, reviews)], self.group_offsets[source]))
        return collate(lists, self.max_tokens, self.max_regions, self.feature_dim)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_splits": None}


def _die_with_parent(parent: int, _worker: int) -> None:
    """In a worker process: end when the training process ends, also by kill -9. Left alone, a worker would find
    its pipe broken at its next batch and print a BrokenPipeError traceback after the user's command had died.
    Linux only (prctl PR_SET_PDEATHSIG); elsewhere torch's own watchdog ends the workers a little later."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(0)


def batch_loader(batches: PlannedBatches, *, workers: int, pin_memory: bool) -> DataLoader:
    """The batches in plan order. The loader draws its worker seeds from a generator of its own, so that iterating
    it leaves torch's global random stream (dropout) as it was; workers end with the training process."""
    return DataLoader(batches, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin_memory,
                      generator=torch.Generator(), prefetch_factor=4 if workers else None,
                      worker_init_fn=functools.partial(_die_with_parent, os.getpid()) if workers else None)
