"""Self-describing checkpoints: one safetensors file with the weights, and in its header the resolved config, the
vocabulary, the metrics and the training state needed to resume. Loading unpickles nothing, so a checkpoint from
anywhere can be opened safely, and it needs no other input."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, load_file, save_file
from torch import nn

from mrhp import __version__, jsontext
from mrhp.config import (
    INPUT_SETTINGS,
    Config,
    ModelConfig,
    ModelInputs,
    config_from_dict,
)
from mrhp.data.text import Vocabulary
from mrhp.errors import MrhpError
from mrhp.models.registry import build_model
from mrhp.outputs import write_atomic, write_error

FORMAT = "mrhp-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    model: nn.Module  # any model of the registry (`mrhp.models.registry`), rebuilt from `config.model.name` on load
    config: Config
    inputs: ModelInputs  # what the data decided about the model (vocabulary size, feature widths)
    vocab: Vocabulary
    relevance_threshold: int
    metrics: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)  # training progress (epoch, best, history, ...)
    optimizer: dict[str, Any] | None = None  # torch optimizer state_dict, when saved for resuming
    rng: torch.Tensor | None = None
    mrhp_version: str = __version__  # of the mrhp that wrote the file (this one for a checkpoint not yet saved)
    source: Path | None = None  # the file it was loaded from, named by errors about what the model computes


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().contiguous().clone()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for name, value in header["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": header["param_groups"]}


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write atomically (temporary file, then rename): a killed run never leaves a half-written checkpoint."""
    path = Path(path)
    tensors = {f"model.{name}": value.detach().contiguous().clone() for name, value in checkpoint.model.state_dict().items()}
    header: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "mrhp_version": __version__,
        "model_name": checkpoint.config.model.name,
        "config": checkpoint.config.to_dict(),
        "inputs": checkpoint.inputs.to_dict(),
        "vocab": checkpoint.vocab.to_list(),
        "relevance_threshold": checkpoint.relevance_threshold,
        "metrics": checkpoint.metrics,
        "state": checkpoint.state,
    }
    if checkpoint.optimizer is not None:
        optimizer_tensors, header["optimizer"] = _flatten_optimizer(checkpoint.optimizer)
        tensors.update(optimizer_tensors)
    if checkpoint.rng is not None:
        tensors["rng.torch"] = checkpoint.rng.clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(path, lambda temporary: save_file(tensors, str(temporary), metadata={"mrhp": json.dumps(header)}))
    except SafetensorError as error:  # safetensors' own error for a failed write, such as a full disk
        raise write_error(path, error) from None


# What a checkpoint header holds: key -> (JSON types allowed, required). Anything else is refused by name.
_HEADER: dict[str, tuple[tuple[type, ...], bool]] = {
    "format": ((str,), True),
    "version": ((int,), True),
    "mrhp_version": ((str,), False),
    "model_name": ((str,), False),
    "config": ((dict,), True),
    "inputs": ((dict,), False),
    "vocab": ((list,), True),
    "relevance_threshold": ((int,), True),
    "metrics": ((dict,), False),
    "state": ((dict,), False),
    "optimizer": ((dict,), False),
}


