# The two commands of the quick start: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Stamps re-run pip only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

# A real job on a local Ray over a generated clickstream.
demo: $(VENV)/.installed
	RAY_AUTH_MODE=disabled $(VENV)/bin/raystream run jobs/clicks.py --config configs/demo.yaml

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check raystream tests jobs bench
	$(VENV)/bin/mypy raystream

# Lint, then every test; the tests start the servers they need (Kafka, S3) themselves.
test: lint
	RAY_AUTH_MODE=disabled $(VENV)/bin/python -m pytest -q -p no:cacheprovider --durations=15

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis
