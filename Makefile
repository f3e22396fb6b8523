# The two set-up commands of the README: `make demo` (the main job) and `make test`.
# Each creates .venv with what it needs on a machine that has only Python 3.11.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of PyTorch, pinned: an unpinned torch pulls several GB of CUDA packages.
TORCH ?= torch==2.13.0
PYTEST_WORKERS ?= 2

.PHONY: demo test venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,notebooks]" "$(TORCH)"
	touch $@

demo: venv
	$(VENV)/bin/centernet demo

# The whole suite under TensorFlow, then the backend-agnostic tests under JAX (with the
# JAX-only ones) and PyTorch.
test: venv
	KERAS_BACKEND=tensorflow $(PY) -m pytest -n $(PYTEST_WORKERS) tests
	KERAS_BACKEND=jax $(PY) -m pytest -n $(PYTEST_WORKERS) -m "multi_backend or jax" tests
	KERAS_BACKEND=torch $(PY) -m pytest -n $(PYTEST_WORKERS) -m multi_backend tests

clean:
	rm -rf $(VENV) build dist *.egg-info
