"""What a hostile user found (issue 20, item 8), one table per subject: outputs that are inputs, full disks,
damaged resume states, huge numbers, settings out of range, files that are not files, mismatched data, fetching,
the service, killed loader workers, paths and messages. Each case ends in the documented answer: exit status 2 and
one `mrhp CMD: error:` line naming the file, line, field or option, no traceback, nothing written or lost (or, for
the service, the documented status with a JSON body)."""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from support import (
    AMAZON_META,
    AMAZON_REVIEWS,
    FINEFOOD_GOOD,
    FINEFOOD_HEADER,
    PRODUCTS,
    REVIEWS,
    TINY_TRAIN_ARGS,
    WIDTH,
    cli_error,
    header_set,
    prepare_tiny_dataset,
    rewrite_checkpoint,
    trained_request,
    write_jsonl,
)

from mrhp.cli import main
from mrhp.studies.synthetic import SyntheticSpec, write_official_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(prepared dataset, its trained run folder), never changed by a test: tests work on copies."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("hostile")
    spec = SyntheticSpec(products=(8, 3, 3), reviews_per_product=(3, 5), num_topics=3, feature_dim=WIDTH)
    prepared = prepare_tiny_dataset(root, spec)
    assert main(["train", "--data", str(prepared), "--out", str(root / "run"), "--set", "train.epochs=1",
                 *TINY_TRAIN_ARGS]) == 0
    return prepared, root / "run"


@pytest.fixture()
def copies(trained: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the prepared dataset and of the run folder, which a test may try to destroy."""
    prepared, run = trained
    shutil.copytree(prepared, tmp_path / "prepared")
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "prepared", tmp_path / "run"


def _digest(path: Path) -> str:
    """A fingerprint of a file or of a folder's files (names and bytes)."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(str(p.relative_to(path)).encode() + p.read_bytes() for p in files)).hexdigest()


# ---- data lost: an output that is one of the command's inputs or results -------------------------------------------


def _jsonl_inputs(tmp: Path) -> Path:
    folder = tmp / "inputs" / "data"
    write_jsonl(folder, PRODUCTS, REVIEWS)
    return folder


def _fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "pipe")
    return tmp / "pipe"


def _link(tmp: Path, target: Path, hard: bool) -> Path:
    link = tmp / "link"
    os.link(target, link) if hard else link.symlink_to(target)
    return link


def _evaluate(data: Path, run: Path, out: Path) -> list[str]:
    return ["evaluate", "--checkpoint", str(run / "best.safetensors"), "--data", str(data), "--no-progress",
            "--per-product", str(out)]


def _prepare_jsonl(folder: Path, out: Path) -> list[str]:
    return ["prepare", "--format", "jsonl", "--products", str(folder / "products.jsonl"), "--reviews",
            str(folder / "reviews.jsonl"), "--min-count", "1", "--overwrite", "--out", str(out)]


def _prepare_official(tmp: Path) -> tuple[list[str], Path]:
    features = write_official_dataset(tmp / "official", "tiny", SyntheticSpec(products=(3, 1, 1), feature_dim=WIDTH))
    return ["prepare", "--format", "mrhp", "--data-dir", str(tmp / "official"), "--category", "tiny", "--features",
            str(features), "--min-count", "1", "--overwrite", "--out", str(tmp / "official")], tmp / "official"


def _predict(run: Path, tmp: Path, out: Path) -> list[str]:
    (tmp / "in.jsonl").write_text(json.dumps(trained_request()) + "\n", encoding="utf-8")
    return ["predict", "--checkpoint", str(run / "best.safetensors"), "--input", str(tmp / "in.jsonl"), "--output",
            str(out), "--no-progress"]


# name -> function(tmp, prepared copy, run copy) -> (argv, the path that must stay as it was, expected texts)
DATA_LOST = {
    "evaluate --per-product the checkpoint": lambda tmp, data, run: (
        _evaluate(data, run, run / "best.safetensors"), run, ("--per-product", "is the input")),
    "evaluate --per-product a symlink to the checkpoint": lambda tmp, data, run: (
        _evaluate(data, run, _link(tmp, run / "best.safetensors", hard=False)), run, ("is the input",)),
    "evaluate --per-product a hard link to the checkpoint": lambda tmp, data, run: (
        _evaluate(data, run, _link(tmp, run / "best.safetensors", hard=True)), run, ("is the input",)),
    "evaluate --per-product dataset.json": lambda tmp, data, run: (
        _evaluate(data, run, data / "dataset.json"), data, ("--per-product", "inside the input folder")),
    "floor --per-product a dataset file": lambda tmp, data, run: (
        ["floor", "--data", str(data), "--method", "length", "--per-product", str(data / "dataset.json")], data,
        ("--per-product", "inside the input folder")),
    "prepare --overwrite --out the inputs' folder": lambda tmp, data, run: (
        _prepare_jsonl(_jsonl_inputs(tmp), tmp / "inputs" / "data"), tmp / "inputs", ("--out", "holds the input")),
    "prepare --overwrite --out the inputs' parent": lambda tmp, data, run: (
        _prepare_jsonl(_jsonl_inputs(tmp), tmp / "inputs"), tmp / "inputs", ("--out", "holds the input")),
    "prepare --format mrhp --overwrite --out --data-dir": lambda tmp, data, run: (
        *_prepare_official(tmp), ("--out", "the input")),
    "train --out a finished run without --resume": lambda tmp, data, run: (
        ["train", "--data", str(data), "--out", str(run), *TINY_TRAIN_ARGS], run, ("--out", "--resume")),
    "predict --output a FIFO": lambda tmp, data, run: (
        _predict(run, tmp, _fifo(tmp)), run, ("--output", "not a regular file")),
    # A link to the device, not /dev/null itself: a wrong implementation run as root would replace the node.
    "predict --output a link to /dev/null": lambda tmp, data, run: (
        _predict(run, tmp, _link(tmp, Path("/dev/null"), hard=False)), run, ("--output", "not a regular file")),
    "evaluate --per-product a FIFO without a reader": lambda tmp, data, run: (
        _evaluate(data, run, _fifo(tmp)), run, ("--per-product", "not a regular file")),
}


