"""Throughput and peak memory of the image feature extractor (mrhp.features.images, EfficientNet-Lite0) on CPU.

Generates ``--images`` photo-like JPEGs (``--width`` x ``--height``: gradients, blocks and noise, quality 90) in a
temporary folder, then for each batch size, in a fresh subprocess so that its peak resident memory (ru_maxrss) is
its own, measures after one warm-up batch:

* end to end: ``ImageFeatureExtractor.extract_files`` (read, decode, EXIF, resize in ``--threads`` threads while
  the network runs on the previous batch), images per second;
* decode only: :func:`mrhp.features.images.load_image` on one thread, images per second;
* network only: ``ImageFeatureExtractor.forward`` on decoded pixels, images per second;
* peak resident memory of the subprocess.

    python benchmarks/image_features.py [--threads 2] [--images 64] [--batch-sizes 1 4 16 32] [--input-size 224]
        [--smoke]

Needs the ``images`` extra (``pip install 'mrhp[images]'``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import add_smoke, allocator, peak_rss_gb, python, report_result, run_child

from mrhp.features.images import DEFAULT_INPUT_SIZE


def make_images(folder: Path, count: int, width: int, height: int, seed: int = 0) -> list[Path]:
    """``count`` photo-like JPEGs: a colour gradient, a few solid blocks and pixel noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    ys, xs = np.mgrid[0:height, 0:width]
    for k in range(count):
        pixels = np.empty((height, width, 3), dtype=np.float64)
        for c in range(3):
            a, b = rng.uniform(-1, 1, size=2)
            pixels[..., c] = 128 + 100 * np.sin(a * xs / 50 + b * ys / 50 + k)
        for _ in range(4):
            x0, y0 = rng.integers(0, width - 40), rng.integers(0, height - 40)
            h, w = rng.integers(20, height // 2), rng.integers(20, width // 2)
            pixels[y0: y0 + h, x0: x0 + w] = rng.uniform(0, 255, 3)
        pixels += rng.normal(0, 12, pixels.shape)
        path = folder / f"image-{k:04d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB").save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def measure(args: argparse.Namespace) -> dict:
    """Run in a child process for one batch size."""
    from mrhp.features.images import ImageFeatureExtractor, load_image

    paths = sorted(Path(args.folder).glob("*.jpg"))
    extractor = ImageFeatureExtractor(input_size=args.input_size, threads=args.threads, batch_size=args.batch_size)
    extractor.extract_files(paths[: args.batch_size])  # warm-up: first-call allocations and kernel choices

    start = time.perf_counter()
    results = extractor.extract_files(paths)
    end_to_end = len(paths) / (time.perf_counter() - start)
    assert all(r.ok for r in results)

    start = time.perf_counter()
    pixels = np.stack([load_image(p.read_bytes(), args.input_size) for p in paths])
    decode = len(paths) / (time.perf_counter() - start)

    start = time.perf_counter()
    for first in range(0, len(paths), args.batch_size):
        extractor.forward(pixels[first: first + args.batch_size])
    network = len(paths) / (time.perf_counter() - start)
    return {
        "batch_size": args.batch_size,
        "threads": args.threads,
        "images": len(paths),
        "end_to_end_images_per_s": round(end_to_end, 2),
        "decode_images_per_s_1_thread": round(decode, 2),
        "network_images_per_s": round(network, 2),
        "peak_rss_mb": round(peak_rss_gb() * 1e3, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--width", type=int, default=800)
    parser.add_argument("--height", type=int, default=600)
    parser.add_argument("--input-size", type=int, default=DEFAULT_INPUT_SIZE)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    add_smoke(parser)
    args = parser.parse_args()
    if args.batch_size is not None:
        report_result(measure(args))
        return
    if args.smoke:
        from mrhp.features.images import images_available

        if not images_available():
            print("--smoke: the images extra is not installed; nothing to measure")
            return
        args = argparse.Namespace(**{**vars(args), "threads": 1, "images": 2, "width": 64, "height": 64,
                                     "input_size": 64, "batch_sizes": [2]})

    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs visible, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; allocator: {allocator()}")
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        make_images(Path(folder), args.images, args.width, args.height)
        size = sum(p.stat().st_size for p in Path(folder).glob("*.jpg")) / args.images / 1024
        print(f"{args.images} JPEGs of {args.width}x{args.height} (mean {size:.0f} KiB) generated in "
              f"{time.perf_counter() - start:.1f} s; input {args.input_size} px, {args.threads} threads")
        print(f"{'batch':>5}  {'end-to-end img/s':>16}  {'network img/s':>13}  {'decode img/s (1 thread)':>23}  "
              f"{'peak RSS MB':>11}")
        for batch_size in args.batch_sizes:
            row = run_child(python(__file__, "--folder", folder, "--batch-size", str(batch_size),
                                   "--threads", str(args.threads), "--input-size", str(args.input_size)))
            print(f"{batch_size:>5}  {row['end_to_end_images_per_s']:>16}  {row['network_images_per_s']:>13}  "
                  f"{row['decode_images_per_s_1_thread']:>23}  {row['peak_rss_mb']:>11}")
            print(row, file=sys.stderr)


if __name__ == "__main__":
    main()
