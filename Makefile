PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean chromium

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

# The dashboard tests drive Debian's Chromium (or the one METER_CHROMIUM names).
CHROMIUM := $(or $(METER_CHROMIUM),/usr/bin/chromium)

chromium:
	@test -x "$(CHROMIUM)" || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

test: lint chromium
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/meter bench engine
	$(BIN)/meter bench pipeline
	$(BIN)/meter bench quota
	$(BIN)/meter bench reports

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .meter