@pytest.mark.parametrize("case", DATA_LOST)
def test_an_output_that_is_an_input_is_refused_and_nothing_is_lost(case: str, copies, tmp_path: Path, capsys):
    argv, kept, expected = DATA_LOST[case](tmp_path, *copies)
    before = _digest(kept)
    cli_error(capsys, argv, *expected)
    assert _digest(kept) == before
    assert not (tmp_path / "pipe").exists() or (tmp_path / "pipe").is_fifo()
    assert Path("/dev/null").is_char_device()


# ---- full disk: the message names the file and says "no space"; no empty or half-written file stays -------------


class _FullDisk:
    """A file opened for writing under a given folder whose writes fail as on a full disk (the file itself is
    created, as a real open does)."""

    def __init__(self, handle):
        self._handle = handle

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()

    def __getattr__(self, name):
        return getattr(self._handle, name)


def _fill_disk(monkeypatch, under: Path) -> None:
    """Every write into a file below `under` fails with ENOSPC: Python's open, and safetensors' Rust writer."""
    import builtins
    import io

    from safetensors import SafetensorError

    real_open = io.open

    def full_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        writing = any(flag in mode for flag in "wax+")
        inside = isinstance(file, (str, os.PathLike)) and Path(os.path.abspath(file)).is_relative_to(under)
        return _FullDisk(handle) if writing and inside else handle

    def full_save_file(tensors, filename, metadata=None):
        Path(filename).touch()
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                              "\"No space left on device\" })")

    monkeypatch.setattr(io, "open", full_open)
    monkeypatch.setattr(builtins, "open", full_open)
    monkeypatch.setattr("mrhp.models.checkpoint.save_file", full_save_file)


def _features_args(tmp: Path) -> list[str]:
    from PIL import Image

    folder = tmp / "data"
    folder.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "a.png")
    products = [{**PRODUCTS[0], "images": ["a.png"]}, *PRODUCTS[1:]]
    write_jsonl(folder, products, REVIEWS)
    return ["features", "--products", str(folder / "products.jsonl"), "--reviews", str(folder / "reviews.jsonl"),
            "--threads", "1", "--no-progress", "--out", str(tmp / "out")]


# name -> function(tmp, prepared copy, run copy) -> (argv, the folder whose writes fail, expected file name)
FULL_DISK = {
    "train": lambda tmp, data, run: (["train", "--data", str(data), "--out", str(tmp / "out"), "--set",
                                      "train.epochs=1", *TINY_TRAIN_ARGS], tmp / "out", "config.json"),
    "train, checkpoint": lambda tmp, data, run: (["train", "--data", str(data), "--out", str(tmp / "out"), "--set",
                                                  "train.epochs=1", *TINY_TRAIN_ARGS], tmp / "elsewhere",
                                                 ".safetensors"),
    "train --resume": lambda tmp, data, run: (["train", "--data", str(data), "--out", str(run), "--resume", "--set",
                                               "train.epochs=2", *TINY_TRAIN_ARGS], run, "metrics.jsonl"),
    "evaluate --per-product": lambda tmp, data, run: (_evaluate(data, run, tmp / "out" / "per.jsonl"), tmp / "out",
                                                      "per.jsonl"),
    "report": lambda tmp, data, run: (["report", str(run), "--data", str(data), "--out", str(tmp / "out")],
                                      tmp / "out", str(tmp / "out")),
    "features": lambda tmp, data, run: (_features_args(tmp), tmp / "out", str(tmp / "out")),
}


@pytest.mark.parametrize("case", FULL_DISK)
def test_a_full_disk_names_the_file_and_leaves_no_empty_file(case: str, copies, tmp_path: Path, capsys, monkeypatch):
    argv, full, expected = FULL_DISK[case](tmp_path, *copies)
    if case == "report":
        assert main(_evaluate(copies[0], copies[1], copies[1] / "test_per_product.jsonl")) == 0
    sizes = {p: p.stat().st_size for p in copies[1].rglob("*") if p.is_file()}
    before = set(tmp_path.rglob("*"))
    _fill_disk(monkeypatch, full)
    cli_error(capsys, argv, expected, "no space left on device")
    monkeypatch.undo()
    written = [p for p in set(tmp_path.rglob("*")) - before if p.is_file()]
    assert not [p for p in written if p.stat().st_size == 0], f"empty files stayed: {written}"
    assert not [p for p in written if ".tmp" in p.name], "a temporary file stayed"
    if case == "train --resume":  # the run it resumes is as it was (checkpoints and all)
        assert {p: p.stat().st_size for p in copies[1].rglob("*") if p.is_file()} == sizes


# ---- resuming: a run continues only from its own data and a whole, well-formed training state ---------------------


def _header(change):
    """A change of last.safetensors' header."""
    return {"header_change": change}


def _state(key, value):
    return _header(header_set(f"state.{key}", value))


def _tensors(change):
    return {"tensor_change": change}


def _first_moment(change):
    def apply(tensors: dict) -> None:
        name = next(name for name in tensors if name.startswith("optimizer.") and name.endswith(".exp_avg"))
        change(tensors, name)
    return apply


def _swap_vocabulary(data: Path) -> None:
    words = (data / "vocab.txt").read_text(encoding="utf-8").splitlines()
    words[2], words[3] = words[3], words[2]
    (data / "vocab.txt").write_text("".join(word + "\n" for word in words), encoding="utf-8")


