"""Checkpoints: what the data decides about a model (`ModelInputs`) is saved beside the user's config, checkpoints
written before that still load, and a damaged inputs header is named."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from support import tiny_checkpoint_file

from mrhp.errors import MrhpError
from mrhp.models.checkpoint import load_checkpoint


def _rewrite_header(path: Path, change) -> None:
    with safe_open(str(path), framework="pt") as handle:
        header = json.loads(handle.metadata()["mrhp"])
    change(header)
    save_file(load_file(str(path)), str(path), metadata={"mrhp": json.dumps(header)})


def test_a_checkpoint_of_the_old_layout_still_loads(tmp_path: Path):
    path = tiny_checkpoint_file(tmp_path / "new.safetensors", image_dim=4, embedding_dim=6)
    new = load_checkpoint(path)

    def old_layout(header: dict) -> None:  # the inputs as model settings, as mrhp wrote them before ModelInputs
        inputs = header.pop("inputs")
        header["config"]["model"].update(vocab_size=inputs["vocab_size"], image_dim=inputs["image_dim"],
                                         text_state_dim=inputs["text_state_dim"],
                                         embedding_dim=inputs["embedding_dim"])

    _rewrite_header(path, old_layout)
    old = load_checkpoint(path)
    assert old.inputs == new.inputs and old.inputs.embedding_dim == 6 and old.inputs.image_dim == 4
    # The old config held the width the data resolved (6), where the new one keeps the user's setting (8).
    assert old.config == dataclasses.replace(new.config, model=dataclasses.replace(new.config.model, embedding_dim=6))
    for name, value in new.model.state_dict().items():
        assert torch.equal(old.model.state_dict()[name], value)


def test_damaged_inputs_name_the_header_key(tmp_path: Path):
    path = tiny_checkpoint_file(tmp_path / "c.safetensors")
    _rewrite_header(path, lambda header: header["inputs"].update(image_dim="wide"))
    with pytest.raises(MrhpError, match="header 'inputs': image_dim must be an integer"):
        load_checkpoint(path)
