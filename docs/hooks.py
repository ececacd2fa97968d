"""MkDocs hook: the site's home page is README.md, its links into docs/ made relative to the site, so the front
page has one source."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files


def on_files(files: Files, config) -> Files:
    readme = Path(config.config_file_path).parent / "README.md"
    files.append(File.generated(config, "index.md", content=readme.read_text(encoding="utf-8").replace("](docs/", "](")))
    return files
