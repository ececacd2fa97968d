"""Cost of every model of the registry on the same inputs, at the paper's sizes (SPEC 9), on CPU.

Inputs (`synthetic_batch` of benchmarks/_common.py, as in benchmarks/speed.py): 32 product-review rows per step
(4 products x 8 reviews), 128 text tokens for the product and every review, 128 image regions of 2048-d for each,
d = 128, vocabulary 50,000 x 300-d, every other setting at its default. For each model: parameters, training step time (forward, loss,
backward, Adam step; the paper's model with its contrastive term, the baselines with the hinge loss alone),
inference time per review, and peak resident memory (ru_maxrss) after inference and after training, each model
in a fresh subprocess. Then the growth of MCR next to the paper's model when texts and images grow together
(`--lengths`, default 32/64/128/256 tokens and regions): training step time and peak memory.

    python benchmarks/models.py [--threads 2] [--steps 3] [--models mrhp mcr ...] [--lengths 32 64 128 256] [--smoke]

Allocator: glibc defaults unless MALLOC_* variables are set in the environment; they are printed. The machine
may be shared: the load average at the start is printed with the figures.
"""

from __future__ import annotations

import argparse
import os

import _common
import torch
from _common import (
    add_smoke,
    allocator,
    median_seconds,
    peak_rss_gb,
    python,
    report_result,
    synthetic_batch,
)

SMOKE_SIZES = {"threads": 1, "steps": 1, "rows": 4, "reviews_per_product": 2, "tokens": 8, "regions": 4,
               "feature_dim": 16, "vocab": 50, "models": ["mrhp", "mcr"], "lengths": [8]}


def measure(name: str, tokens: int, regions: int, args: argparse.Namespace) -> dict[str, float]:
    """In a child process: `args.steps` timed steps after one warm-up step, inference first, then training."""
    from mrhp.config import Config, ModelConfig, ModelInputs
    from mrhp.models.registry import build_model
    from mrhp.training.loop import joint_loss

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model_config = ModelConfig(name=name)
    config = Config(model=model_config)
    model = build_model(model_config, ModelInputs(vocab_size=args.vocab, image_dim=args.feature_dim, embedding_dim=300))
    products = args.rows // args.reviews_per_product
    batch = synthetic_batch(products, args.reviews_per_product, tokens, regions, args.feature_dim, args.vocab)
    rows = products * args.reviews_per_product
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)  # as mrhp.training.loop does

    def infer() -> None:
        model.eval()
        with torch.no_grad():
            model(batch)

    def train() -> None:
        model.train()
        loss, _ = joint_loss(model(batch), batch, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    infer_seconds = median_seconds(infer, args.steps)
    infer_peak = peak_rss_gb()
    train_seconds = median_seconds(train, args.steps)
    train_peak = peak_rss_gb()
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds_per_step": train_seconds,
        "train_ms_per_review": 1000 * train_seconds / rows,
        "infer_ms_per_review": 1000 * infer_seconds / rows,
        "infer_peak_gb": infer_peak,
        "train_peak_gb": train_peak,
    }


def measured(name: str, tokens: int, regions: int, args: argparse.Namespace) -> dict[str, float] | str:
    """One measurement in a fresh interpreter, so its peak memory is its own; returns the error text on failure."""
    command = python(
        __file__, "--child", name, "--child-tokens", str(tokens), "--child-regions", str(regions),
        "--threads", str(args.threads), "--steps", str(args.steps), "--rows", str(args.rows),
        "--reviews-per-product", str(args.reviews_per_product), "--feature-dim", str(args.feature_dim),
        "--vocab", str(args.vocab),
    )
    try:
        return _common.run_child(command)
    except RuntimeError as error:
        return str(error).strip().splitlines()[-1]


def main() -> None:
    from mrhp.config import MODEL_NAMES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--reviews-per-product", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--regions", type=int, default=128)
    parser.add_argument("--feature-dim", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=50_000)
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    parser.add_argument("--lengths", type=int, nargs="*", default=[32, 64, 128, 256],
                        help="tokens = regions for the growth table of MCR and the paper's model (none: skip it)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-tokens", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-regions", type=int, help=argparse.SUPPRESS)
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args = argparse.Namespace(**{**vars(args), **SMOKE_SIZES})
    if args.child:
        report_result(measure(args.child, args.child_tokens, args.child_regions, args))
        return

    print(f"torch {torch.__version__}, {args.threads} threads, allocator: {allocator()}, "
          f"load average at start {os.getloadavg()[0]:.1f}")
    print(f"{args.rows} rows per step ({args.rows // args.reviews_per_product} products x {args.reviews_per_product} "
          f"reviews), {args.tokens} tokens, {args.regions} regions x {args.feature_dim}-d, "
          f"median of {args.steps} steps")
    header = (f"{'model':<10}{'params':>10}{'train s/step':>14}{'train ms/rev':>14}{'infer ms/rev':>14}"
              f"{'peak GB infer':>15}{'peak GB train':>15}")
    print(header)
    print("-" * len(header))
    for name in args.models:
        result = measured(name, args.tokens, args.regions, args)
        if isinstance(result, str):
            print(f"{name:<10} failed: {result}")
            continue
        print(f"{name:<10}{result['parameters'] / 1e6:>9.2f}M{result['train_seconds_per_step']:>14.2f}"
              f"{result['train_ms_per_review']:>14.1f}{result['infer_ms_per_review']:>14.1f}"
              f"{result['infer_peak_gb']:>15.2f}{result['train_peak_gb']:>15.2f}", flush=True)

    if not args.lengths:
        return
    print()
    print("Growth with sequence length (tokens = regions for product and reviews): training s/step, peak GB")
    growth_header = f"{'length':>7}" + "".join(f"{name + ' s/step':>16}{name + ' GB':>12}" for name in ("mrhp", "mcr"))
    print(growth_header)
    print("-" * len(growth_header))
    for length in args.lengths:
        cells = []
        for name in ("mrhp", "mcr"):
            result = measured(name, length, length, args)
            if isinstance(result, str):
                cells.append(f"{'failed':>16}{'':>12}")
            else:
                cells.append(f"{result['train_seconds_per_step']:>16.2f}{result['train_peak_gb']:>12.2f}")
        print(f"{length:>7}" + "".join(cells), flush=True)


if __name__ == "__main__":
    main()
