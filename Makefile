# Two commands: `make demo` (main job) and `make test` (test suite). Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU build of PyTorch by default (small, no CUDA). GPU users: see README "GPU install".
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test lint install bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[test,mesh,view,colmap,video]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/gridfield image --out runs/demo

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

bench: install
	$(PY) benchmarks/image_kodak.py

clean:
	rm -rf $(VENV) runs
