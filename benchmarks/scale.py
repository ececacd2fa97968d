"""Training at the paper's scale: a prepared dataset of Amazon-MRHP Home's size, trained through the project's own
path (mrhp.data.loader batches from the memory-mapped store, mrhp.training.loop.train_epoch, mrhp.compute.distributed).

The dataset (written once into --out, reused while its sizes match) has 18,000 training products and 462,000
training reviews, 128 tokens per text from a 50,000-word vocabulary, 128 image regions of 2048-d per product and
review, helpfulness labels 0..4 (plus a small dev split, which the format needs and nothing here times). Storing
128 x 2048 regions for 480K items would take about 250 GB, so the feature store holds a pool of --pool distinct
items (float16; 256 items = 134 MB) and every product and review points at a random one of them: each batch
reads and pads 128 x 2048 regions per item from the memory map, as with the real store, but the reads hit the
page cache.

Measured, each in fresh processes (peak memory is each process's own ru_maxrss):

* cpu-1proc: one process with --threads threads (default 2);
* cpu-ddp: `torchrun --nproc-per-node 2` with gloo, one thread per process, per-rank batch 32 rows (global 64);
  its rows/s as a ratio of cpu-1proc's, measured in the same run;
* with CUDA only: 1 GPU fp32 and bf16, and all GPUs with torchrun (NCCL, bf16) when there are several.

Every configuration trains --warmup steps, then times --steps steps of the first epoch's order: rows/s counts the
review rows of the timed steps (all ranks), the epoch time is 462,000 rows at that rate (EXTRAPOLATED from the
timed steps, and labelled so), the data-wait share is the time spent waiting for the next batch (and copying it
to the device) over the timed time. A profile of one single-process step counts its FLOPs
(torch.utils.flop_counter), the bytes every aten operator reads and writes (an upper bound of eager memory
traffic: no fusion, no cache) and the operators, and times the collation of a batch; from these it prints a
PROJECTION for one H200 from its data-sheet peaks, marked as such. --compile also times the same steps with
torch.compile in one process.

    python benchmarks/scale.py [--out DIR] [--steps 8] [--warmup 2] [--threads 2] [--workers 0] [--compile] [--smoke]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import add_smoke, peak_rss_gb, python, report_result
from _common import run_child as run_command

SIZES = {"products": 18_000, "reviews": 462_000, "tokens": 128, "regions": 128, "feature_dim": 2048,
         "vocab": 50_000, "dev_products": 200}
# H200 SXM data sheet: dense tensor-core peaks (no sparsity), plain fp32 and HBM3e bandwidth.
H200 = {"bf16_tflops": 989.0, "tf32_tflops": 494.0, "fp32_tflops": 67.0, "hbm_tb_per_s": 4.8}
LAUNCH_US = 6.0  # assumed host cost of one eager operator on a GPU (dispatch + kernel launch), not measured here
TARGET_ROWS_PER_S = 7_700  # the goal: a Home epoch in 60 s on one H100/H200-class GPU


# ---- the dataset -----------------------------------------------------------------------------------------------


def build_dataset(path: Path, pool: int) -> None:
    """Write the prepared dataset (format of mrhp.data.prepared) unless one of the same sizes is there."""
    from mrhp.data.prepared import PREPARED_FORMAT, PREPARED_VERSION
    from mrhp.data.side import STORED_SIDE_FEATURES
    from mrhp.data.store import FeatureStoreWriter

    wanted = {**SIZES, "pool": pool}
    marker = path / "scale.json"
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    with FeatureStoreWriter(path / "features", SIZES["feature_dim"], "float16") as store:
        for _ in range(pool):
            store.add(rng.standard_normal((SIZES["regions"], SIZES["feature_dim"]), dtype=np.float32))
    vocab = ["<pad>", "<unk>", *(f"w{i}" for i in range(2, SIZES["vocab"]))]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    counts = {}
    for split, products, reviews in (("train", SIZES["products"], SIZES["reviews"]),
                                     ("dev", SIZES["dev_products"], SIZES["dev_products"] * 25)):
        folder = path / split
        folder.mkdir()
        per_product = np.full(products, reviews // products)
        per_product[rng.choice(products, reviews % products, replace=False)] += 1
        sizes = {"product": products, "review": reviews}
        for kind, count in sizes.items():
            (folder / f"{kind}_ids.json").write_text(json.dumps([f"{split}-{kind}-{i}" for i in range(count)]))
            np.save(folder / f"{kind}_tokens.npy", rng.integers(2, SIZES["vocab"], count * SIZES["tokens"],
                                                                dtype=np.int32))
            np.save(folder / f"{kind}_token_offsets.npy", np.arange(count + 1, dtype=np.int64) * SIZES["tokens"])
            np.save(folder / f"{kind}_image.npy", rng.integers(0, pool, count, dtype=np.int64))
            (folder / f"{kind}_unk_words.txt").write_text("", encoding="utf-8")  # every word is in the vocabulary
            np.save(folder / f"{kind}_unk_offsets.npy", np.zeros(count + 1, dtype=np.int64))
        np.save(folder / "review_product.npy", np.repeat(np.arange(products, dtype=np.int64), per_product))
        np.save(folder / "labels.npy", rng.integers(0, 5, reviews, dtype=np.int64))
        np.save(folder / "review_rating.npy", rng.integers(1, 6, reviews).astype(np.float32))
        counts[split] = sizes
    meta = {"format": PREPARED_FORMAT, "version": PREPARED_VERSION, "source": {"generator": "benchmarks/scale.py"},
            "relevance_threshold": 1, "feature_dim": SIZES["feature_dim"], "splits": ["train", "dev"],
            "counts": counts, "side_features": list(STORED_SIDE_FEATURES)}  # no side-feature files: unknown
    (path / "dataset.json").write_text(json.dumps(meta, indent=1) + "\n")
    marker.write_text(json.dumps(wanted))
    print(f"dataset written to {path} in {time.perf_counter() - started:.0f} s")


# ---- one measurement (a child process, or every rank of a torchrun) -------------------------------------------


def measure(args: argparse.Namespace) -> None:
    from mrhp.compute import distributed
    from mrhp.compute.devices import grad_scaler
    from mrhp.config import Config, TrainConfig
    from mrhp.data.batching import mixed_training_batches
    from mrhp.data.loader import PlannedBatches, batch_loader
    from mrhp.data.prepared import PreparedDataset
    from mrhp.models.registry import build_model
    from mrhp.progress import progress_bar
    from mrhp.training.loop import model_inputs, train_epoch

    torch.set_num_threads(args.threads)
    dataset = PreparedDataset.open(args.out)
    config = Config(train=TrainConfig(device=args.device, precision=args.precision, loader_workers=args.workers))
    inputs = model_inputs(config, dataset)
    with distributed.session(args.device) as runtime:
        device = runtime.device
        torch.manual_seed(0)
        model = build_model(config.model, inputs).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr, fused=True)
        scaler = grad_scaler(device, config.train.precision)
        net = distributed.wrap(model, runtime)
        if args.compile:
            net = torch.compile(net)
        data = config.data
        plan = distributed.shard_steps(mixed_training_batches([dataset.split("train")], "products", data.batch_rows,
                                                              data.max_list_size, seed=0, epoch=1),
                                       runtime)[:args.warmup + args.steps]
        rows = sum(len(reviews) for groups in plan[args.warmup:] for _, _, reviews in groups)
        batches = PlannedBatches([dataset], "train", plan, max_tokens=data.max_tokens, max_regions=data.max_regions)
        stream = iter(batch_loader(batches, workers=args.workers, pin_memory=device.type == "cuda"))
        bar = progress_bar(show=False)
        train_epoch(net, optimizer, scaler, itertools.islice(stream, args.warmup), config, device, bar)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        runtime.barrier()
        started = time.perf_counter()
        _, steps, waited = train_epoch(net, optimizer, scaler, itertools.islice(stream, args.steps), config, device,
                                       bar)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        peak_gb = peak_rss_gb()
        gpu_gb = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else 0.0
        # Per-rank figures, each in its own slot, summed over the ranks.
        slots = np.zeros((5, runtime.world_size))
        slots[:, runtime.rank] = (rows, seconds, waited, peak_gb, gpu_gb)
        slots = runtime.sum(slots)
        if runtime.main:
            report_result({
                "ranks": runtime.world_size, "steps": steps, "rows": float(slots[0].sum()),
                "seconds": float(slots[1].max()), "wait_share": float((slots[2] / slots[1]).mean()),
                "peak_gb": slots[3].tolist(), "gpu_gb": slots[4].tolist(),
            })


def profile(args: argparse.Namespace) -> None:
    """FLOPs, operator bytes and operators of one training step (single process), and collation time."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves
    from torch.utils.flop_counter import FlopCounterMode

    from mrhp.config import Config
    from mrhp.data.batching import mixed_training_batches
    from mrhp.data.loader import PlannedBatches
    from mrhp.data.prepared import PreparedDataset
    from mrhp.models.registry import build_model
    from mrhp.training.loop import joint_loss, model_inputs

    class Traffic(TorchDispatchMode):
        """Bytes of the tensors every aten operator reads and writes; views move nothing and are skipped."""

        def __init__(self) -> None:
            super().__init__()
            self.bytes, self.operators = 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            if func._schema.is_mutable or not any(
                    o.untyped_storage().data_ptr() == i.untyped_storage().data_ptr() for o in outputs for i in inputs):
                self.bytes += sum(t.numel() * t.element_size() for t in inputs + outputs)
                self.operators += 1
            return out

    torch.set_num_threads(args.threads)
    dataset = PreparedDataset.open(args.out)
    config = Config()
    data = config.data
    plan = mixed_training_batches([dataset.split("train")], "products", data.batch_rows, data.max_list_size,
                                  seed=0, epoch=1)[:12]
    batches = PlannedBatches([dataset], "train", plan, max_tokens=data.max_tokens, max_regions=data.max_regions)
    started = time.perf_counter()
    inputs = [batches[i] for i in range(len(plan))]
    collate_ms = (time.perf_counter() - started) / len(plan) * 1e3
    torch.manual_seed(0)
    model = build_model(config.model, model_inputs(config, dataset))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr, fused=True)

    def step(batch) -> None:
        loss, _ = joint_loss(model(batch), batch, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    step(inputs[0])
    with FlopCounterMode(display=False) as flops:
        step(inputs[1])
    traffic = Traffic()
    with traffic:
        step(inputs[2])
    report_result({"flops": flops.get_total_flops(), "bytes": traffic.bytes,
                   "operators": traffic.operators, "rows": int(inputs[1].review_labels.numel()),
                   "rows_traffic": int(inputs[2].review_labels.numel()), "collate_ms": collate_ms,
                   "collate_rows": float(np.mean([b.review_labels.numel() for b in inputs]))})


# ---- the parent ------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_child(args: argparse.Namespace, mode: str, *, processes: int = 1, threads: int, device: str = "cpu",
              precision: str = "fp32", compile: bool = False) -> dict:
    """The RESULT of one measurement in fresh processes; RuntimeError when it fails or runs past --timeout."""
    options = ["--child", mode, "--out", str(args.out), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--threads", str(threads), "--workers", str(args.workers), "--device", device, "--precision",
               precision, *(["--compile"] if compile else [])]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node",
                   str(processes), "--master-addr", "127.0.0.1", "--master-port", str(free_port()), __file__, *options]
    else:
        command = python(__file__, *options)
    return run_command(command, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, timeout=args.timeout)


