# Frozen layers, measured -- set-up, tests and notebook runs (GNU make).
#
#   make course        set up .venv, then open the course in JupyterLab
#   make test          set up .venv, then lint, unit tests and notebook tests (nbval), on the CPU
#   make test-portable the notebook tests again under other CPU instruction sets and thread counts
#   make test-cuda     run the notebooks on a GPU, checking their asserts (nbval-lax)
#   make bench         how well the per-op cost model predicts backward time on this machine
#   make notebooks     re-execute every notebook in place (fresh kernel), strip volatile metadata
#   make notebook NB=notebooks/01_which_nodes_exist.ipynb    the same for one notebook
#   make clean         remove .venv, caches and results/
#
# Overrides: PYTHON=python3.12  IP=0.0.0.0  PORT=8890  PYTHONHASHSEED=0
#   With PYTHON=..., an existing .venv built from another Python version is rebuilt.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# Written after a successful install; reinstalls only when requirements.txt or pyproject.toml change.
STAMP := $(VENV)/.installed

IP ?= 127.0.0.1
PORT ?= 8888
NB ?=
PYTHONHASHSEED ?= 0

# Tools and Jupyter terminals started from make see the course's Python first.
export PATH := $(abspath $(BIN)):$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help setup graphviz inductor chromium course test test-notebooks test-portable test-cuda bench notebooks notebook clean

# `make test PYTHON=/path/to/python3.13` must really test with that Python: when PYTHON is
# given and the existing .venv runs another version, the .venv is removed and built anew.
ifneq ($(filter command line environment,$(origin PYTHON)),)
ifeq ($(filter help clean,$(MAKECMDGOALS)),)
VENV_PYTHON_VERSION := $(shell [ -x $(PY) ] && $(PY) -c 'import sys; print(sys.version.split()[0])' 2>/dev/null)
WANTED_PYTHON_VERSION := $(shell $(PYTHON) -c 'import sys; print(sys.version.split()[0])' 2>/dev/null)
ifneq ($(VENV_PYTHON_VERSION),)
ifneq ($(VENV_PYTHON_VERSION),$(WANTED_PYTHON_VERSION))
$(info $(VENV) runs Python $(VENV_PYTHON_VERSION), but PYTHON=$(PYTHON) is Python $(or $(WANTED_PYTHON_VERSION),(not found)): rebuilding $(VENV).)
$(shell rm -rf $(VENV))
endif
endif
endif
endif

help:
	@sed -n '3,/^$$/s/^# \{0,1\}//p' $(firstword $(MAKEFILE_LIST))

# ---------------------------------------------------------------- environment

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { \
	  echo "error: '$(PYTHON)' was not found. Install Python >= 3.10, or point make at one:" >&2; \
	  echo "       make $(or $(MAKECMDGOALS),course) PYTHON=/path/to/python3.11" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { \
	  echo "error: this course needs Python >= 3.10, but '$(PYTHON)' is $$($(PYTHON) -V 2>&1)." >&2; \
	  echo "       Install a newer Python and run: make $(or $(MAKECMDGOALS),course) PYTHON=python3.11" >&2; exit 1; }
	@echo "Creating virtualenv $(VENV) with $$($(PYTHON) -V 2>&1)"
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "error: could not create $(VENV). On Debian/Ubuntu: sudo apt-get install python3-venv" >&2; exit 1; }

# setuptools is pinned in requirements.txt, so the project is built with that backend in place
# (--no-build-isolation): same version everywhere, and no network needed for this step.
$(STAMP): requirements.txt pyproject.toml | $(PY)
	@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { \
	  echo "error: $(VENV) runs $$($(PY) -V 2>&1); this course needs >= 3.10. Run 'make clean' first." >&2; exit 1; }
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-build-isolation -e .
	@touch $@

define NO_DOT_HELP
error: Graphviz's `dot` program is missing and could not be installed automatically.
Install it with the command for your system, then run make again:
  sudo apt-get install -y graphviz            # Debian / Ubuntu
  brew install graphviz                       # macOS (Homebrew)
  conda install -c conda-forge graphviz       # conda / mamba environment
endef
export NO_DOT_HELP

