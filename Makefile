# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing and install the project into it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install demo test lint format clean help
help:
	@echo "make demo   - set up .venv, then prep the sample corpus, train, export and generate (CPU, a few minutes)"
	@echo "make test   - set up .venv, then lint (ruff) and run the test suite"
	@echo "make format - let ruff format the tree and fix what it can"
	@echo "make clean  - remove build outputs (keeps .venv)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e ".[dev,quality,eval,lm_eval]"
	@touch $(STAMP)

install: $(STAMP)

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/r1-ds demo --out outputs/demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf outputs build *.egg-info .pytest_cache
