# tgrowth: two commands do everything on a fresh machine: `make demo` and `make test`.
#
# Where they install: into the active virtual environment ($VIRTUAL_ENV) or conda environment
# ($CONDA_PREFIX) if one is active; otherwise into a project environment in .venv/ (git-ignored), created
# with $(BOOTSTRAP_PYTHON) -m venv on first use. A system Python that refuses global installs
# ("externally-managed-environment", PEP 668) is therefore never installed into. `make PYTHON=/path/python`
# uses that interpreter as it is. torch is pinned (TORCH_VERSION) and installed first: an open torch
# requirement would pull a multi-GB CUDA build; TORCH_PIP_ARGS passes extra pip arguments for it, e.g.
# TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" for PyTorch's CPU-only wheels.
TORCH_VERSION ?= 2.13.0
TORCH_PIP_ARGS ?=
DEMO_DIR ?= runs/demo
VENV ?= .venv
BOOTSTRAP_PYTHON ?= python3
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

ifeq ($(origin PYTHON),command line)
  INSTALLED := install-active
else ifneq ($(VIRTUAL_ENV),)
  PYTHON := $(VIRTUAL_ENV)/bin/python
  INSTALLED := install-active
else ifneq ($(CONDA_PREFIX),)
  PYTHON := $(CONDA_PREFIX)/bin/python
  INSTALLED := install-active
else
  PYTHON := $(VENV)/bin/python
  INSTALLED := $(VENV)/.tgrowth-installed
endif
PIP := $(PYTHON) -m pip

.PHONY: install install-active test demo demo-ode lint bench clean distclean

install: $(INSTALLED)

# The project environment: created once; reinstalled when pyproject.toml changes.
$(VENV)/bin/python:
	$(BOOTSTRAP_PYTHON) -m venv $(VENV)

$(VENV)/.tgrowth-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q$(if $(TORCH_PIP_ARGS), $(TORCH_PIP_ARGS)) "torch==$(TORCH_VERSION)"
	$(PIP) install -q -e ".[dev]"
	touch $@

# An environment the user activated: keep a torch that is already the pinned version or a CUDA build.
install-active:
	$(PYTHON) -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('$(TORCH_VERSION)') or torch.cuda.is_available() else 1)" 2>/dev/null \
		|| $(PIP) install -q$(if $(TORCH_PIP_ARGS), $(TORCH_PIP_ARGS)) "torch==$(TORCH_VERSION)"
	$(PIP) install -q -e ".[dev]"

test: install
	$(PYTHON) -m pytest -q tests

demo: install
	$(PYTHON) -m tgrowth demo -c experiments/demo.yaml output_dir=$(DEMO_DIR) overwrite=true

demo-ode: install
	$(PYTHON) -m tgrowth fit-ode -c experiments/ode_fit_demo.yaml output_dir=runs/ode_demo overwrite=true

lint: install
	$(PYTHON) -m ruff check tgrowth data_modules tests benchmarks

bench: install
	$(PYTHON) benchmarks/ode_fit.py
	$(PYTHON) benchmarks/data_loading.py
	$(PYTHON) benchmarks/sampling.py
	$(PYTHON) benchmarks/inversion.py

clean:
	rm -rf runs .pytest_cache build *.egg-info

distclean: clean
	rm -rf $(VENV)