def _other_threshold(data: Path) -> None:
    meta = json.loads((data / "dataset.json").read_text(encoding="utf-8"))
    meta["relevance_threshold"] += 1
    (data / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")


def _first_group(key, value):
    def change(header: dict) -> None:
        header["optimizer"]["param_groups"][0][key] = value
    return _header(change)


# name -> (a change of last.safetensors (see support.rewrite_checkpoint), or of the dataset copy; expected text)
RESUME_CASES = {
    "another vocabulary of the same size": (_swap_vocabulary, "another vocabulary"),
    "another relevance threshold": (_other_threshold, "relevance threshold"),
    "empty scheduler state": (_state("scheduler", {}), "'scheduler'"),
    "missing optimizer tensors": (_tensors(lambda t: [t.pop(n) for n in list(t) if n.startswith("optimizer.")]),
                                  "optimizer"),
    "a missing Adam moment": (_tensors(_first_moment(lambda t, n: t.pop(n))), "exp_avg"),
    "epoch a string": (_state("epoch", "1"), "'epoch'"),
    "epoch negative": (_state("epoch", -1), "'epoch'"),
    "best_metric a string": (_state("best_metric", "high"), "'best_metric'"),
    "lr a string": (_first_group("lr", "fast"), "'lr'"),
    "empty param_groups": (_header(lambda h: h["optimizer"].__setitem__("param_groups", [])), "parameter groups"),
    "RNG of another dtype": (_tensors(lambda t: t.__setitem__("rng.torch", t["rng.torch"].float())), "random state"),
    "RNG truncated": (_tensors(lambda t: t.__setitem__("rng.torch", t["rng.torch"][:100].clone())), "random state"),
    "Adam moment of another shape": (_tensors(_first_moment(lambda t, n: t.__setitem__(n, torch.zeros(3)))),
                                     "exp_avg"),
}


@pytest.mark.parametrize("case", RESUME_CASES)
def test_resume_refuses_other_data_and_damaged_states(case: str, copies, capsys):
    data, run = copies
    change, expected = RESUME_CASES[case]
    if callable(change):
        change(data)
    else:
        last = run / "last.safetensors"
        rewrite_checkpoint(last, last.with_name("changed.safetensors"), **change).replace(last)
    before = _digest(run)
    cli_error(capsys, ["train", "--data", str(data), "--out", str(run), "--resume", "--set", "train.epochs=2",
                       *TINY_TRAIN_ARGS], "--resume", expected)
    assert _digest(run) == before


def test_resume_names_a_metrics_line_whose_epoch_is_not_a_number(copies, capsys):
    data, run = copies
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    (run / "metrics.jsonl").write_text(json.dumps({**json.loads(lines[0]), "epoch": "one"}) + "\n", encoding="utf-8")
    cli_error(capsys, ["train", "--data", str(data), "--out", str(run), "--resume", "--set", "train.epochs=2",
                       *TINY_TRAIN_ARGS], "metrics.jsonl", "line 1", "field 'epoch'")


# ---- numbers: integers over 4,300 digits, ratings beyond float, ragged regions ----------------------------------

HUGE = "9" * 5000  # a JSON integer Python's int() refuses to parse (over 4,300 digits)
FAR = 10**400  # an integer json reads, beyond float's range


def _raw(record: dict, field: str) -> str:
    """`record` as one JSON line whose `field` is the integer HUGE, written as raw digits."""
    return json.dumps({**record, field: "@HUGE@"}).replace('"@HUGE@"', HUGE)


def _numbers_jsonl(tmp: Path) -> tuple[list[str], str]:
    folder = tmp / "data"
    folder.mkdir()
    (folder / "products.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PRODUCTS), encoding="utf-8")
    lines = [json.dumps(r) for r in REVIEWS]
    lines[1] = _raw(REVIEWS[1], "votes")
    (folder / "reviews.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return _prepare_jsonl(folder, tmp / "out")[:-3] + ["--out", str(tmp / "out")], "reviews.jsonl"


def _numbers_csv(tmp: Path) -> tuple[list[str], str]:
    path = tmp / "Reviews.csv"
    path.write_text(FINEFOOD_HEADER + FINEFOOD_GOOD + f"99,P1,U99,N,{HUGE},1,5,1,S,T\r\n", encoding="utf-8",
                    newline="")
    return ["prepare", "--format", "finefood", "--input", str(path), "--out", str(tmp / "out"), "--split-fractions",
            "1", "0", "0", "--min-reviews", "1"], "HelpfulnessNumerator"


def _numbers_amazon(tmp: Path, which: str, field: str, value: str) -> tuple[list[str], str]:
    rows = {"reviews": [json.dumps(r) for r in AMAZON_REVIEWS], "metadata": [json.dumps(m) for m in AMAZON_META]}
    source = (AMAZON_REVIEWS if which == "reviews" else AMAZON_META)[1]
    rows[which][1] = _raw(source, field).replace(HUGE, value)
    for name, lines in rows.items():
        (tmp / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ["prepare", "--format", "amazon2023", "--input", str(tmp / "reviews.jsonl"), "--metadata",
            str(tmp / "metadata.jsonl"), "--out", str(tmp / "out"), "--split-fractions", "1", "0", "0",
            "--min-reviews", "1"], f"{which}.jsonl"


def _numbers_official(tmp: Path) -> tuple[list[str], str]:
    argv, folder = _prepare_official(tmp)
    relevance = folder / "tiny.rel.train"
    relevance.write_text(relevance.read_text(encoding="utf-8").replace('"upvotes": 1', f'"upvotes": {HUGE}', 1),
                         encoding="utf-8")
    return [*argv[:-3], "--out", str(tmp / "out")], "tiny.rel.train"


def _numbers_request(tmp: Path, run: Path, line: str) -> tuple[list[str], str]:
    (tmp / "requests.jsonl").write_text(json.dumps(trained_request()) + "\n" + line + "\n", encoding="utf-8")
    return ["predict", "--checkpoint", str(run / "best.safetensors"), "--input", str(tmp / "requests.jsonl"),
            "--output", str(tmp / "ranked.jsonl"), "--no-progress"], "line 2"


def _numbers_compare(tmp: Path) -> tuple[list[str], str]:
    rows = [{"product_id": f"p{k}", "split": "test", "map": 0.5, "ndcg@3": 0.5, "ndcg@5": 0.5} for k in range(3)]
    (tmp / "a.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    (tmp / "b.jsonl").write_text(_raw(rows[0], "map") + "\n", encoding="utf-8")
    return ["compare", str(tmp / "a.jsonl"), str(tmp / "b.jsonl")], "b.jsonl"


def _numbers_manifest(tmp: Path) -> tuple[list[str], str]:
    folder = _jsonl_inputs(tmp)
    products = [{**PRODUCTS[0], "images": ["https://example.invalid/a.jpg"]}, *PRODUCTS[1:]]
    write_jsonl(folder, products, REVIEWS)
    (tmp / "fetched").mkdir()
    (tmp / "fetched" / "manifest.jsonl").write_text(_raw({"url": "https://example.invalid/a.jpg"}, "tries") + "\n",
                                                    encoding="utf-8")
    return ["fetch-images", "--products", str(folder / "products.jsonl"), "--reviews", str(folder / "reviews.jsonl"),
            "--out", str(tmp / "fetched"), "--no-progress"], "manifest.jsonl"


def _request_with(path: tuple, raw_value: str) -> str:
    body = trained_request()
    holder = body
    for part in path[:-1]:
        holder = holder[part]
    holder[path[-1]] = "@VALUE@"
    return json.dumps(body).replace('"@VALUE@"', raw_value)


# name -> function(tmp, run copy) -> (argv, the file or field the error names)
NUMBERS = {
    "jsonl votes of 5,000 digits": lambda tmp, run: _numbers_jsonl(tmp),
    "csv votes of 5,000 digits": lambda tmp, run: _numbers_csv(tmp),
    "amazon2023 helpful_vote of 5,000 digits": lambda tmp, run: _numbers_amazon(tmp, "reviews", "helpful_vote", HUGE),
    "amazon2023 metadata of 5,000 digits": lambda tmp, run: _numbers_amazon(tmp, "metadata", "title", HUGE),
    "amazon2023 rating 10**400": lambda tmp, run: _numbers_amazon(tmp, "reviews", "rating", str(FAR)),
    "official relevance of 5,000 digits": lambda tmp, run: _numbers_official(tmp),
    "request rating of 5,000 digits": lambda tmp, run: _numbers_request(tmp, run, _request_with(("reviews", 0, "rating"), HUGE)),
    "request rating 10**400": lambda tmp, run: _numbers_request(tmp, run, _request_with(("reviews", 0, "rating"), str(FAR))),
    "request ragged inline regions": lambda tmp, run: _numbers_request(tmp, run, _request_with(("images",), '[{"regions": [[1, [2]]]}]')),
    "compare per-product value of 5,000 digits": lambda tmp, run: _numbers_compare(tmp),
    "fetch manifest number of 5,000 digits": lambda tmp, run: _numbers_manifest(tmp),
}


@pytest.mark.parametrize("case", NUMBERS)
def test_huge_numbers_are_named_errors(case: str, copies, tmp_path: Path, capsys):
    argv, named = NUMBERS[case](tmp_path, copies[1])
    cli_error(capsys, argv, named)
    assert not (tmp_path / "out").exists() and not (tmp_path / "ranked.jsonl").exists()


# ---- settings out of range ----------------------------------------------------------------------------------------


def cli_fails(capsys, argv: list[str], *expected: str) -> str:
    """`cli_error`, also for argparse's own errors (a SystemExit with status 2 and its `mrhp CMD: error:` line)."""
    try:
        return cli_error(capsys, argv, *expected)
    except SystemExit as exit_info:
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith(f"mrhp {argv[0]}: error: ")]
        assert exit_info.code == 2 and "Traceback" not in err and len(lines) == 1, err[-2000:]
        assert all(text in lines[0] for text in expected), lines[0]
        return lines[0]


HOSTILE_SETTINGS = ["model.num_heads=0", "model.conv_kernel=4", f"train.threads={10**12}", "train.seed=-1",
                    f"train.seed={2**70}", f"model.embedding_dim={10**7}", f"model.interaction_layers={10**6}",
                    f"train.loader_workers={10**9}"]


@pytest.mark.parametrize("setting", HOSTILE_SETTINGS)
def test_hostile_settings_stop_train_before_any_work(setting: str, trained: tuple[Path, Path], tmp_path: Path,
                                                     capsys):
    out = tmp_path / "run"
    cli_error(capsys, ["train", "--data", str(trained[0]), "--out", str(out), "--set", setting, "--no-progress"],
              setting.split("=")[0])
    assert not out.exists()


@pytest.mark.parametrize("setting", ["train.lr=1e30", "loss.o_p=1e308"])
def test_a_diverging_run_says_so(setting: str, trained: tuple[Path, Path], tmp_path: Path, capsys):
    cli_error(capsys, ["train", "--data", str(trained[0]), "--out", str(tmp_path / "run"), *TINY_TRAIN_ARGS,
                       "--set", setting, "--set", "train.epochs=6"], "training diverged")


@pytest.mark.parametrize("setting", [("num_heads", 0), ("conv_kernel", 4), ("interaction_layers", 10**6)])
def test_hostile_checkpoint_settings_are_named(setting: tuple, copies, tmp_path: Path, capsys):
    data, run = copies
    bad = rewrite_checkpoint(run / "best.safetensors", tmp_path / "bad.safetensors",
                   header_change=header_set(f"config.model.{setting[0]}", setting[1]))
    cli_error(capsys, ["evaluate", "--checkpoint", str(bad), "--data", str(data), "--no-progress"], "bad.safetensors",
              f"model.{setting[0]}")


def _with_npy(tmp: Path, regions) -> Path:
    import numpy as np

    np.save(tmp / "x.npy", np.asarray(regions, dtype=np.float32))
    return tmp / "x.npy"


def _with_pth(tmp: Path) -> list[str]:
    argv, folder = _prepare_official(tmp)
    first = next((folder / "features").rglob("*.pth"))
    torch.save([{"x": torch.zeros(3, 0)}], first)
    return [*argv[:-3], "--out", str(tmp / "out"), "--max-missing-image-rate", "0"]


def _config_file(text: str, tmp: Path, data: Path, run: Path) -> tuple[list[str], tuple]:
    (tmp / "config.json").write_text(text, encoding="utf-8")
    return ["train", "--data", str(data), "--out", str(tmp / "out"), "--config", str(tmp / "config.json")], \
        ("config.json",)


# name -> function(tmp, prepared copy, run copy) -> (argv, expected texts)
HOSTILE_OPTIONS = {
    "floor --seed -1": lambda tmp, data, run: (["floor", "--data", str(data), "--method", "random", "--seed", "-1"],
                                               ("--seed",)),
    "floor --threads -4": lambda tmp, data, run: (["floor", "--data", str(data), "--method", "lambdamart",
                                                   "--threads", "-4"], ("--threads",)),
    "prepare --seed -1": lambda tmp, data, run: (_prepare_jsonl(_jsonl_inputs(tmp), tmp / "out") + ["--seed", "-1"],
                                                 ("--seed",)),
    "prepare --split-fractions nan": lambda tmp, data, run: (
        _prepare_jsonl(_jsonl_inputs(tmp), tmp / "out") + ["--split-fractions", "nan", "0.5", "0.5"],
        ("--split-fractions",)),
    "prepare --max-regions-per-item -1": lambda tmp, data, run: (
        _prepare_jsonl(_jsonl_inputs(tmp), tmp / "out") + ["--max-regions-per-item", "-1"],
        ("--max-regions-per-item",)),
    "prepare --relevance-threshold 99": lambda tmp, data, run: (
        _prepare_jsonl(_jsonl_inputs(tmp), tmp / "out") + ["--relevance-threshold", "99"],
        ("--relevance-threshold 99",)),
    "prepare --relevance-threshold -3": lambda tmp, data, run: (
        _prepare_jsonl(_jsonl_inputs(tmp), tmp / "out") + ["--relevance-threshold", "-3"],
        ("--relevance-threshold -3",)),
    "features --input-size 40000": lambda tmp, data, run: (_features_args(tmp) + ["--input-size", "40000"],
                                                           ("--input-size",)),
    "features --threads 10**12": lambda tmp, data, run: (_features_args(tmp) + ["--threads", str(10**12)],
                                                         ("--threads",)),
    "fetch-images --backoff nan": lambda tmp, data, run: (
        ["fetch-images", "--prepared", str(data), "--out", str(tmp / "out"), "--backoff", "nan"], ("--backoff",)),
    "fetch-images --connect-timeout nan": lambda tmp, data, run: (
        ["fetch-images", "--prepared", str(data), "--out", str(tmp / "out"), "--connect-timeout", "nan"],
        ("--connect-timeout",)),
    "fetch-images --user-agent not ASCII": lambda tmp, data, run: (
        ["fetch-images", "--prepared", str(data), "--out", str(tmp / "out"), "--user-agent", "mrhp\u00e9"],
        ("--user-agent",)),
    **{f"config file holding {kind}": functools.partial(_config_file, text)
       for kind, text in {"an array": "[1, 2]", "null": "null", "a string": '"x"'}.items()},
    ".npy region width 0 in a request": lambda tmp, data, run: (
        _numbers_request(tmp, run, _request_with(("images",), json.dumps([str(_with_npy(tmp, [[]] * 2))])))[0],
        ("line 2", "images")),
    ".pth region width 0": lambda tmp, data, run: (_with_pth(tmp), (".pth",)),
}


@pytest.mark.parametrize("case", HOSTILE_OPTIONS)
def test_hostile_options_are_named(case: str, copies, tmp_path: Path, capsys):
    argv, expected = HOSTILE_OPTIONS[case](tmp_path, *copies)
    cli_fails(capsys, argv, *expected)
    assert not (tmp_path / "out").exists() and not (tmp_path / "ranked.jsonl").exists()


# ---- files that are not files: a FIFO or a device named as an image or feature file --------------------------------


def _special(tmp: Path, name: str, kind: str) -> Path:
    path = tmp / name
    if kind == "FIFO":
        os.mkfifo(path)
    else:  # a link to an endless device
        path.symlink_to("/dev/zero")
    return path


@pytest.mark.parametrize("kind", ["FIFO", "link to /dev/zero"])
def test_a_request_naming_a_special_npy_file_is_a_named_error(kind: str, copies, tmp_path: Path, capsys):
    path = _special(tmp_path, "x.npy", kind)
    argv, _ = _numbers_request(tmp_path, copies[1], _request_with(("images",), json.dumps([str(path)])))
    cli_error(capsys, argv, "line 2", "images", "not a regular file")


@pytest.mark.parametrize("kind", ["FIFO", "link to /dev/zero"])
def test_features_lists_a_special_image_file_as_a_problem(kind: str, tmp_path: Path, capsys):
    argv = _features_args(tmp_path)
    (tmp_path / "data" / "a.png").unlink()
    _special(tmp_path / "data", "a.png", kind)
    assert main(argv) == 0
    assert "not a regular file" in capsys.readouterr().out


# ---- mismatched data: runs, checkpoints and per-product files that do not belong to the data -----------------------


def _tokens_beyond_vocabulary(data: Path) -> None:
    import numpy as np

    path = data / "test" / "review_tokens.npy"
    tokens = np.load(path)
    tokens[0] = len((data / "vocab.txt").read_text(encoding="utf-8").splitlines()) + 5
    np.save(path, tokens)


def _evaluated(data: Path, run: Path) -> Path:
    assert main(_evaluate(data, run, run / "test_per_product.jsonl")) == 0
    return run


def _other_products(data: Path) -> None:
    path = data / "test" / "product_ids.json"
    path.write_text(json.dumps([f"other-{k}" for k in range(len(json.loads(path.read_text())))]), encoding="utf-8")


def _report(tmp: Path, data: Path, *runs: Path) -> list[str]:
    return ["report", *map(str, runs), "--data", str(data), "--out", str(tmp / "out")]


def _per_product_rows(count: int, split: object = "test") -> str:
    return "".join(json.dumps({"product_id": f"p{k}", "split": split, "map": 0.5, "ndcg@3": 0.5, "ndcg@5": 0.5})
                   + "\n" for k in range(count))


def _compare_files(tmp: Path, first: str, second: str) -> list[str]:
    (tmp / "a.jsonl").write_text(first, encoding="utf-8")
    (tmp / "b.jsonl").write_text(second, encoding="utf-8")
    return ["compare", str(tmp / "a.jsonl"), str(tmp / "b.jsonl")]


def _prepare_change(change):
    def apply(tmp: Path, data: Path, run: Path) -> Path:
        _evaluated(data, run)
        change(data)
        return data
    return apply


# name -> function(tmp, prepared copy, run copy) -> (argv, expected texts)
MISMATCHED = {
    "evaluate, token ids beyond the vocabulary": lambda tmp, data, run: (
        _tokens_beyond_vocabulary(data) or _evaluate(data, run, tmp / "per.jsonl"), ("review_tokens.npy",)),
    "floor, token ids beyond the vocabulary": lambda tmp, data, run: (
        _tokens_beyond_vocabulary(data) or ["floor", "--data", str(data), "--method", "length"],
        ("review_tokens.npy",)),
    "report, another vocabulary": lambda tmp, data, run: (
        _report(tmp, _prepare_change(_swap_vocabulary)(tmp, data, run), run), ("different vocabularies",)),
    "report, products the data lacks": lambda tmp, data, run: (
        _report(tmp, _prepare_change(_other_products)(tmp, data, run), run), ("are not in split 'test'",)),
    "report, one run twice through a symlink": lambda tmp, data, run: (
        _evaluated(data, run) and (tmp / "again").symlink_to(run) or _report(tmp, data, run, tmp / "again"),
        ("given twice",)),
    "compare, one file twice through a hard link": lambda tmp, data, run: (
        _compare_files(tmp, _per_product_rows(3), "") and os.link(tmp / "a.jsonl", tmp / "c.jsonl")
        or ["compare", str(tmp / "a.jsonl"), str(tmp / "c.jsonl")], ("given twice",)),
    "compare, one product per file": lambda tmp, data, run: (
        [*_compare_files(tmp, _per_product_rows(1), _per_product_rows(1)), "--reference", "a"],
        ("at least 2 products", "got 1")),
    "compare, split null": lambda tmp, data, run: (
        _compare_files(tmp, _per_product_rows(3), _per_product_rows(3, split=None)), ("b.jsonl", "field 'split'")),
}


@pytest.mark.parametrize("case", MISMATCHED)
def test_mismatched_data_is_a_named_error(case: str, copies, tmp_path: Path, capsys):
    argv, expected = MISMATCHED[case](tmp_path, *copies)
    cli_error(capsys, argv, *expected)
    assert not (tmp_path / "out" / "report.md").exists()


# ---- fetching: deadlines, odd URLs, the address guard, no echoed bytes ---------------------------------------------


class _Server:
    """A local HTTP server: /image.png an image, /secret a text answer, /slow one byte every 0.2 s."""

    def __init__(self):
        import io
        import threading
        import time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (32, 24), (10, 200, 10)).save(buffer, "PNG")
        png = buffer.getvalue()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = {"/image.png": png, "/secret": b"SECRET-TOKEN internal admin page"}.get(self.path)
                if self.path == "/slow":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    for _ in range(50):
                        try:
                            self.wfile.write(b"x")
                            self.wfile.flush()
                        except OSError:
                            return
                        time.sleep(0.2)
                    return
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    pytest.importorskip("httpx")
    running = _Server()
    yield running
    running.close()


def _fetch(tmp: Path, urls: list[str], *options: str) -> dict[str, dict]:
    """Run fetch-images on a JSON-lines dataset whose first product lists `urls`; the manifest by URL."""
    folder = tmp / "data"
    write_jsonl(folder, [{**PRODUCTS[0], "images": urls}, *PRODUCTS[1:]], REVIEWS)
    assert main(["fetch-images", "--products", str(folder / "products.jsonl"), "--reviews",
                 str(folder / "reviews.jsonl"), "--out", str(tmp / "fetched"), "--no-progress", "--retries", "0",
                 "--per-host-rate", "0", *options]) == 0
    lines = (tmp / "fetched" / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    return {entry["url"]: entry for entry in map(json.loads, lines)}


# name -> (URL paths given the server's port, options, the URL whose outcome is checked, its outcome)
FETCHING = {
    "a server that sends a byte every 0.2 s": (["http://127.0.0.1:{port}/slow"],
                                               ["--allow-private-addresses", "--deadline", "1"], 0, "timed_out"),
    "port 99999": (["http://127.0.0.1:99999/a.jpg", "http://127.0.0.1:{port}/image.png"],
                   ["--allow-private-addresses"], 0, "bad_url"),
    "an xn-- host": (["http://xn--/a.jpg", "http://127.0.0.1:{port}/image.png"], ["--allow-private-addresses"], 0,
                     "bad_url"),
    "loopback, refused by default": (["http://127.0.0.1:{port}/image.png"], [], 0, "private_address"),
    "hex-encoded loopback": (["http://0x7f000001:{port}/image.png"], [], 0, "private_address"),
    "localhost by name": (["http://localhost:{port}/image.png"], [], 0, "private_address"),
    "loopback, allowed by the option": (["http://127.0.0.1:{port}/image.png"], ["--allow-private-addresses"], 0, "ok"),
}


@pytest.mark.parametrize("case", FETCHING)
def test_fetching_fails_only_the_url_at_fault(case: str, server, tmp_path: Path):
    urls, options, checked, outcome = FETCHING[case]
    urls = [url.format(port=server.port) for url in urls]
    manifest = _fetch(tmp_path, urls, *options)
    assert manifest[urls[checked]]["outcome"] == outcome, manifest[urls[checked]]
    for other in urls[1:]:  # the run went on: the other URL was fetched
        assert manifest[other]["outcome"] == "ok"


def test_a_response_that_is_not_an_image_is_not_echoed(server, tmp_path: Path, capsys):
    url = f"http://127.0.0.1:{server.port}/secret"
    manifest = _fetch(tmp_path, [url], "--allow-private-addresses")
    assert manifest[url]["outcome"] == "not_an_image"
    assert "SECRET" not in (tmp_path / "fetched" / "manifest.jsonl").read_text() + capsys.readouterr().out


def test_prepared_references_that_are_not_strings_are_named(copies, tmp_path: Path, capsys):
    data = copies[0]
    count = len(json.loads((data / "train" / "product_ids.json").read_text()))
    (data / "train" / "product_image_refs.json").write_text(json.dumps([[5]] * count), encoding="utf-8")
    cli_error(capsys, ["fetch-images", "--prepared", str(data), "--out", str(tmp_path / "out")],
              "product_image_refs.json")


# ---- the service: bounded batch wait, image files per request, slow bodies -----------------------------------------


@pytest.mark.parametrize("wait", ["inf", "1e12", "nan", "-1"])
def test_serve_refuses_a_batch_wait_that_would_stall_the_scorer(wait: str, copies, capsys):
    cli_error(capsys, ["serve", "--checkpoint", str(copies[1] / "best.safetensors"), "--batch-wait-ms", wait],
              "--batch-wait-ms")


def test_the_service_caps_image_files_per_request(tmp_path: Path):
    import base64
    import io

    images = pytest.importorskip("mrhp.features.images")
    if not images.images_available():
        pytest.skip("the images extra is not installed")
    from fastapi.testclient import TestClient
    from PIL import Image
    from support import tiny_checkpoint_file

    from mrhp.ranking.serve.app import create_app
    from mrhp.ranking.serve.settings import ServeSettings

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, "PNG")
    image = {"data": base64.b64encode(buffer.getvalue()).decode()}
    path = tiny_checkpoint_file(tmp_path / "wide.safetensors", image_dim=images.FEATURE_DIM)
    body = {"text": "pot", "reviews": [{"review_id": f"r{k}", "text": "great", "images": [image, image]}
                                       for k in range(3)]}
    with TestClient(create_app(path, ServeSettings(threads=1, max_image_files=4)),
                    raise_server_exceptions=False) as client:
        refused = client.post("/v1/rank", json=body)
        allowed = client.post("/v1/rank", json={**body, "reviews": body["reviews"][:2]})
    assert refused.status_code == 422, refused.text
    assert "reviews[2].images[0]" in refused.json()["message"] and "more than 4 image files" in refused.json()["message"]
    assert allowed.status_code == 200, allowed.text


def test_a_body_that_never_arrives_whole_gets_408(copies):
    import socket

    from support import serving

    from mrhp.ranking.serve.app import create_app
    from mrhp.ranking.serve.settings import ServeSettings

    app = create_app(copies[1] / "best.safetensors", ServeSettings(threads=1, body_timeout_s=0.5))
    with serving(app) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=20) as client:
            client.sendall(b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 100\r\n\r\n{\"text\"")
            answer = b""
            while chunk := client.recv(4096):  # the server answers, then closes the connection
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"did not arrive whole" in answer


# ---- kill -9 with loader workers ------------------------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers follow their parent through prctl")
def test_loader_workers_end_quietly_when_training_is_killed(trained: tuple[Path, Path], tmp_path: Path):
    import signal
    import subprocess
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mrhp.cli", "train", "--data", str(trained[0]), "--out", str(tmp_path / "run"),
               *TINY_TRAIN_ARGS, "--set", "train.epochs=500", "--set", "train.loader_workers=2",
               "--set", "data.batch_rows=4"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2) and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    # The pipe ends once every worker holding it has ended: they must end, and say nothing.
    stderr = process.stderr.read().decode()
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr[-2000:]


# ---- paths: folder names that are not UTF-8 (valid on Linux) -------------------------------------------------------


def test_a_folder_whose_name_is_not_utf8_works_end_to_end(trained: tuple[Path, Path], tmp_path: Path):
    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9"))  # Latin-1 bytes: not UTF-8
    try:
        folder.mkdir()
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    write_jsonl(folder / "data", PRODUCTS, REVIEWS)
    assert main(_prepare_jsonl(folder / "data", folder / "prepared")[:-3] + ["--out", str(folder / "prepared")]) == 0
    assert main(["train", "--data", str(folder / "prepared"), "--out", str(folder / "run"), "--set", "train.epochs=1",
                 *TINY_TRAIN_ARGS]) == 0
    data, run = folder / "trained-data", folder / "trained-run"
    shutil.copytree(trained[0], data)
    shutil.copytree(trained[1], run)
    assert main(_evaluate(data, run, run / "test_per_product.jsonl")) == 0
    assert main(["report", str(run), "--data", str(data), "--out", str(folder / "report")]) == 0
    assert "caf\\udce9" in (folder / "report" / "report.md").read_text(encoding="utf-8")


def test_a_huge_integer_in_the_safetensors_header_at_a_non_utf8_path_is_named(trained: tuple[Path, Path],
                                                                                tmp_path: Path):
    """There the header is parsed by mrhp, not by safetensors: through the one JSON reader, so that a 5,000-digit
    number is a named JSON error at its position like any other (json alone raises a ValueError of its own). In a
    process of its own: its real stderr writes the path's undecodable byte as an escape, as a user sees it."""
    import subprocess

    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9"))
    try:
        folder.mkdir()
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    header = b'{"__metadata__": {}, "n": ' + b"9" * 5000 + b"}"
    (folder / "best.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    done = subprocess.run([sys.executable, "-m", "mrhp.cli", *_evaluate(trained[0], folder, tmp_path / "out.jsonl")],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert ("caf\\udce9/best.safetensors: not a readable checkpoint (an integer of more than 4300 digits: line 1 "
            "column 27") in done.stderr
    assert not (tmp_path / "out.jsonl").exists()


# ---- messages: one line that names the file and the key ------------------------------------------------------------


def _weights(change):
    def apply(tensors: dict) -> None:
        name = min(n for n in tensors if n.startswith("model.") and tensors[n].is_floating_point())
        change(tensors, name)
    return {"tensor_change": apply}


def _first_weight_name(run: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(run / "best.safetensors"), framework="pt") as handle:
        return min(n for n in handle.keys() if n.startswith("model."))  # noqa: SIM118 (safe_open has no __iter__)


CHECKPOINT_MESSAGES = {  # name -> (change, texts the one error line holds besides the weight's name)
    "a missing weight": (_weights(lambda t, n: t.pop(n)), ("missing",)),
    "an extra weight": ({"tensor_change": lambda t: t.__setitem__("model.extra.weight", torch.zeros(2))},
                        ("unexpected model.extra.weight",)),
    "a misshapen weight": (_weights(lambda t, n: t.__setitem__(n, torch.zeros(3, 3))), ("of shape (3, 3)",)),
}


@pytest.mark.parametrize("case", CHECKPOINT_MESSAGES)
def test_checkpoint_weight_errors_are_one_line_naming_the_key(case: str, copies, tmp_path: Path, capsys):
    data, run = copies
    change, expected = CHECKPOINT_MESSAGES[case]
    bad = rewrite_checkpoint(run / "best.safetensors", tmp_path / "bad.safetensors", **change)
    line = cli_error(capsys, ["evaluate", "--checkpoint", str(bad), "--data", str(data), "--no-progress"],
                     "bad.safetensors", *expected)
    if case != "an extra weight":
        assert _first_weight_name(run) in line
    assert "Error(s) in loading state_dict" not in capsys.readouterr().err + line


CONFIG_FILES = {  # name -> (file name, bytes)
    "not UTF-8": ("bad.toml", b"[train]\nlr = 0.1 # caf\xe9\n"),
    "nested too deeply (JSON)": ("bad.json", b"[" * 100_000 + b"]" * 100_000),
    "nested too deeply (TOML)": ("bad.toml", b"x = " + b"[" * 100_000 + b"]" * 100_000 + b"\n"),
}


@pytest.mark.parametrize("case", CONFIG_FILES)
def test_config_files_that_cannot_be_read_are_named(case: str, trained: tuple[Path, Path], tmp_path: Path, capsys):
    name, content = CONFIG_FILES[case]
    (tmp_path / name).write_bytes(content)
    cli_error(capsys, ["train", "--data", str(trained[0]), "--out", str(tmp_path / "run"), "--config",
                       str(tmp_path / name)], name)
    assert not (tmp_path / "run").exists()


def test_report_refuses_a_text_only_run_on_data_with_images(tmp_path: Path, capsys):
    """The same texts prepared with and without image features: one vocabulary, so only the images differ."""
    import numpy as np

    products = [{"product_id": f"P{k}", "text": f"product {k} pot", "split": split}
                for k, split in enumerate(["train", "train", "dev", "dev", "test", "test"])]
    reviews = [{"review_id": f"R{k}{j}", "product_id": f"P{k}", "text": f"review {j} of {k} is fine", "votes": 3 * j}
               for k in range(6) for j in range(3)]
    write_jsonl(tmp_path / "plain", products, reviews)
    np.save(tmp_path / "a.npy", np.ones((2, 4), dtype=np.float32))
    write_jsonl(tmp_path / "pictured", [{**p, "images": [str(tmp_path / "a.npy")]} for p in products], reviews)
    for name in ("plain", "pictured"):
        assert main(_prepare_jsonl(tmp_path / name, tmp_path / f"{name}-data")[:-3]
                    + ["--out", str(tmp_path / f"{name}-data")]) == 0
    run = tmp_path / "plain-run"
    assert main(["train", "--data", str(tmp_path / "plain-data"), "--out", str(run), "--set", "train.epochs=1",
                 *TINY_TRAIN_ARGS]) == 0
    assert main(_evaluate(tmp_path / "plain-data", run, run / "test_per_product.jsonl")) == 0
    cli_error(capsys, _report(tmp_path, tmp_path / "pictured-data", run), "region features")
