# Every target works on a fresh clone: `make demo` and `make test` install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SAMPLE_RIG := tests/rigs/synthetic-2x3090-x16-x8.yaml

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/provision probe --rig $(SAMPLE_RIG)

# The benchmark runs with a bound 5x its target: it catches regressions, not noise.
test: $(STAMP) lint
	$(BIN)/pytest
	$(BIN)/python bench/probe_speed.py --runs 7 --bound-ms 1000

lint: $(STAMP)
	$(BIN)/ruff check provision tests bench
	$(BIN)/ruff format --check provision tests bench
	$(BIN)/mypy provision

bench: $(STAMP)
	$(BIN)/python bench/probe_speed.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
