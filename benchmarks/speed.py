"""Speed and memory of the paper's model at the paper's sizes (SPEC 9), on CPU.

Inputs: 128 text tokens for the product and every review, 128 image regions of 2048-d for the product and every
review, 32 product-review rows per step (4 products x 8 reviews: 1 positive and 7 negatives each, as the SPEC's
reference measurement), d = 128, D = 5, vocabulary 50,000 x 300-d. Each measurement runs in a fresh
subprocess so that its peak resident memory (ru_maxrss) is its own. Printed: training rows/s (forward, joint
loss, backward, Adam step), inference rows/s, peak memory, model GFLOP per row counted by
torch.utils.flop_counter, achieved GFLOP/s, and a 2048^3 fp32 matmul peak measured in the same run.

    python benchmarks/speed.py [--threads 2] [--steps 5] [--rows 32] [--reviews-per-product 8]

Allocator: glibc defaults unless MALLOC_* variables are set in the environment; they are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

REFERENCE = {"train_rows_per_s": 0.75, "infer_rows_per_s": "2.2-3.0", "peak_gb_at_32_rows": 15.7}
TARGET = {"train_rows_per_s": 10.0, "infer_rows_per_s": 30.0, "peak_gb_at_32_rows": 2.0}


def make_batch(products: int, reviews: int, tokens: int, regions: int, feature_dim: int, vocab: int):
    from mrhp.data.batching import Batch

    n = products * reviews
    generator = torch.Generator().manual_seed(0)
    labels = torch.zeros(products, reviews, dtype=torch.int64)
    labels[:, 0] = 3  # one helpful positive per list, the rest negatives
    return Batch(
        product_tokens=torch.randint(2, vocab, (products, tokens), generator=generator),
        product_token_mask=torch.ones(products, tokens, dtype=torch.bool),
        product_regions=torch.randn(products, regions, feature_dim, generator=generator),
        product_region_mask=torch.ones(products, regions, dtype=torch.bool),
        review_tokens=torch.randint(2, vocab, (n, tokens), generator=generator),
        review_token_mask=torch.ones(n, tokens, dtype=torch.bool),
        review_regions=torch.randn(n, regions, feature_dim, generator=generator),
        review_region_mask=torch.ones(n, regions, dtype=torch.bool),
        review_product=torch.arange(products).repeat_interleave(reviews),
        list_group=torch.arange(products),
        review_labels=labels.reshape(-1),
        list_rows=torch.arange(n).view(products, reviews),
        list_mask=torch.ones(products, reviews, dtype=torch.bool),
    )


def measure(mode: str, args: argparse.Namespace) -> dict[str, float]:
    """Run in a child process: time `args.steps` steps after one warm-up step."""
    from torch.utils.flop_counter import FlopCounterMode

    from mrhp.config import Config, ModelConfig
    from mrhp.models.paper import HelpfulnessModel
    from mrhp.training.loop import joint_loss

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model_config = ModelConfig(
        vocab_size=args.vocab, embedding_dim=300, image_dim=args.feature_dim,
        checkpoint_activations=not args.no_checkpointing,
    )
    config = Config(model=model_config)
    model = HelpfulnessModel(model_config)
    products = args.rows // args.reviews_per_product
    batch = make_batch(products, args.reviews_per_product, args.tokens, args.regions, args.feature_dim, args.vocab)
    rows = products * args.reviews_per_product
    if mode == "matmul":
        a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
        times = []
        for _ in range(args.steps + 1):
            started = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - started)
        return {"gflops": 2 * 2048**3 / statistics.median(times[1:]) / 1e9}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)  # as mrhp.training.loop does

    def step() -> None:
        if mode == "train":
            model.train()
            loss, _ = joint_loss(model(batch), batch, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        else:
            model.eval()
            with torch.no_grad():
                model(batch)

    times = []
    for _ in range(args.steps + 1):  # the first step warms up
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    seconds = statistics.median(times[1:])
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # before the FLOP counter's own step
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    return {
        "rows_per_s": rows / seconds,
        "seconds_per_step": seconds,
        "gflop_per_row": flops / rows / 1e9,
        "achieved_gflops": flops / seconds / 1e9,
        "peak_gb": peak_gb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--reviews-per-product", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--regions", type=int, default=128)
    parser.add_argument("--feature-dim", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=50_000)
    parser.add_argument("--no-checkpointing", action="store_true", help="keep every activation for backward")
    parser.add_argument("--child", choices=("train", "infer", "matmul"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args)))
        return
    allocator = {key: value for key, value in os.environ.items() if key.startswith("MALLOC_")} or "glibc defaults"
    print(f"torch {torch.__version__}, {args.threads} threads, allocator: {allocator}")
    print(f"activation checkpointing: {'off' if args.no_checkpointing else 'on'}")
    print(f"rows per step {args.rows} ({args.rows // args.reviews_per_product} products x {args.reviews_per_product} reviews), "
          f"{args.tokens} tokens, {args.regions} regions x {args.feature_dim}-d, median of {args.steps} steps")
    results = {}
    for mode in ("matmul", "train", "infer"):
        child = [sys.executable, __file__, "--child", mode] + [
            f"--{key.replace('_', '-')}={value}" for key, value in vars(args).items() if key not in ("child", "no_checkpointing")
        ] + (["--no-checkpointing"] if args.no_checkpointing else [])
        finished = subprocess.run(child, capture_output=True, text=True)
        if finished.returncode != 0:
            sys.exit(f"the {mode} measurement failed:\n{finished.stderr}")
        results[mode] = json.loads(finished.stdout.strip().splitlines()[-1])
    peak = results["matmul"]["gflops"]
    for mode in ("train", "infer"):
        r = results[mode]
        print(
            f"{mode:>5}: {r['rows_per_s']:7.2f} rows/s  ({r['seconds_per_step']:.3f} s/step)  "
            f"peak memory {r['peak_gb']:.2f} GB  {r['gflop_per_row']:.2f} GFLOP/row  "
            f"{r['achieved_gflops']:.1f} GFLOP/s = {100 * r['achieved_gflops'] / peak:.0f}% of matmul peak"
        )
    print(f"matmul peak (2048^3 fp32, same run): {peak:.1f} GFLOP/s")
    print(f"reference (SPEC 9): {REFERENCE}")
    print(f"targets: {TARGET}")
    ratio = results["train"]["rows_per_s"] / REFERENCE["train_rows_per_s"]
    print(f"training speed vs reference: {ratio:.1f}x")


if __name__ == "__main__":
    main()
