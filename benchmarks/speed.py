"""Speed and memory of the paper's model at the paper's sizes (SPEC 9), on CPU.

Inputs: 128 text tokens for the product and every review, 128 image regions of 2048-d for the product and every
review, 32 product-review rows per step (4 products x 8 reviews: 1 positive and 7 negatives each, as the SPEC's
reference measurement), d = 128, D = 5, vocabulary 50,000 x 300-d. Each measurement runs in a fresh
subprocess so that its peak resident memory (ru_maxrss) is its own. Printed: training rows/s (forward, joint
loss, backward, Adam step), inference rows/s, peak memory, model GFLOP per row counted by
torch.utils.flop_counter, achieved GFLOP/s, and a 2048^3 fp32 matmul peak measured in the same run.

    python benchmarks/speed.py [--threads 2] [--steps 5] [--rows 32] [--reviews-per-product 8] [--smoke]

Allocator: glibc defaults unless MALLOC_* variables are set in the environment; they are printed.
"""

from __future__ import annotations

import argparse
import sys

import torch
from _common import (
    add_smoke,
    allocator,
    median_seconds,
    peak_rss_gb,
    python,
    report_result,
    run_child,
    synthetic_batch,
)

REFERENCE = {"train_rows_per_s": 0.75, "infer_rows_per_s": "2.2-3.0", "peak_gb_at_32_rows": 15.7}
TARGET = {"train_rows_per_s": 10.0, "infer_rows_per_s": 30.0, "peak_gb_at_32_rows": 2.0}
SMOKE_SIZES = {"threads": 1, "steps": 1, "rows": 4, "reviews_per_product": 2, "tokens": 8, "regions": 4,
               "feature_dim": 16, "vocab": 50, "matmul": 64}


def measure(mode: str, args: argparse.Namespace) -> dict[str, float]:
    """Run in a child process: the median of `args.steps` steps after one warm-up step."""
    from torch.utils.flop_counter import FlopCounterMode

    from mrhp.config import Config, ModelConfig, ModelInputs
    from mrhp.models.registry import build_model
    from mrhp.training.loop import joint_loss

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if mode == "matmul":
        a, b = torch.randn(args.matmul, args.matmul), torch.randn(args.matmul, args.matmul)
        return {"gflops": 2 * args.matmul**3 / median_seconds(lambda: a @ b, args.steps) / 1e9}
    config = Config(model=ModelConfig(checkpoint_activations=not args.no_checkpointing))
    inputs = ModelInputs(vocab_size=args.vocab, image_dim=args.feature_dim, embedding_dim=300)
    model = build_model(config.model, inputs)
    products = args.rows // args.reviews_per_product
    batch = synthetic_batch(products, args.reviews_per_product, args.tokens, args.regions, args.feature_dim,
                            args.vocab)
    rows = products * args.reviews_per_product
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

    seconds = median_seconds(step, args.steps)
    peak_gb = peak_rss_gb()  # before the FLOP counter's own step
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
    parser.add_argument("--matmul", type=int, default=2048, help="side of the fp32 matmul that measures the peak")
    parser.add_argument("--no-checkpointing", action="store_true", help="keep every activation for backward")
    parser.add_argument("--child", choices=("train", "infer", "matmul"), help=argparse.SUPPRESS)
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args = argparse.Namespace(**{**vars(args), **SMOKE_SIZES})
    if args.child:
        report_result(measure(args.child, args))
        return
    print(f"torch {torch.__version__}, {args.threads} threads, allocator: {allocator()}")
    print(f"activation checkpointing: {'off' if args.no_checkpointing else 'on'}")
    print(f"rows per step {args.rows} ({args.rows // args.reviews_per_product} products x {args.reviews_per_product} reviews), "
          f"{args.tokens} tokens, {args.regions} regions x {args.feature_dim}-d, median of {args.steps} steps")
    results = {}
    flags = {"child", "no_checkpointing", "smoke"}
    for mode in ("matmul", "train", "infer"):
        child = python(__file__, "--child", mode, *(f"--{key.replace('_', '-')}={value}"
                                                    for key, value in vars(args).items() if key not in flags),
                       *(["--no-checkpointing"] if args.no_checkpointing else []))
        try:
            results[mode] = run_child(child)
        except RuntimeError as error:
            sys.exit(f"the {mode} measurement failed: {error}")
    peak = results["matmul"]["gflops"]
    for mode in ("train", "infer"):
        r = results[mode]
        print(
            f"{mode:>5}: {r['rows_per_s']:7.2f} rows/s  ({r['seconds_per_step']:.3f} s/step)  "
            f"peak memory {r['peak_gb']:.2f} GB  {r['gflop_per_row']:.2f} GFLOP/row  "
            f"{r['achieved_gflops']:.1f} GFLOP/s = {100 * r['achieved_gflops'] / peak:.0f}% of matmul peak"
        )
    print(f"matmul peak ({args.matmul}^3 fp32, same run): {peak:.1f} GFLOP/s")
    print(f"reference (SPEC 9): {REFERENCE}")
    print(f"targets: {TARGET}")
    ratio = results["train"]["rows_per_s"] / REFERENCE["train_rows_per_s"]
    print(f"training speed vs reference: {ratio:.1f}x")


if __name__ == "__main__":
    main()