def _check_header(header: dict, path: Path) -> None:
    """Every key the loader reads is there with the right JSON type, so a damaged or hand-edited header is an
    error naming the key rather than a crash somewhere later."""
    for key, (types, required) in _HEADER.items():
        if key not in header:
            if required:
                raise MrhpError(f"{path}: the checkpoint header lacks '{key}'")
            continue
        value = header[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise MrhpError(f"{path}: checkpoint header '{key}' is a {type(value).__name__}, expected "
                            f"{' or '.join(t.__name__ for t in types)}")
    if not all(isinstance(token, str) for token in header["vocab"]):
        raise MrhpError(f"{path}: checkpoint header 'vocab' must be a list of strings")
    optimizer = header.get("optimizer")
    if optimizer is not None and not (isinstance(optimizer.get("param_groups"), list)
                                      and isinstance(optimizer.get("scalars"), dict)):
        raise MrhpError(f"{path}: checkpoint header 'optimizer' lacks its 'param_groups' list or 'scalars' object")


def _config_and_inputs(header: dict, path: Path) -> tuple[Config, ModelInputs]:
    """The config and the model inputs of a header. A checkpoint written before `ModelInputs` existed has the
    inputs among its model settings (`INPUT_SETTINGS`, the embedding width resolved to the data's): they are
    taken from there, so it still loads."""
    values = header["config"]
    saved = header.get("inputs")
    model = values.get("model")
    if saved is None and isinstance(model, dict):
        model = dict(model)
        saved = {name: model.pop(name) for name in INPUT_SETTINGS if name in model}
        saved.setdefault("embedding_dim", model.get("embedding_dim", ModelConfig.embedding_dim))
        values = {**values, "model": model}
    config = config_from_dict(values, source=f"{path}: header 'config'")
    return config, ModelInputs.from_dict(saved, source=f"{path}: header 'inputs'")


def _read_safetensors(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The metadata and tensors of a safetensors file. safetensors opens only UTF-8 paths; a file name with other
    bytes (valid on Linux) is read here and parsed from memory."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        data = Path(path).read_bytes()
        size = int.from_bytes(data[:8], "little")
        header = jsontext.loads(data[8:8 + size]) if len(data) >= 8 + size else None
        if not isinstance(header, dict):
            raise ValueError("no safetensors header")  # noqa: TRY004 (the loader's errors are ValueErrors)
        return header.get("__metadata__") or {}, load(data)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    return metadata, load_file(str(path))


def _weights_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """One line naming the weights that are missing, extra or of another shape ("" when they match), instead of
    PyTorch's multi-line `load_state_dict` report."""
    def named(keys: list[str]) -> str:
        return ", ".join(f"model.{key}" for key in keys[:3]) + (f" (and {len(keys) - 3} more)" if len(keys) > 3 else "")

    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    shapes = sorted(key for key in set(expected) & set(found) if expected[key].shape != found[key].shape)
    parts = [f"missing {named(missing)}"] if missing else []
    parts += [f"unexpected {named(extra)}"] if extra else []
    if shapes:
        first = shapes[0]
        parts.append(f"{named(shapes)} of shape {tuple(found[first].shape)}, expected {tuple(expected[first].shape)}")
    return "; ".join(parts)


def load_checkpoint(path: Path) -> Checkpoint:
    """Rebuild the model, config and vocabulary from a checkpoint file alone (no pickle)."""
    path = Path(path)
    if not path.is_file():
        raise MrhpError(f"checkpoint not found: {path}")
    try:
        metadata, tensors = _read_safetensors(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise MrhpError(f"{path}: not a readable checkpoint ({error})") from None
    try:
        header = jsontext.loads(metadata["mrhp"])
    except (KeyError, ValueError):
        raise MrhpError(f"{path}: not an mrhp checkpoint (no 'mrhp' header)") from None
    if not isinstance(header, dict):
        raise MrhpError(f"{path}: the checkpoint header is a {type(header).__name__}, not a JSON object")
    if header.get("format") != FORMAT:
        raise MrhpError(f"{path}: not an mrhp checkpoint (format {header.get('format')!r})")
    if header.get("version") != VERSION:
        raise MrhpError(
            f"{path}: checkpoint format version {header.get('version')} is not supported by this mrhp "
            f"({__version__}, reads version {VERSION})"
        )
    _check_header(header, path)
    config, inputs = _config_and_inputs(header, path)
    try:
        vocab = Vocabulary(header["vocab"])
    except ValueError as error:
        raise MrhpError(f"{path}: header 'vocab': {error}") from None
    if header.get("model_name", config.model.name) != config.model.name:
        raise MrhpError(
            f"{path}: header says model {header['model_name']!r} but its config says {config.model.name!r}"
        )
    if len(vocab) != inputs.vocab_size:
        raise MrhpError(f"{path}: the vocabulary has {len(vocab)} words but the header's inputs.vocab_size is "
                        f"{inputs.vocab_size}")
    try:
        model = build_model(config.model, inputs)
    except (ValueError, RuntimeError) as error:
        raise MrhpError(f"{path}: its config builds no model ({error})") from None
    weights = {name[len("model."):]: value for name, value in tensors.items() if name.startswith("model.")}
    for name, value in weights.items():
        # A diverged run saves NaN/inf weights; its scores would be NaN, which no JSON answer can carry.
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise MrhpError(f"{path}: weight tensor model.{name} holds NaN or infinite values (a diverged run?)")
    mismatch = _weights_mismatch(model.state_dict(), weights)
    if mismatch:
        raise MrhpError(f"{path}: weights do not match the saved config: {mismatch}")
    model.load_state_dict(weights)
    model.eval()
    try:
        optimizer = _unflatten_optimizer(tensors, header["optimizer"]) if "optimizer" in header else None
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        raise MrhpError(f"{path}: the saved optimizer state is damaged ({type(error).__name__}: {error})") from None
    return Checkpoint(
        model=model,
        config=config,
        inputs=inputs,
        vocab=vocab,
        relevance_threshold=int(header["relevance_threshold"]),
        metrics=header.get("metrics", {}),
        state=header.get("state", {}),
        optimizer=optimizer,
        rng=tensors.get("rng.torch"),
        mrhp_version=header.get("mrhp_version", "unknown"),
        source=path,
    )
