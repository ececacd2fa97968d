# Two front-door targets: `make demo` (the main job) and `make test`; `make docs` serves the documentation site.
# Each creates or reuses .venv, installs torch==2.13.0 first (so no dependency can pull another torch build), then
# the project.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e '.[test,glove,images,fetch,serve,floors,text,docs]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mrhp demo --out demo-run

test: $(STAMP)
	$(BIN)/python -m pytest

# The site on http://127.0.0.1:8000/ (loopback only), rebuilt on every change to docs/, README.md or src/.
docs: $(STAMP)
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

bench: $(STAMP)
	$(BIN)/python benchmarks/speed.py

clean:
	rm -rf $(VENV) demo-run site
