# The two commands of the quick start: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The versions the suite was tested with (DEVELOPERS.md, "Reproducible installs"). `make CONSTRAINTS= test`
# installs the newest versions that pyproject.toml allows instead.
CONSTRAINTS ?= constraints.txt
PIP_INSTALL := $(PY) -m pip install --quiet $(if $(CONSTRAINTS),--constraint $(CONSTRAINTS))

.PHONY: demo test lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip

# Stamps re-run pip only when pyproject.toml or the constraints change.
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) | $(PY)
	$(PIP_INSTALL) -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(CONSTRAINTS) | $(PY)
	$(PIP_INSTALL) -e '.[dev]'
	touch $@ $(VENV)/.installed

# A real job on a local Ray over a generated clickstream. Ray's token authentication stays on: the local Ray
# that raystream starts creates its own token, and listens on 127.0.0.1 only.
demo: $(VENV)/.installed
	$(VENV)/bin/raystream run jobs/clicks.py --config configs/demo.yaml

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check raystream tests jobs bench
	$(VENV)/bin/mypy raystream
	$(VENV)/bin/lint-imports

# Lint, then every test; the tests start the servers they need (Kafka, S3) themselves. Every Ray they start
# listens on 127.0.0.1 only (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, as raystream's own local Ray does), and runs
# without token authentication, so that the suite never writes a token into your ~/.ray: a token there turns
# authentication on for your later Ray sessions. test_local_ray_binding and test_demo run with it on.
test: lint
	RAY_AUTH_MODE=disabled RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 \
		$(VENV)/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=15

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis
