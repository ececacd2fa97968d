"""Where a model runs and in which precision: the owner of the device names (`train.device`, `--device`) and of
`train.precision`.

A device is `auto` (the GPU when CUDA is usable, else the CPU), `cpu`, `cuda` (under torchrun: the GPU of the
rank's `LOCAL_RANK`, else the current one) or `cuda:N`. Mixed precision is autocast: `bf16` and `fp16` run the
matrix products in 16 bits with float32 weights and optimizer state; `fp16` (CUDA only) also scales the loss (a
gradient scaler) so that small gradients do not flush to zero.

bf16 works on every CPU. oneDNN's bf16 LSTM needs AVX-512 (`torch.ops.mkldnn._is_mkldnn_bf16_supported()`); on a
CPU without it (AVX2 only) autocast's bf16 LSTM fails ("could not create a primitive descriptor for the LSTM
forward propagation primitive"), so there `run_lstm` keeps the LSTMs in float32 while every other product still
runs in bf16. fp16 on the CPU is refused before any work (`check_precision`).
"""

from __future__ import annotations

import contextlib
import functools
import re

import torch
from torch import nn

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


@functools.cache
def cpu_supports_bf16() -> bool:
    """Whether oneDNN runs bf16 kernels (the LSTM's among them) on this CPU: torch's own probe, True from AVX-512
    up, False on AVX2-only CPUs. A torch built without oneDNN runs its own LSTM kernel, which takes bf16."""
    return not torch.backends.mkldnn.is_available() or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_capability() -> str:
    """The widest vector instruction set torch's CPU kernels use here (e.g. `AVX2`, `AVX512`), for messages."""
    return torch.backends.cpu.get_cpu_capability()


def cuda_supports_bf16(device: torch.device) -> bool:
    """Whether the GPU `device` takes bf16 autocast: torch's own probe, the one `torch.autocast` itself applies."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported()


def check_precision(device: torch.device, precision: str) -> None:
    """`MrhpError` when `precision` cannot run on `device`: fp16 on the CPU (oneDNN has no fp16 LSTM there, and
    bf16 is the CPU's 16-bit format), bf16 on a GPU without it (autocast would refuse it in the first step).
    Called before a run writes anything."""
    if precision == "fp16" and device.type == "cpu":
        raise MrhpError("train.precision = 'fp16' is for CUDA devices; use bf16 on the CPU")
    if precision == "bf16" and device.type == "cuda" and not cuda_supports_bf16(device):
        raise MrhpError(f"train.precision = 'bf16': the GPU {device} ({torch.cuda.get_device_name(device)}) has no "
                        "bfloat16 support; use fp16 there")


def lstm_in_float32(device: torch.device, precision: str) -> bool:
    """Whether `run_lstm` keeps LSTMs in float32 under this autocast: bf16 on a CPU without oneDNN bf16 support."""
    return precision == "bf16" and device.type == "cpu" and not cpu_supports_bf16()


def run_lstm(lstm: nn.LSTM, x: torch.Tensor | nn.utils.rnn.PackedSequence) -> tuple:
    """`lstm(x)`, but in float32 with autocast off when the surrounding autocast is CPU bf16 and this CPU has no
    oneDNN bf16 support (see the module docstring); elsewhere exactly `lstm(x)`. `x` is a tensor or a packed
    sequence; the outputs are float32 in the fallback, which the bf16 products after it accept as they are."""
    on_cpu = (x.data if isinstance(x, nn.utils.rnn.PackedSequence) else x).device.type == "cpu"
    if on_cpu and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16 and (
        not cpu_supports_bf16()
    ):
        with torch.autocast("cpu", enabled=False):
            return lstm(x.float())
    return lstm(x)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast region of a forward pass and its loss in `precision` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A loss scaler, enabled for fp16 only: disabled, its `scale`, `unscale_`, `step` and `update` are the plain
    backward and optimizer step, bit for bit. A precision the device cannot run is refused (`check_precision`)."""
    check_precision(device, precision)
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
