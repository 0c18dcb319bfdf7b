# tgrowth: two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
TORCH_VERSION ?= 2.13.0
DEMO_DIR ?= runs/demo
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.PHONY: install test demo demo-ode lint bench clean

# The pinned CPU torch first: an unpinned torch requirement would pull a multi-GB CUDA build.
install:
	$(PYTHON) -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('$(TORCH_VERSION)') or torch.cuda.is_available() else 1)" 2>/dev/null \
		|| $(PIP) install -q "torch==$(TORCH_VERSION)"
	$(PIP) install -q -e ".[dev]"

test: install
	$(PYTHON) -m pytest -q tests

demo: install
	tgrowth demo -c experiments/demo.yaml output_dir=$(DEMO_DIR) overwrite=true

demo-ode: install
	tgrowth fit-ode -c experiments/ode_fit_demo.yaml output_dir=runs/ode_demo overwrite=true

lint: install
	$(PYTHON) -m ruff check tgrowth data_modules tests benchmarks

bench: install
	$(PYTHON) benchmarks/ode_fit.py
	$(PYTHON) benchmarks/data_loading.py
	$(PYTHON) benchmarks/sampling.py
	$(PYTHON) benchmarks/inversion.py

clean:
	rm -rf runs .pytest_cache build *.egg-info
