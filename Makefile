# Each target creates (or reuses) the virtual environment in .venv, installs the project, then does its job.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; on a CUDA machine use e.g. `make test TORCH=torch`.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test test-gpu train lint readme outputs docs-check sync clean

$(STAMP): settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name python3 >/dev/null 2>&1 || true
	touch $(STAMP)

install: $(STAMP)

# The whole default suite: library in step with the notebooks, notebooks clean, README in step, notebooks run,
# nbdev's docs processing (what `nbdev_docs` runs before Quarto), pytest (including the committed-outputs checks).
test: install
	VENV=$(VENV) bash tools/check_sync.sh
	$(BIN)/python tools/readme.py --check
	$(BIN)/nbdev_test --n_workers 2 --timing
	$(BIN)/python tools/proc_docs.py --n_workers 2
	$(BIN)/python -m pytest -q tests

# Execute the notebooks as nbdev_test does (gpu/slow/notest cells skipped) and save their outputs, then nbdev_clean.
# A subset: `make outputs NBS="nbs/12_adversarial.ipynb nbs/10_optim.ipynb"`; several at once: JOBS=2.
NBS ?=
JOBS ?= 1
outputs: install
	$(BIN)/python tools/run_notebooks.py --jobs $(JOBS) $(NBS)

# nbdev's docs processing alone (no Quarto needed), into a temporary folder.
docs-check: install
	$(BIN)/python tools/proc_docs.py $(NBS)

# Full-data and GPU cells (needs a GPU and the data; see README).
test-gpu: install
	$(BIN)/nbdev_test --flags "gpu slow" --n_workers 1

# Train the default Switch Transformer on the bundled IMDB sample (CPU, minutes).
train: install
	$(BIN)/moe-course train $(ARGS)

readme: install
	$(BIN)/python tools/readme.py

sync: install
	$(BIN)/nbdev_export
	$(BIN)/python tools/run_notebooks.py --jobs $(JOBS) $(NBS)
	$(BIN)/nbdev_clean
	$(BIN)/python tools/readme.py

clean:
	rm -rf $(VENV) _proc _docs *.egg-info
