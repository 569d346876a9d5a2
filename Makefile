# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv, install the package and fetch Fashion-MNIST (Debian package) when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
DATA   ?= data/fashion-mnist

.PHONY: venv dataset demo test lint smoke bench clean

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test,lint]'
	touch $@

dataset: $(FMNIST)
$(FMNIST):
	@echo "Fashion-MNIST missing: installing Debian package dataset-fashion-mnist"
	if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist

$(DATA)/manifest.json: $(FMNIST) | venv
	$(BIN)/mkd-pipeline data import fashion-mnist --out $(DATA)

# Threads per stage come from the pipeline: precompute's Dask workers x threads_per_worker = the
# cores, training uses every core of its one process (compute.train_threads to change it).
# OMP_NUM_THREADS is no longer forced; one you set (`OMP_NUM_THREADS=1 make demo`) still wins.
demo: venv $(DATA)/manifest.json
	$(BIN)/mkd-pipeline run stages/fashion-mnist-demo.yaml

test: venv dataset
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff and mypy over the package (rules and the stated style in pyproject.toml, docs/architecture.md "Style").
# Import order after merging branches: $(BIN)/ruff check --fix --select I maskedkd pipeline
lint: venv
	$(BIN)/ruff check maskedkd pipeline
	$(BIN)/mypy

# The package as a user installs it: a wheel in a clean venv outside the checkout (CI runs it too).
smoke: venv dataset
	PYTHON=$(PYTHON) bash .ci/wheel-smoke.sh

clean:
	rm -rf $(VENV) runs data .pytest_cache
