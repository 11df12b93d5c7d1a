# Each target creates (or reuses) the virtual environment in .venv, installs the project, then does its job.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; on a CUDA machine use e.g. `make test TORCH=torch`.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test test-gpu train lint readme sync clean

$(STAMP): settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null 2>&1 || true
	touch $(STAMP)

install: $(STAMP)

# The whole default suite: library in step with the notebooks, notebooks clean, README in step, notebooks run, pytest.
test: install
	VENV=$(VENV) bash tools/check_sync.sh
	$(BIN)/python tools/readme.py --check
	$(BIN)/nbdev_test --n_workers 2 --timing
	$(BIN)/python -m pytest -q tests

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
	$(BIN)/nbdev_clean
	$(BIN)/python tools/readme.py

clean:
	rm -rf $(VENV) _proc _docs *.egg-info
