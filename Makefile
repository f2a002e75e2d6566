PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,local]'
	$(BIN)/python -m pip install --quiet -e clients/python
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/meter run

lint: $(STAMP)
	$(BIN)/ruff check meter consumers schemas tests clients/python
	$(BIN)/ruff format --check meter consumers schemas tests clients/python
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/meter bench engine
	$(BIN)/meter bench pipeline
	$(BIN)/meter bench quota
	$(BIN)/meter bench reports

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .meter
