"""The run's config: it holds no setting the data decides and settings out of range are named; configs/: every file
holds what its comments say it sets, and its [prepare] table is read by `mrhp prepare --config` under the options
given on the command line."""

from __future__ import annotations

import contextlib
import json
import tomllib
from pathlib import Path

import pytest
from support import TINY_TRAIN_ARGS

from mrhp.cli import build_parser, main
from mrhp.cli.data import prepare_argv
from mrhp.config import (
    INPUT_SETTINGS,
    Config,
    ModelConfig,
    load_config,
    prepare_section,
)
from mrhp.errors import MrhpError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PAPER = sorted(CONFIGS.glob("amazon-*.toml")) + sorted(CONFIGS.glob("lazada-*.toml"))


def parsed_prepare(config: Path, *explicit: str):
    """The arguments `mrhp prepare --config config ...` runs with (the same two parses as `main`)."""
    argv = ["prepare", "--config", str(config), "--out", "P", *explicit]
    return build_parser().parse_args(prepare_argv(build_parser().parse_args(argv), argv))


def test_the_six_paper_configs_set_the_dataset_and_leave_training_at_the_paper_defaults():
    assert [path.stem for path in PAPER] == ["amazon-clothing", "amazon-electronics", "amazon-home",
                                             "lazada-clothing", "lazada-electronics", "lazada-home"]
    for path in PAPER:
        source, category = path.stem.split("-")
        # The comments say training sets nothing: a table of settings here would contradict them.
        assert set(tomllib.loads(path.read_text())) == {"prepare"}, path.name
        assert load_config(path) == Config().validate()
        args = parsed_prepare(path, "--data-dir", "DATA")
        assert (args.format, args.category) == ("mrhp", category)
        # SPEC 5 / the reference: relevant iff label > 1 on Amazon, > 0 on Lazada; paper 4.2: GloVe / fastText.
        assert args.relevance_threshold == (1 if source == "amazon" else 0), path.name
        assert args.vectors == ("glove.6B.300d.txt" if source == "amazon" else "cc.id.300.vec"), path.name
        assert args.product_text == ("name" if path.stem == "lazada-clothing" else "name+description"), path.name


def test_real_data_config_prepares_as_its_benchmark_did_and_train_ignores_the_prepare_table():
    path = CONFIGS / "real-data.toml"
    config = load_config(path)
    assert (config.model.text_encoder, config.loss.contrastive_weight, config.model.interaction_layers) == \
        ("minilm", 0.1, 1)
    args = parsed_prepare(path, "--format", "amazon2023", "--input", "R.jsonl")
    assert (args.drop_single_level, args.split_fractions, args.seed, args.min_count) == (True, [0.6, 0.2, 0.2], 0, 2)


def write_tiny_jsonl(root: Path) -> tuple[Path, Path]:
    products = [{"product_id": f"p{i}", "text": "steel pot"} for i in range(10)]
    # Each review has one word of its own (seen once in train), so min_count decides whether it is in the vocabulary.
    reviews = [{"review_id": f"r{i}{j}", "product_id": f"p{i}", "text": f"great pot once{i}{j}", "votes": j}
               for i in range(10) for j in range(3)]
    for name, rows in (("products.jsonl", products), ("reviews.jsonl", reviews)):
        (root / name).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return root / "products.jsonl", root / "reviews.jsonl"


def test_prepare_takes_its_options_from_the_file_and_the_command_line_wins(tmp_path):
    products, reviews = write_tiny_jsonl(tmp_path)
    config = tmp_path / "run.toml"
    config.write_text('[prepare]\nformat = "jsonl"\nmin_count = 1\nrelevance_threshold = 2\n'
                      'split-fractions = [0.6, 0.2, 0.2]\n\n[train]\nepochs = 3\n', encoding="utf-8")
    out = tmp_path / "P"
    assert main(["prepare", "--config", str(config), "--products", str(products), "--reviews", str(reviews),
                 "--out", str(out), "--relevance-threshold", "0"]) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["source"]["fractions"] == [0.6, 0.2, 0.2]  # from the file (the default is 0.8 0.1 0.1)
    assert meta["relevance_threshold"] == 0  # the command line over the file's 2
    vocab = (out / "vocab.txt").read_text().split()
    # min_count 1 from the file keeps the words seen once in train; the default 5 would make them <unk>.
    assert sum(word.startswith("once") for word in vocab) > 0


