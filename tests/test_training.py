"""Training runs through `mrhp train`: resuming, also after a kill, repeats an uninterrupted run."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch
from support import TINY_TRAIN_ARGS

from mrhp.cli import main


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