# $(call apt_install,PACKAGE,HELP): install a Debian package as root or with passwordless sudo;
# otherwise print the help text (an exported variable's name) and fail.
define apt_install
if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" -eq 0 ]; then \
  DEBIAN_FRONTEND=noninteractive apt-get update && \
  DEBIAN_FRONTEND=noninteractive apt-get install -y $(1); \
elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1 \
     && sudo -n true >/dev/null 2>&1; then \
  sudo -n env DEBIAN_FRONTEND=noninteractive apt-get update && \
  sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y $(1); \
else \
  echo "$$$(2)" >&2; exit 1; \
fi
endef

# Cheap when dot is present (one `command -v`); installs the system package only when missing.
graphviz:
	@if command -v dot >/dev/null 2>&1; then exit 0; fi; \
	echo "Graphviz 'dot' not found; trying to install the 'graphviz' system package ..."; \
	$(call apt_install,graphviz,NO_DOT_HELP); \
	command -v dot >/dev/null 2>&1 || { echo "$$NO_DOT_HELP" >&2; exit 1; }

# Notebook 09 times torch.compile's Inductor backend, which builds C++ with g++ against the
# venv Python's headers (Python.h). On Linux, install what is missing (as root or with
# passwordless sudo) or print the command; never fail: the notebook falls back to aot_eager.
define NO_INDUCTOR_HELP
warning: Inductor (torch.compile's default backend) cannot build C++ here; notebook 09 falls
back to aot_eager. Install a C++ compiler and the Python headers, e.g.:
  sudo apt-get install -y g++ python3-dev     # Debian / Ubuntu (system Python)
  (a pyenv/conda Python ships its own headers: reinstall it with them)
endef
export NO_INDUCTOR_HELP

inductor: | $(STAMP)
	@[ "$$(uname -s)" = Linux ] || exit 0; \
	has_headers() { $(PY) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; }; \
	if command -v $${CXX:-g++} >/dev/null 2>&1 && has_headers; then exit 0; fi; \
	echo "Inductor needs a C++ compiler and Python.h; trying to install g++ and python3-dev ..."; \
	( $(call apt_install,g++ python3-dev,NO_INDUCTOR_HELP) ) || true; \
	if ! command -v $${CXX:-g++} >/dev/null 2>&1 || ! has_headers; then echo "$$NO_INDUCTOR_HELP" >&2; fi

# JupyterLab reads settings overrides from <prefix>/share/jupyter/lab/settings: the course
# opens without the "get notified about official Jupyter news?" pop-up (a projector shows
# the course, not a dialog), and without update checks.
LAB_OVERRIDES := $(VENV)/share/jupyter/lab/settings/overrides.json

$(LAB_OVERRIDES): tools/jupyterlab_overrides.json | $(STAMP)
	@mkdir -p $(dir $@)
	cp $< $@

setup: $(STAMP) graphviz inductor $(LAB_OVERRIDES)

# The browser test drives Debian's Chromium through Playwright (no browser download).
define NO_CHROMIUM_HELP
error: Chromium is missing and could not be installed automatically; the browser test needs it.
  sudo apt-get install -y chromium            # Debian (Ubuntu: chromium-browser)
endef
export NO_CHROMIUM_HELP

# BROWSER_EXECUTABLE=/path/to/chrome uses another Chromium-based browser instead.
chromium:
	@if [ -n "$${BROWSER_EXECUTABLE:-}" ] && [ -x "$${BROWSER_EXECUTABLE}" ]; then exit 0; fi; \
	if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then exit 0; fi; \
	echo "Chromium not found; installing Debian's 'chromium' package for the browser test ..."; \
	$(call apt_install,chromium,NO_CHROMIUM_HELP)

# ---------------------------------------------------------------- course

# Opens notebooks/00_start_here.ipynb, else the first notebooks/*.ipynb in sorted order.
# Headless Linux (no DISPLAY / WAYLAND_DISPLAY): no browser; open the printed URL (with token).
course: setup
	@nb=notebooks/00_start_here.ipynb; \
	if [ ! -f "$$nb" ]; then \
	  nb=$$(find notebooks -maxdepth 1 -name '*.ipynb' 2>/dev/null | LC_ALL=C sort | awk 'NR == 1'); \
	fi; \
	args=(--ServerApp.ip='$(IP)' --ServerApp.port='$(PORT)' --ServerApp.root_dir="$(CURDIR)"); \
	if [ -n "$$nb" ]; then args+=(--LabApp.default_url="/lab/tree/$$nb"); fi; \
	headless=; \
	if [ "$$(uname -s)" = Linux ] && [ -z "$${DISPLAY:-}$${WAYLAND_DISPLAY:-}" ]; then \
	  headless=1; args+=(--no-browser); \
	fi; \
	if [ "$$(id -u)" -eq 0 ]; then args+=(--allow-root); fi; \
	echo; echo "Starting JupyterLab at $${nb:-notebooks/} (Ctrl-C twice to stop)."; \
	if [ -n "$$headless" ]; then \
	  echo "No display found: open the http://...?token=... URL printed below in your browser."; \
	fi; \
	echo; \
	exec $(BIN)/jupyter lab "$${args[@]}"

# ---------------------------------------------------------------- tests

# MPLBACKEND=Agg for the unit tests only: notebook kernels keep Jupyter's inline backend,
# otherwise figures would not be displayed and nbval would miss their outputs.
# AUTOGRAD_COST_DEVICE=cpu: the stored outputs are the CPU reference, also on a GPU machine.
# PYTHONHASHSEED is left unset: compared outputs must not depend on it.
# notebooks/conftest.py fails the run when a notebook takes longer than NOTEBOOK_BUDGET_S (30).
NBVAL := env -u MPLBACKEND -u PYTHONHASHSEED AUTOGRAD_COST_DEVICE=cpu $(PY) -m pytest --nbval notebooks/ -q -p no:cacheprovider

test: setup chromium
	$(BIN)/ruff check src tests tools notebooks
	$(PY) tools/check_notebooks.py
	MPLBACKEND=Agg AUTOGRAD_COST_DEVICE=cpu $(PY) -m pytest tests -q
	$(NBVAL)

# The notebook tests alone, e.g. under a simulated CPU:
#   ONEDNN_MAX_CPU_ISA=SSE41 ATEN_CPU_CAPABILITY=default make test-notebooks
test-notebooks: setup
	$(NBVAL)

# The same stored outputs must come out on any x86 CPU and thread count. oneDNN and ATen pick
# kernels by instruction set (rounding differs), so simulate older and newer CPUs; the thread
# count changes how reductions are split. One factor at a time, as in the portability issue.
# Kernels without AVX are several times slower: these runs check outputs, with a 120 s budget.
PORTABLE_RUNS := \
  "ONEDNN_MAX_CPU_ISA=SSE41 ATEN_CPU_CAPABILITY=default" \
  "ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2" \
  "OMP_NUM_THREADS=1" \
  "OMP_NUM_THREADS=4"

test-portable: setup
	@for run in $(PORTABLE_RUNS); do \
	  echo "== nbval with $$run"; \
	  env $$run NOTEBOOK_BUDGET_S=120 $(NBVAL) || { echo "FAILED with $$run" >&2; exit 1; }; \
	done

# On a machine with a GPU: every notebook runs on CUDA and its asserts must hold, but its
# outputs are not compared with the stored CPU reference (--nbval-lax).
# A benchmark, not a test: run it on a quiet machine. It prints the cost model's calibration
# constants (twice), its worst error per model against the FLOP-only model's, and the extra
# time --predict adds to an 8x1024 MLP sweep.
bench: setup
	$(PY) -m autograd_cost bench

test-cuda: setup
	@$(PY) -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' || { \
	  echo "error: test-cuda needs a CUDA build of torch and a GPU; torch.cuda.is_available() is False." >&2; \
	  echo "       See README, 'Running on a GPU'." >&2; exit 1; }
	env -u MPLBACKEND AUTOGRAD_COST_DEVICE=cuda NOTEBOOK_BUDGET_S=60 $(PY) -m pytest --nbval-lax notebooks/ -q -p no:cacheprovider

# ---------------------------------------------------------------- notebooks

notebooks: setup
	PYTHONHASHSEED=$(PYTHONHASHSEED) $(PY) tools/run_notebooks.py

notebook: setup
	@[ -n '$(NB)' ] || { echo "usage: make notebook NB=notebooks/01_which_nodes_exist.ipynb" >&2; exit 1; }
	PYTHONHASHSEED=$(PYTHONHASHSEED) $(PY) tools/run_notebooks.py '$(NB)'

# ---------------------------------------------------------------- clean

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache results build dist
	find . -path ./.git -prune -o -type d \
	  \( -name __pycache__ -o -name .ipynb_checkpoints -o -name '*.egg-info' \) -prune \
	  -exec rm -rf {} +