@pytest.mark.parametrize(("table", "message"), [
    ('out = "elsewhere"', "prepare.out: not an option a config file sets for mrhp prepare"),
    ("colour = 3", "prepare.colour: not an option a config file sets for mrhp prepare"),
    ('lenient = "yes"', "prepare.lenient: expected true or false, got 'yes'"),
    ("min_count = true", "prepare.min_count: expected a string, a number or a list of them, got True"),
    ("split_fractions = []", "prepare.split_fractions: expected a string, a number or a list of them, got []"),
])
def test_a_bad_prepare_table_names_the_file_and_the_key(tmp_path, capsys, table, message):
    config = tmp_path / "bad.toml"
    config.write_text(f'[prepare]\nformat = "jsonl"\n{table}\n', encoding="utf-8")
    assert main(["prepare", "--config", str(config), "--out", str(tmp_path / "P")]) == 2
    assert f"mrhp prepare: error: {config}: {message}" in capsys.readouterr().err
    assert not (tmp_path / "P").exists()


def test_a_bad_value_in_the_file_is_refused_like_the_option(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text('[prepare]\nformat = "parquet"\n', encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "--config", str(config), "--out", str(tmp_path / "P")])
    assert exit_info.value.code == 2
    assert "argument --format: invalid choice: 'parquet'" in capsys.readouterr().err


def test_prepare_without_a_format_anywhere_says_where_to_give_it(tmp_path, capsys):
    assert main(["prepare", "--out", str(tmp_path / "P")]) == 2
    assert "prepare needs --format (or format in the [prepare] table of --config)" in capsys.readouterr().err
    config = tmp_path / "plain.toml"
    config.write_text("[train]\nepochs = 2\n", encoding="utf-8")
    assert prepare_section(config) == {}
    assert main(["prepare", "--config", str(config), "--out", str(tmp_path / "P")]) == 2
    assert "prepare needs --format" in capsys.readouterr().err


def test_the_prepare_table_is_not_a_section_of_the_run(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--set", "prepare.seed=1"]) == 2
    assert "--set: unknown config section 'prepare'" in capsys.readouterr().err


def test_the_config_holds_no_setting_the_data_decides():
    assert not set(INPUT_SETTINGS) & set(ModelConfig.__dataclass_fields__)
    with pytest.raises(MrhpError, match="unknown setting 'model.vocab_size'"):
        load_config(None, ["model.vocab_size=50"])


def test_every_shipped_config_loads():
    from mrhp.config import load_config

    configs = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))
    assert len(configs) == 7  # the paper's six dataset-category settings and real-data.toml
    for path in configs:
        load_config(path)
    real = load_config(Path(__file__).parent.parent / "configs" / "real-data.toml")
    assert (real.model.text_encoder, real.model.side_features) == ("minilm", True)


@pytest.mark.parametrize(("command", "args", "named"), [
    ("train", ["--set", "model.hidden_size=0"], "model.hidden_size"),
    ("train", ["--set", "model.dropout=1.5"], "model.dropout"),
    ("train", ["--set", "model.dropout=1.0"], "model.dropout"),
    ("train", ["--set", "model.embedding_dim=-4"], "model.embedding_dim"),
    ("train", ["--set", "train.lr=inf"], "train.lr"),
    ("train", ["--set", "train.lr=nan"], "train.lr"),
    ("train", ["--set", "data.max_tokens=0"], "data.max_tokens"),
    ("train", ["--set", "train.threads=-2"], "train.threads"),
    ("prepare", ["--min-count", "-5"], "--min-count"),
    ("serve", ["--port", "70000"], "port"),
    ("evaluate", ["--threshold", "99"], "--threshold 99"),
    ("evaluate", ["--threshold", "-1"], "--threshold -1"),
])
def test_settings_out_of_range_are_named(prepared: Path, tmp_path: Path, capsys, command: str, args: list[str],
                                         named: str):
    checkpoint = tmp_path / "run" / "best.safetensors"
    if command == "evaluate":
        assert main(["train", "--data", str(prepared), "--out", str(tmp_path / "run"), "--set", "train.epochs=1",
                     *TINY_TRAIN_ARGS]) == 0
    common = {"train": ["--data", str(prepared), "--out", str(tmp_path / "out"), "--no-progress"],
              "prepare": ["--format", "mrhp", "--out", str(tmp_path / "out")],
              "serve": ["--checkpoint", str(checkpoint)],
              "evaluate": ["--checkpoint", str(checkpoint), "--data", str(prepared), "--no-progress"]}[command]
    capsys.readouterr()
    with pytest.raises(SystemExit) if command == "prepare" else contextlib.nullcontext() as argparse_exit:
        assert main([command, *common, *args]) == 2
    if argparse_exit is not None:
        assert argparse_exit.value.code == 2
    err = capsys.readouterr().err
    assert f"mrhp {command}: error: " in err and named in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