def report(name: str, result: dict) -> float:
    rows_per_s = result["rows"] / result["seconds"]
    gpu = f", GPU peak {max(result['gpu_gb']):.1f} GB" if max(result["gpu_gb"]) else ""
    print(f"{name:<34} {rows_per_s:8.1f} rows/s  epoch {SIZES['reviews'] / rows_per_s / 3600:7.2f} h "
          f"(extrapolated from {result['steps']} timed steps x {result['ranks']} ranks, {result['rows']:.0f} rows)  "
          f"data wait {100 * result['wait_share']:4.1f}%  "
          f"peak RSS {' + '.join(f'{g:.2f}' for g in result['peak_gb'])} GB"
          f"{gpu}")
    return rows_per_s


def project(profile_result: dict, threads: int) -> None:
    """The H200 projection: a lower bound on step time from FLOPs, bytes and operators, each at the data-sheet
    peak; every figure printed here is a PROJECTION, not a measurement."""
    rows, flops, traffic = profile_result["rows"], profile_result["flops"], profile_result["bytes"]
    traffic_per_row = traffic / profile_result["rows_traffic"]
    operators = profile_result["operators"]
    print(f"profile of one step (measured, 1 process): {flops / rows / 1e9:.2f} GFLOP/row, "
          f"{traffic_per_row / 1e6:.0f} MB/row of operator reads and writes (eager, unfused), {operators} aten "
          f"operators per step ({profile_result['rows_traffic']} rows); collating one batch "
          f"({profile_result['collate_rows']:.0f} rows) takes {profile_result['collate_ms']:.0f} ms on 1 core "
          f"({threads} threads for the model)")
    print("PROJECTION for one H200 (not measured: data-sheet peaks, no GPU in this run). A lower bound on step time:"
          " the largest of FLOPs at peak, operator bytes at full HBM bandwidth (bf16: half the fp32 bytes) and "
          f"{LAUNCH_US:.0f} us per eager operator; the operators per step do not grow with the batch, FLOPs and bytes "
          "grow with its rows")
    measured_rows = profile_result["rows_traffic"]
    for step_rows in (measured_rows, 256):
        for precision, tflops, byte_factor in (("fp32 (TF32 matmuls)", H200["tf32_tflops"], 1.0),
                                               ("bf16 autocast", H200["bf16_tflops"], 0.5)):
            compute = flops / rows / (tflops * 1e12)
            memory = byte_factor * traffic_per_row / (H200["hbm_tb_per_s"] * 1e12)
            launch = operators * LAUNCH_US * 1e-6 / step_rows
            bound = max(compute, memory, launch)
            print(f"  {step_rows:3d} rows/step, {precision:<20} per row: compute {compute * 1e6:5.1f} us, memory "
                  f"{memory * 1e6:5.1f} us, launches {launch * 1e6:5.1f} us -> at most {1 / bound:6.0f} rows/s, "
                  f"epoch >= {SIZES['reviews'] * bound:4.0f} s")
    workers = TARGET_ROWS_PER_S / (profile_result["collate_rows"] / (profile_result["collate_ms"] / 1e3))
    print(f"  data path: {TARGET_ROWS_PER_S} rows/s needs about {workers:.0f} loader workers at this machine's "
          "collation speed per core")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "mrhp-scale",
                        help="where the generated dataset is written (about 0.6 GB) and reused")
    parser.add_argument("--pool", type=int, default=256, help="distinct region sets in the feature store")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per configuration (per rank)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="threads of the one-process CPU run")
    parser.add_argument("--workers", type=int, default=0, help="train.loader_workers")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (one process, CPU)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per measurement")
    parser.add_argument("--child", choices=("measure", "profile"), help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:  # a toy dataset in a fresh folder, one timed step, one process
        SIZES.update(products=16, reviews=128, tokens=8, regions=4, feature_dim=16, vocab=50, dev_products=4)
        args.pool, args.steps, args.warmup = 4, 1, 1
        args.out = Path(tempfile.mkdtemp(prefix="mrhp-scale-smoke-"))
    if args.child == "measure":
        measure(args)
        return
    if args.child == "profile":
        profile(args)
        return
    sys.stdout.reconfigure(line_buffering=True)  # each figure as soon as it is measured, also into a file
    build_dataset(args.out, args.pool)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, dataset {SIZES['products']} products / "
          f"{SIZES['reviews']} reviews (train), {SIZES['tokens']} tokens, {SIZES['regions']} regions x "
          f"{SIZES['feature_dim']}-d per item from a pool of {args.pool}; per-rank batch 32 rows; "
          f"loader workers {args.workers}")
    one = report(f"cpu 1 process, {args.threads} threads", run_child(args, "measure", threads=args.threads))
    if not args.smoke:
        ddp = report("cpu DDP 2 processes (gloo), 1 thread", run_child(args, "measure", processes=2, threads=1))
        print(f"DDP scaling: 2 gloo processes give {ddp / one:.2f}x the rows/s of 1 process with {args.threads} "
              "threads (target >= 0.8)")
    if torch.cuda.is_available():
        for precision in ("fp32", "bf16"):
            report(f"1 GPU {precision}", run_child(args, "measure", threads=args.threads, device="cuda",
                                                   precision=precision))
        if torch.cuda.device_count() > 1:
            count = torch.cuda.device_count()
            report(f"{count} GPUs bf16 (NCCL)", run_child(args, "measure", processes=count, threads=args.threads,
                                                        device="cuda", precision="bf16"))
    else:
        print("no CUDA here: the GPU configurations were not run")
    project(run_child(args, "profile", threads=args.threads), args.threads)
    if args.compile:
        try:
            compiled = report(f"cpu 1 process, {args.threads} threads, compiled",
                              run_child(args, "measure", threads=args.threads, compile=True))
        except RuntimeError as error:
            print(f"torch.compile: no figure ({error})")
        else:
            print(f"torch.compile: {compiled / one:.2f}x the eager rows/s (compilation in the warm-up steps, not "
                  "timed)")


if __name__ == "__main__":
    main()
