"""Where a model runs and in which precision: the owner of the device names (`train.device`, `--device`) and of
`train.precision`.

A device is `auto` (the GPU when CUDA is usable, else the CPU), `cpu`, `cuda` (under torchrun: the GPU of the
rank's `LOCAL_RANK`, else the current one) or `cuda:N`. Mixed precision is autocast: `bf16` and `fp16` run the
matrix products in 16 bits with float32 weights and optimizer state; `fp16` (CUDA only) also scales the loss (a
gradient scaler) so that small gradients do not flush to zero.
"""

from __future__ import annotations

import contextlib
import re

import torch

from mrhp.errors import MrhpError

DEVICE_FORMS = ("auto", "cpu", "cuda", "cuda:N")
PRECISIONS = ("fp32", "bf16", "fp16")
_DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def is_device_name(name: str) -> bool:
    """Whether `name` is one of :data:`DEVICE_FORMS` (`cuda:N` with any N >= 0)."""
    return _DEVICE_NAME.fullmatch(name) is not None


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """The torch device of a device name; `MrhpError` when it names CUDA that this machine or torch lacks.

    `local_rank` (torchrun's LOCAL_RANK) picks each rank's GPU for `auto` and `cuda`; a fixed `cuda:N` would put
    every rank on one GPU, so it is refused there."""
    if not is_device_name(name):
        raise MrhpError(f"device {name!r} is not one of {', '.join(DEVICE_FORMS)}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise MrhpError(f"device {name!r}: CUDA is not available ({why}, torch {torch.__version__}); "
                        "use --device cpu (or auto)")
    count = torch.cuda.device_count()
    if name in ("auto", "cuda"):
        index = local_rank if local_rank is not None else torch.cuda.current_device()
    elif local_rank is not None:
        raise MrhpError(f"device {name!r}: under torchrun use cuda or auto, each rank then takes cuda:LOCAL_RANK")
    else:
        index = int(name.split(":")[1])
    if index >= count:
        raise MrhpError(f"device {name!r}: there is no GPU {index} ({count} visible)")
    return torch.device("cuda", index)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast region of a forward pass and its loss in `precision` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A loss scaler, enabled for fp16 only: disabled, its `scale`, `unscale_`, `step` and `update` are the plain
    backward and optimizer step, bit for bit. fp16 on the CPU is refused (`MrhpError`): oneDNN has no fp16 LSTM
    there, and bf16 is the CPU's 16-bit format."""
    if precision == "fp16" and device.type == "cpu":
        raise MrhpError("train.precision = 'fp16' is for CUDA devices; use bf16 on the CPU")
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
