# The two set-up-included commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# The whole pipeline on the built-in shapes data: autoencoder, codes, prior, 64 samples in samples/.
demo: $(STAMP)
	$(BIN)/vqgen train-ae --force
	$(BIN)/vqgen encode
	$(BIN)/vqgen train-prior --force
	$(BIN)/vqgen sample --n 64

test: $(STAMP)
	$(BIN)/python -m pytest tests

lint: $(STAMP)
	$(BIN)/ruff check vqgen tests bench

clean:
	rm -rf runs samples
