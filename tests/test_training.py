"""Training runs through `mrhp train`: resuming, also after a kill, repeats an uninterrupted run."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from support import TINY_TRAIN_ARGS

from mrhp.cli import main
from mrhp.models.checkpoint import load_checkpoint


def test_resume_after_a_kill_between_the_metrics_line_and_the_checkpoint(trained: tuple[Path, Path], tmp_path: Path,
                                                                         monkeypatch):
    """The run dies after writing epoch 2's metrics line but before `last.safetensors` (fault injected into
    save_checkpoint); resuming must repeat epoch 2 once, leaving the metrics and weights of an uninterrupted run."""
    from mrhp.models.checkpoint import load_checkpoint

    train_module = importlib.import_module("mrhp.training.loop")  # `mrhp.training.loop` the attribute is the API function

    args = ["--data", str(trained[0]), "--set", "train.epochs=2", *TINY_TRAIN_ARGS]
    assert main(["train", "--out", str(tmp_path / "whole"), *args]) == 0
    real_save = train_module.save_checkpoint

    def dies_at_epoch_2(path: Path, checkpoint) -> None:
        if path.name == "last.safetensors" and checkpoint.state["epoch"] == 2:
            raise KeyboardInterrupt  # what kill -9 leaves on disk: epoch 2 logged, last.safetensors still epoch 1
        real_save(path, checkpoint)

    monkeypatch.setattr(train_module, "save_checkpoint", dies_at_epoch_2)
    assert main(["train", "--out", str(tmp_path / "killed"), *args]) == 130
    assert len((tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()) == 2
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    assert main(["train", "--out", str(tmp_path / "killed"), "--resume", *args]) == 0

    def log(run: str) -> list[dict]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        timings = ("seconds", "data_wait_share")
        return [{k: v for k, v in json.loads(line).items() if k not in timings} for line in lines]

    assert log("killed") == log("whole") and [row["epoch"] for row in log("killed")] == [1, 2]
    whole, resumed = (load_checkpoint(tmp_path / run / "last.safetensors").model.state_dict() for run in ("whole", "killed"))
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)


def test_resume_repeats_an_uninterrupted_run(prepared: Path, tmp_path: Path):
    args = ["--data", str(prepared), *TINY_TRAIN_ARGS]
    assert main(["train", "--out", str(tmp_path / "straight"), "--set", "train.epochs=3", *args]) == 0
    # A run stopped after epoch 1, resumed with the full number of epochs.
    assert main(["train", "--out", str(tmp_path / "resumed"), "--set", "train.epochs=1", *args]) == 0
    assert main(["train", "--out", str(tmp_path / "resumed"), "--resume", "--set", "train.epochs=3", *args]) == 0
    straight, resumed = (
        [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        for name in ("straight", "resumed")
    )
    assert [row["epoch"] for row in resumed] == [1, 2, 3]
    for a, b in zip(straight, resumed):
        assert a["dev_map"] == b["dev_map"] and a["loss_ranking"] == pytest.approx(b["loss_ranking"], abs=1e-7)
    weights = [load_checkpoint(tmp_path / name / "last.safetensors").model.state_dict() for name in ("straight", "resumed")]
    assert all(np.allclose(weights[0][key], weights[1][key], atol=1e-6) for key in weights[0])
    # Any other config change is refused: the run folder would mix two experiments.
    assert main(["train", "--out", str(tmp_path / "resumed"), "--resume", *args, "--set", "train.lr=0.1"]) == 2
