# `make demo`: set up, train starry_night on the bundled photos (CPU), export, stylize two held-out photos.
# `make test`: set up, run the test suite (what CI runs through .ci/run).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test weights clean-venv

demo: $(VENV)/.installed
	$(PY) scripts/demo.py

test: $(VENV)/.installed
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_ARGS)

weights: $(VENV)/.installed
	$(PY) -m fst.loss.weights --weights caffe

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e ".[dev]"
	touch $@

clean-venv:
	rm -rf $(VENV)
