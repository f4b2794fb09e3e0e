# `make demo` and `make test` work on a fresh machine with only Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2
# Test processes of `make test` (pytest-xdist); each holds its own TensorFlow (~1-2 GiB).
PYTEST_WORKERS ?= 2

.PHONY: demo test lint clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) -m cspsr_tf.demo

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup

lint: $(VENV)/.installed
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo_output
