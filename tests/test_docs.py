"""The documentation site builds with `mkdocs build --strict`: a broken link or anchor, a page missing from the
navigation or a page it names that does not exist, and an API reference (`::: mrhp...`) to a renamed function all
fail the build, and so this test. Skipped without the `docs` extra."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is absent
        return False


needs_docs_extra = pytest.mark.skipif(
    not all(installed(name) for name in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")),
    reason="the docs extra (mkdocs, mkdocs-material, mkdocstrings[python]) is not installed",
)


def build(root: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's notice about its successor, not a warning
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=root,
                          env=env, capture_output=True, text=True, timeout=300)


def copy_of_the_site_sources(tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in ("mkdocs.yml", "README.md"):
        shutil.copy(ROOT / name, copy / name)
    for name in ("docs", "src"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__", "incoming"))
    return copy


@needs_docs_extra
def test_the_site_builds_strictly(tmp_path):
    result = build(ROOT, tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    home = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "make demo" in home and 'href="data-formats/"' in home  # README.md is the home page, its links rewritten
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "score_groups" in api and "load_ranker" in api  # rendered from the docstrings
    assert not (tmp_path / "site" / "incoming").exists()


# Each breaks one thing; strict mode reports every warning of a build before it aborts, so one build checks these.
BREAKAGES = [
    ("docs/serving.md", "](explanations.md)", "](explained.md)", "explained.md"),
    ("docs/benchmarks.md", "(evaluation.md#the-papers-comparison-measured)", "(evaluation.md#no-such-heading)",
     "no-such-heading"),
    ("README.md", "](docs/real-data.md)", "](docs/real_data.md)", "real_data.md"),
]


def break_in(copy: Path, page: str, old: str, new: str) -> None:
    text = (copy / page).read_text(encoding="utf-8")
    assert old in text
    (copy / page).write_text(text.replace(old, new, 1), encoding="utf-8")


@needs_docs_extra
def test_a_broken_link_or_anchor_or_a_page_left_out_of_the_navigation_fails_the_build(tmp_path):
    copy = copy_of_the_site_sources(tmp_path)
    for page, old, new, _ in BREAKAGES:
        break_in(copy, page, old, new)
    (copy / "docs" / "orphan.md").write_text("# Orphan\n", encoding="utf-8")
    result = build(copy, tmp_path / "site")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    for *_, complaint in BREAKAGES:
        assert complaint in output
    assert "orphan.md" in output


@needs_docs_extra
def test_an_api_reference_to_a_renamed_function_fails_the_build(tmp_path):
    copy = copy_of_the_site_sources(tmp_path)
    break_in(copy, "docs/api.md", "::: mrhp.scoring.loop.score_groups", "::: mrhp.inference.score_groups")
    result = build(copy, tmp_path / "site")
    assert result.returncode != 0
    assert "mrhp.inference" in result.stdout + result.stderr


def test_the_readme_is_short_and_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200
    assert lines[2].split()[:2] == ["make", "demo"] and lines[3].split()[:2] == ["make", "test"]
