"""kill -9 at random points, then the same command again: does every command end exactly where an uninterrupted run
ends, with no traceback? (issue 13)

For `prepare`, `train --resume` and `predict`, on data the synthetic generator writes: one uninterrupted run gives
the reference and its duration T; then each trial starts the command as its own process, sends SIGKILL after a
uniformly random time in [0, T], runs the command to completion (train with `--resume`) and compares with the
reference:

- prepare: every file of the prepared folder, byte for byte, and no temporary folder left beside it;
- train: the metrics lines (without their wall-clock seconds) and every weight of `last.safetensors`;
- predict: the output file, byte for byte.

    python benchmarks/kill_resume.py [--trials 5] [--seed 0] [--work DIR] [--smoke]

Runs with one torch thread per process. Prints one line per trial and the counts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import add_smoke
from safetensors.torch import load_file

from mrhp.studies.synthetic import SyntheticSpec, write_official_dataset

TRAIN_SETTINGS = [
    "--set", "model.hidden_size=16", "--set", "model.embedding_dim=8", "--set", "model.num_heads=2",
    "--set", "model.interaction_layers=2", "--set", "model.feedforward_size=16", "--set", "data.batch_rows=16",
    "--set", "train.threads=1", "--set", "train.epochs=6", "--no-progress",
]


def mrhp(*args: str) -> list[str]:
    return [sys.executable, "-m", "mrhp.cli", *args]


def run(command: list[str]) -> tuple[int, str, float]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return done.returncode, done.stderr, time.perf_counter() - started


def killed(command: list[str], after_s: float) -> int | None:
    """Start `command`, SIGKILL it after `after_s` seconds; its exit status when it finished first, else None."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        return process.wait(timeout=after_s)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return None


def folder_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def train_outcome(run_dir: Path) -> tuple[list[dict], dict[str, str]]:
    lines = [{k: v for k, v in json.loads(line).items() if k != "seconds"}
             for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    weights = {name: hashlib.sha256(value.numpy().tobytes()).hexdigest()
               for name, value in load_file(str(run_dir / "last.safetensors")).items() if name.startswith("model.")}
    return lines, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5, help="kills per command")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    add_smoke(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="mrhp-kill-"))
    work.mkdir(parents=True, exist_ok=True)
    products, request_count, train_settings = (60, 10, 10), 3000, TRAIN_SETTINGS
    if args.smoke:  # one kill per command, of toy runs
        args.trials, products, request_count = 1, (8, 4, 4), 20
        train_settings = [*TRAIN_SETTINGS, "--set", "train.epochs=2"]
    spec = SyntheticSpec(products=products, reviews_per_product=(3, 8), num_topics=4, feature_dim=16)
    features = write_official_dataset(work / "official", "demo", spec)
    prepare = ["prepare", "--format", "mrhp", "--data-dir", str(work / "official"), "--category", "demo",
               "--features", str(features), "--min-count", "1", "--overwrite"]

    status, err, prepare_s = run(mrhp(*prepare, "--out", str(work / "prepared")))
    assert status == 0, err
    status, err, train_s = run(mrhp("train", "--data", str(work / "prepared"), "--out", str(work / "run"),
                                    *train_settings))
    assert status == 0, err
    requests = work / "requests.jsonl"
    with requests.open("w") as out:
        for k in range(request_count):
            reviews = [{"review_id": f"r{j}", "text": f"word{j} review text number {k} " * (1 + j % 5)}
                       for j in range(6)]
            out.write(json.dumps({"product_id": f"p{k}", "text": f"product {k}", "reviews": reviews}) + "\n")
    checkpoint = work / "run" / "best.safetensors"
    predict = ["predict", "--checkpoint", str(checkpoint), "--input", str(requests), "--no-progress"]
    status, err, predict_s = run(mrhp(*predict, "--output", str(work / "ranked.jsonl")))
    assert status == 0, err
    print(f"uninterrupted: prepare {prepare_s:.1f} s, train {train_s:.1f} s, predict {predict_s:.1f} s "
          f"(the kill times are drawn from [0, these])")

    references = {"prepare": folder_digest(work / "prepared"), "train": train_outcome(work / "run"),
                  "predict": hashlib.sha256((work / "ranked.jsonl").read_bytes()).hexdigest()}
    counts = {"same": 0, "different": 0, "traceback": 0}
    for command, duration in (("prepare", prepare_s), ("train", train_s), ("predict", predict_s)):
        for trial in range(args.trials):
            after = rng.uniform(0.0, duration)
            target = work / f"{command}-{trial}"
            if command == "prepare":
                argv = mrhp(*prepare, "--out", str(target))
                again = argv
            elif command == "train":
                argv = mrhp("train", "--data", str(work / "prepared"), "--out", str(target), *train_settings)
                again = [*argv, "--resume"]
            else:
                argv = mrhp(*predict, "--output", str(target))
                again = argv
            finished = killed(argv, after)
            status, err, _ = run(again)
            if command == "prepare":
                same = folder_digest(target) == references["prepare"] and not list(work.glob(f".{target.name}.*"))
            elif command == "train":
                same = train_outcome(target) == references["train"]
            else:
                same = hashlib.sha256(target.read_bytes()).hexdigest() == references["predict"]
            traceback = "Traceback" in err
            counts["same" if status == 0 and same else "different"] += 1
            counts["traceback"] += traceback
            when = "finished before the kill" if finished is not None else f"killed at {after:.2f} s"
            print(f"{command:8s} trial {trial}: {when:28s} rerun exit {status}, "
                  f"{'identical to the uninterrupted run' if same else 'DIFFERENT'}"
                  f"{', TRACEBACK' if traceback else ''}")
    total = sum(counts[k] for k in ("same", "different"))
    print(f"\n{counts['same']} of {total} killed runs finished identical to the uninterrupted run; "
          f"{counts['different']} differed; {counts['traceback']} reruns printed a traceback")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
