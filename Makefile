# Two front-door targets: `make demo` (the main job) and `make test`. Both create or reuse .venv,
# install torch==2.13.0 first (so no dependency can pull another torch build), then the project.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e '.[test,glove,images,fetch,serve,floors,text]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mrhp demo --out demo-run

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/speed.py

clean:
	rm -rf $(VENV) demo-run
