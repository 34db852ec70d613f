# socmap: two commands from a fresh clone.
#   make demo   create .venv, install everything, run the full pipeline on the embedded demo data
#   make test   same venv, run the test suite
#   make bench  benchmark suite (outside CI; prints ratios, see docs/benchmarks.md)
#   make bench-realdata  real-data benchmarks (Macedonia, Edgeroi)
#   make bench-models    map speed of every model kind, bands, bf16 (GRID=small|box|region)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo-output
STAMP := $(VENV)/.socmap-installed

.PHONY: venv demo test lint bench bench-realdata bench-cv bench-models clean

venv: $(STAMP)

# torch==2.13.0 is installed explicitly first (the CPU build on this machine's disk); the package's own
# torch range is then already satisfied, so pip never fetches a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "socmap needs Python >= 3.11 (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

demo: venv
	$(VENV)/bin/socmap demo --out $(DEMO_OUT)

test: venv
	WANDB_MODE=disabled $(PY) -m pytest -q -n 2 --dist loadfile

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

bench: venv
	WANDB_MODE=disabled $(PY) benchmarks/run.py

# real-data benchmarks (Macedonia vs the FAO cookbook, Edgeroi); need ../shared/data; ~10-15 min
bench-realdata: venv
	WANDB_MODE=disabled $(PY) benchmarks/run.py --only realdata

# cv sequential vs 2 worker processes (Edgeroi when ../shared/data is present, else synthetic)
bench-cv: venv
	WANDB_MODE=disabled $(PY) benchmarks/run.py --only cv

# every registered model kind trained once and mapped with and without bands, bf16 for deep kinds;
# GRID=small (25,600 px, ~20-30 min on 2 quiet cores), box (102,400 px) or region (Bavaria, 1.12 M px)
GRID ?= small
bench-models: venv
	WANDB_MODE=disabled SOCMAP_BENCH_GRID=$(GRID) $(PY) benchmarks/run.py --only models

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
