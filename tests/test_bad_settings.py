"""The bad-input matrix (issue 13): Settings and options out of range. Shared values and `cli_error` are in
support.py; every case must end in a documented answer: for the command line, exit status 2 and one `mrhp CMD: error:
...` line naming the file, line and field (or option) at fault, no traceback, and nothing written or lost; for the
service, the documented status with a `{"message", "detail"}` JSON body naming the field, never a 5xx. A wrong
implementation (a crash, a silent success, an error that names nothing) fails the case."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import (
    cli_error,
)

from mrhp.cli import main

# ---- settings out of range -----------------------------------------------------------------------------------------

BAD_SETTINGS = [
    "model.hidden_size=0", "model.dropout=1.5", "model.dropout=-0.1", "model.embedding_dim=-4", "train.lr=inf",
    "train.lr=nan", "train.lr=0", "data.max_tokens=0", "data.max_regions=-1", "train.threads=-2", "train.epochs=0",
    "loss.margin=-1", "data.batch_rows=0", "data.max_list_size=1", "model.num_heads=3", "model.name=nope",
    "train.ties=nope", "model.text_encoder=nope", "loss.weighting=nope", "train.select_metric=nope",
    "model.colour=red", "colour.model=red", "train.lr=abc", "model.use_images=maybe", "train.lr_factor=2",
    "loss.contrastive_weight=-1", "model.text_tuned_layers=2",
]


@pytest.mark.parametrize("setting", BAD_SETTINGS)
def test_settings_out_of_range_stop_train_before_any_work(setting: str, trained: tuple[Path, Path], tmp_path: Path,
                                                          capsys):
    out = tmp_path / "run"
    cli_error(capsys, ["train", "--data", str(trained[0]), "--out", str(out), "--set", setting, "--no-progress"],
              setting.split("=")[0].split(".")[-1])
    assert not (out / "metrics.jsonl").exists()


BAD_OPTIONS = {  # name -> (arguments after the command, expected text); None: the command's own arguments
    "serve --port 70000": (["--checkpoint", "c", "--port", "70000"], "port must be within [0, 65535]"),
    "serve --port -1": (["--checkpoint", "c", "--port", "-1"], "port must be within [0, 65535]"),
    "evaluate --threshold 99": (None, "--threshold 99"),
    "evaluate --threshold -1": (None, "--threshold -1"),
}


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_options_out_of_range_are_named(case: str, trained: tuple[Path, Path], capsys):
    rest, expected = BAD_OPTIONS[case]
    command = case.split()[0]
    if rest is None:
        rest = ["--checkpoint", str(trained[1]), "--data", str(trained[0]), "--no-progress", "--threshold",
                case.rsplit(" ", 1)[1]]
    cli_error(capsys, [command, *rest], expected)


@pytest.mark.parametrize("value", ["0", "-5", "x"])
def test_prepare_min_count_below_one_is_a_usage_error(value: str, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse's own errors: usage line, status 2
        main(["prepare", "--format", "jsonl", "--products", "p", "--reviews", "r", "--out", "o", "--min-count", value])
    assert exit_info.value.code == 2 and "--min-count" in capsys.readouterr().err
