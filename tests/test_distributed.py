"""Devices, mixed precision and data-parallel training (`mrhp.compute.devices`, `mrhp.compute.distributed`): 2 gloo processes
started by torchrun on a tiny dataset, compared with one process doing the same global steps."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from support import TINY_TRAIN_ARGS, prepare_tiny_dataset

from mrhp.cli import main
from mrhp.compute import devices
from mrhp.compute.distributed import Runtime, combine_scores, shard_lists, shard_steps
from mrhp.config import load_config
from mrhp.data.batching import collate, split_item_lists, training_batches
from mrhp.data.prepared import PreparedDataset
from mrhp.errors import MrhpError
from mrhp.models.checkpoint import load_checkpoint
from mrhp.models.registry import build_model, initialise_from_data
from mrhp.scoring.evaluate import evaluate_split
from mrhp.studies.synthetic import SyntheticSpec
from mrhp.training.loop import joint_loss, model_inputs

# Dropout off: the ranks draw their own masks, which one process cannot repeat.
DDP_ARGS = [*TINY_TRAIN_ARGS, "--set", "data.batch_rows=8", "--set", "model.dropout=0"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    spec = SyntheticSpec(products=(12, 4, 4), reviews_per_product=(3, 6), num_topics=4, feature_dim=8)
    return prepare_tiny_dataset(tmp_path_factory.mktemp("distributed"), spec)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun_train(prepared: Path, out: Path, *args: str, processes: int = 2) -> None:
    """`torchrun --nproc-per-node 2 -m mrhp.cli train ...` on 127.0.0.1; the whole process group is killed when
    it does not finish in time."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(processes),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
               "-m", "mrhp.cli", "train", "--data", str(prepared), "--out", str(out), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        output, _ = child.communicate(timeout=180)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == 0, output[-3000:]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one_process_accumulating_the_same_global_batches(prepared: Path, tmp_path: Path):
    torchrun_train(prepared, tmp_path / "ddp", "--set", "train.epochs=1", *DDP_ARGS)
    ddp = load_checkpoint(tmp_path / "ddp" / "last.safetensors").model.state_dict()

    # One process, the same seed and epoch order: each step accumulates batches 2k and 2k + 1, each loss halved
    # (DDP averages the two ranks' gradients).
    dataset = PreparedDataset.open(prepared)
    sets = [DDP_ARGS[k + 1] for k, flag in enumerate(DDP_ARGS) if flag == "--set"] + ["train.epochs=1"]
    config = load_config(None, sets)
    inputs = model_inputs(config, dataset)
    torch.manual_seed(config.train.seed)
    model = build_model(config.model, inputs)
    initialise_from_data(model, None)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr, fused=True)
    split, data = dataset.split("train"), config.data
    batches = training_batches(split, data.batch_rows, data.max_list_size, config.train.seed, 1)
    assert len(batches) >= 4
    model.train()
    for step in range(len(batches) // 2):
        optimizer.zero_grad()
        for groups in batches[2 * step:2 * step + 2]:
            batch = collate(split_item_lists(split, groups), data.max_tokens, data.max_regions, dataset.feature_dim)
            (joint_loss(model(batch), batch, config)[0] / 2).backward()
        optimizer.step()
    initial = build_model(config.model, inputs).state_dict()
    moved = 0
    for name, value in model.state_dict().items():
        torch.testing.assert_close(ddp[name], value, rtol=1e-4, atol=1e-5, msg=name)
        moved += not torch.equal(value, initial[name])
    assert moved > 10  # the steps changed the weights, so agreeing above says something


def test_resume_under_ddp_repeats_an_uninterrupted_ddp_run_and_dev_is_scored_once(prepared: Path, tmp_path: Path,
                                                                                   capsys):
    args = [*DDP_ARGS, "--set", "model.dropout=0.2"]  # each rank's dropout stream is seeded per epoch
    torchrun_train(prepared, tmp_path / "straight", "--set", "train.epochs=2", *args)
    torchrun_train(prepared, tmp_path / "resumed", "--set", "train.epochs=1", *args)
    torchrun_train(prepared, tmp_path / "resumed", "--resume", "--set", "train.epochs=2", *args)
    straight, resumed = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    assert [row["epoch"] for row in resumed] == [1, 2]
    for a, b in zip(straight, resumed):
        assert a["dev_map"] == b["dev_map"] and a["loss_ranking"] == b["loss_ranking"]
    weights = [load_checkpoint(tmp_path / name / "last.safetensors").model.state_dict()
               for name in ("straight", "resumed")]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    # The two ranks' dev scores together are one process's scores of every dev review.
    best = load_checkpoint(tmp_path / "straight" / "best.safetensors")
    dataset = PreparedDataset.open(prepared)
    single = evaluate_split(best.model, dataset.split("dev"), data=best.config.data, feature_dim=dataset.feature_dim,
                            threshold=dataset.relevance_threshold, ties=best.config.train.ties, progress=False)
    assert best.metrics["dev"] == pytest.approx(single.summary, abs=1e-9)
    # Another number of processes would change the global batch: refused.
    capsys.readouterr()
    assert main(["train", "--data", str(prepared), "--out", str(tmp_path / "resumed"), "--resume", *args,
                 "--set", "train.epochs=3"]) == 2
    assert "was trained by 2 processes, not 1" in capsys.readouterr().err


def test_ranks_take_disjoint_shards_of_one_epoch_order_and_score_every_list_once():
    batches = list(range(7))
    shards = [shard_steps(batches, Runtime(rank, 2)) for rank in range(2)]
    assert shards == [[0, 2, 4], [1, 3, 5]]  # global step k = batches 2k, 2k + 1; the odd last batch is left out
    assert shard_steps(batches, Runtime()) == batches
    lists = [shard_lists(batches, Runtime(rank, 3)) for rank in range(3)]
    assert sorted(item for shard in lists for item in shard) == batches


def fake_rank(other: np.ndarray) -> SimpleNamespace:
    """Rank 0 of 2, where rank 1 contributes the scores `other` (NaN where it scored nothing)."""
    scored = ~np.isnan(other)
    return SimpleNamespace(distributed=True, sum=lambda values: values + np.stack([np.where(scored, other, 0), scored]))


def test_combined_scores_hold_every_review_once_else_fail():
    mine = np.array([0.5, np.nan, -1.0, np.nan])
    combined = combine_scores(mine, fake_rank(np.array([np.nan, 2.0, np.nan, 0.0])), "dev")
    assert combined.tolist() == [0.5, 2.0, -1.0, 0.0]
    with pytest.raises(RuntimeError, match="1 reviews were not scored by exactly one rank"):
        combine_scores(mine, fake_rank(np.array([np.nan, 2.0, 3.0, 0.0])), "dev")  # review 2 scored twice
    with pytest.raises(RuntimeError, match="1 reviews"):
        combine_scores(mine, fake_rank(np.array([np.nan, 2.0, np.nan, np.nan])), "dev")  # review 3 never


def test_bf16_autocast_on_cpu_trains_with_finite_losses_and_fp16_is_refused_there(prepared: Path, tmp_path: Path,
                                                                                  capsys):
    run = tmp_path / "bf16"
    assert main(["train", "--data", str(prepared), "--out", str(run), "--set", "train.epochs=2", "--set",
                 "train.precision=bf16", "--device", "cpu", *TINY_TRAIN_ARGS]) == 0
    rows = metrics(run)
    assert all(np.isfinite(row[key]) for row in rows for key in ("loss_ranking", "loss_contrastive", "dev_map"))
    fp32 = tmp_path / "fp32"
    assert main(["train", "--data", str(prepared), "--out", str(fp32), "--set", "train.epochs=1", "--device", "cpu",
                 *TINY_TRAIN_ARGS]) == 0
    # autocast really ran in 16 bits: the first epoch's loss differs from fp32's, though only a little
    assert rows[0]["loss_ranking"] != metrics(fp32)[0]["loss_ranking"]
    assert rows[0]["loss_ranking"] == pytest.approx(metrics(fp32)[0]["loss_ranking"], rel=0.1)
    capsys.readouterr()
    assert main(["train", "--data", str(prepared), "--out", str(tmp_path / "fp16"), "--set", "train.precision=fp16",
                 "--device", "cpu", *TINY_TRAIN_ARGS]) == 2
    error = capsys.readouterr().err
    assert "mrhp train: error: train.precision = 'fp16' is for CUDA devices; use bf16 on the CPU" in error
    assert not (tmp_path / "fp16").exists()  # refused before the run folder is made


def test_cpu_bf16_probe_is_torchs_own():
    # On an AVX2-only CPU (no oneDNN bf16) the fallback is on; on an AVX-512 one it is off.
    assert devices.cpu_supports_bf16() == (not torch.backends.mkldnn.is_available()
                                           or torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert devices.lstm_in_float32(torch.device("cpu"), "bf16") == (not devices.cpu_supports_bf16())
    assert not devices.lstm_in_float32(torch.device("cpu"), "fp32")
    assert not devices.lstm_in_float32(torch.device("cuda"), "bf16")


def test_bf16_on_a_gpu_without_bf16_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(devices, "cuda_supports_bf16", lambda device: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Tesla T4")
    with pytest.raises(MrhpError, match=r"'bf16': the GPU cuda:0 \(Tesla T4\) has no bfloat16 support; use fp16"):
        devices.check_precision(torch.device("cuda", 0), "bf16")
    devices.check_precision(torch.device("cuda", 0), "fp16")
    devices.check_precision(torch.device("cpu"), "bf16")  # the CPU runs bf16 everywhere (LSTMs kept in fp32)


def test_run_lstm_keeps_lstms_in_float32_under_cpu_bf16_only_without_onednn_bf16(monkeypatch):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(4, 3, batch_first=True)
    x = torch.randn(2, 5, 4)
    reference, _ = lstm(x)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x.bfloat16(), torch.tensor([5, 2]), batch_first=True)
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = devices.run_lstm(lstm, x)
        packed_out, _ = devices.run_lstm(lstm, packed)  # bf16 inputs (an earlier layer's output) are widened
    assert out.dtype == torch.float32 and torch.equal(out, reference)  # the fp32 LSTM, bit for bit
    assert packed_out.data.dtype == torch.float32

    seen = []

    def recording(inputs):  # what the LSTM is called with, without running oneDNN's bf16 kernel
        seen.append((inputs, torch.is_autocast_enabled("cpu")))
        return inputs, None

    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        devices.run_lstm(recording, x)
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: False)
    devices.run_lstm(recording, x)  # no autocast: nothing to keep out of it
    assert [(inputs is x, autocast_on) for inputs, autocast_on in seen] == [(True, True), (True, False)]


@pytest.mark.parametrize("name", ["mrhp", "prh-net", "bimpm", "sse-cross", "dr-net"])
def test_models_with_lstms_train_in_bf16_on_a_cpu_without_onednn_bf16(monkeypatch, name: str):
    from support import FEATURES, ranking, tiny_model

    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: False)
    rng = np.random.default_rng(0)
    batch = collate([ranking(rng, 4) for _ in range(2)], max_tokens=32, max_regions=32, feature_dim=FEATURES)
    model = tiny_model(name=name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = model(batch).row_scores
    scores.float().sum().backward()
    assert scores.dtype == torch.bfloat16 and torch.isfinite(scores.float()).all()  # the rest stayed in bf16
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "serve"])
def test_cuda_without_cuda_is_a_clear_error(prepared: Path, tmp_path: Path, capsys, command: str):
    checkpoint = tmp_path / "none.safetensors"
    argv = {
        "train": ["train", "--data", str(prepared), "--out", str(tmp_path / "run"), *TINY_TRAIN_ARGS],
        "evaluate": ["evaluate", "--checkpoint", str(checkpoint), "--data", str(prepared)],
        "predict": ["predict", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "in.jsonl"),
                    "--output", str(tmp_path / "out.jsonl")],
        "serve": ["serve", "--checkpoint", str(checkpoint), "--port", "0"],
    }[command]
    if command != "train":
        assert main(["train", "--data", str(prepared), "--out", str(tmp_path / "run"), "--set", "train.epochs=1",
                     "--device", "cpu", *TINY_TRAIN_ARGS]) == 0
        (tmp_path / "run" / "best.safetensors").rename(checkpoint)
        (tmp_path / "in.jsonl").write_text(json.dumps({"text": "x", "reviews": [{"review_id": "a", "text": "y"}]}))
    capsys.readouterr()
    assert main([*argv, "--device", "cuda"]) == 2
    assert f"mrhp {command}: error: device 'cuda': CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


def test_loader_workers_assemble_the_same_batches(prepared: Path, tmp_path: Path):
    runs = {}
    for workers in (0, 2):
        run = tmp_path / f"workers{workers}"
        assert main(["train", "--data", str(prepared), "--out", str(run), "--set", "train.epochs=1", "--device", "cpu",
                     "--set", f"train.loader_workers={workers}", *TINY_TRAIN_ARGS]) == 0
        runs[workers] = load_checkpoint(run / "last.safetensors").model.state_dict()
        assert 0 <= metrics(run)[0]["data_wait_share"] < 1
    assert all(torch.equal(runs[0][name], runs[2][name]) for name in runs[0])
