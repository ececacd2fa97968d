"""Data-parallel training with torchrun: one process per device, DistributedDataParallel (NCCL on GPUs, gloo on
the CPU).

    torchrun --nproc-per-node N -m mrhp.cli train --data DATA --out RUN

Every rank builds the same model from the same seed and walks the same seeded epoch order of batches: global
step k is batches kN .. kN+N-1 of that order, batch kN+r on rank r (`shard_steps`; the last len % N batches
of an epoch are left out so that every rank takes the same number of steps). DDP averages the ranks' gradients,
so a step equals one process accumulating the N batches' gradients, each loss being the mean over its own
batch. Dev scoring is split over the ranks by ranking list and the scores summed back (`combine_scores`), so
every review is scored once and every rank computes the same metrics; rank 0's are taken all the same
(`from_main`). Only rank 0 writes files.

Without torchrun's environment (WORLD_SIZE unset or 1) nothing here does anything: `Runtime()` is one process.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from mrhp.compute.devices import resolve_device
from mrhp.errors import MrhpError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Runtime:
    """This process's place: rank of world_size processes, and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and progress bars."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def from_main(self, value: T) -> T:
        """Rank 0's `value` on every rank (a picklable object), so that all ranks take the same decisions."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, values: np.ndarray) -> np.ndarray:
        """The element-wise float64 sum of `values` over the ranks."""
        if not self.distributed:
            return values
        tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(self.device)
        dist.all_reduce(tensor)
        return tensor.cpu().numpy()


ONE_PROCESS = Runtime()


def _environment_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    try:
        return default if text is None else int(text)
    except ValueError:
        raise MrhpError(f"environment variable {name}={text!r} is not an integer") from None


@contextlib.contextmanager
def session(device_name: str) -> Iterator[Runtime]:
    """This process's runtime for the `with` block: under torchrun (WORLD_SIZE > 1) a process group is joined on
    entry and left on exit; otherwise one process on `device_name`."""
    world_size = _environment_int("WORLD_SIZE", 1)
    if world_size <= 1:
        yield Runtime(device=resolve_device(device_name))
        return
    rank, local_rank = _environment_int("RANK", 0), _environment_int("LOCAL_RANK", 0)
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(minutes=30))
    log.info("rank %d of %d on %s (%s)", rank, world_size, device, backend)
    try:
        yield Runtime(rank, world_size, device)
    finally:
        dist.destroy_process_group()


def wrap(model: nn.Module, runtime: Runtime) -> nn.Module:
    """The module to train: `model` itself in one process, else DistributedDataParallel over it.

    find_unused_parameters: a batch may leave parts of a model unused (e.g. no image region anywhere in it)."""
    if not runtime.distributed:
        return model
    ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def shard_steps(batches: Sequence[T], runtime: Runtime) -> list[T]:
    """Rank r's batches of an epoch order: batch kN + r for every full global step k (N = world size)."""
    steps = len(batches) // runtime.world_size
    return [batches[k * runtime.world_size + runtime.rank] for k in range(steps)]


def shard_lists(groups: Sequence[T], runtime: Runtime) -> list[T]:
    """Rank r's share of the ranking lists to score: every N-th list from the r-th (all of them in one process)."""
    return list(groups[runtime.rank::runtime.world_size])


def combine_scores(scores: np.ndarray, runtime: Runtime, what: str) -> np.ndarray:
    """Every rank's scores of a split (NaN where another rank scored), combined on every rank; a review scored by
    no rank or by several is an error."""
    if not runtime.distributed:
        return scores
    scored = ~np.isnan(scores)
    total = runtime.sum(np.stack([np.where(scored, scores, 0.0), scored.astype(np.float64)]))
    if not np.all(total[1] == 1):
        raise RuntimeError(f"{what}: {int(np.sum(total[1] != 1))} reviews were not scored by exactly one rank")
    return total[0]
