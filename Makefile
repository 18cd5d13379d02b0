# The reproducible companion to S²-DMs.
#   make reproduce   run every numbered notebook headlessly (profile gpu with CUDA, else cpu; PROFILE= overrides)
#   make test        unit tests + every notebook at profile ci (what .ci/run calls)
#   make lab         JupyterLab at the repository root with this project's environment as the kernel
#   make bench       speed benchmarks; results under bench/results/
#   make hooks       once per clone: git stores notebooks without outputs (.gitattributes' filter)
#   make fetch       download what a profile needs (PROFILE=gpu: CIFAR-10, FID weights, DDPM checkpoint)
#   make gpu-check   the prepared GPU check (bench/gpu_check.py; --dry-run on a CPU)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
LIB := $(wildcard lib/*.py lib/*/*.py)

.PHONY: reproduce test lab bench venv check-python hooks clean-figures help fetch gpu-check
help:
	@sed -n '2,9p' Makefile

# ---------------------------------------------------------------- environment
# The pins (numpy 2.4.6, scipy 1.17.1, pandas 3.1.1) have no wheels below Python 3.11: say so before
# pip fails with a resolution error. Checked only when .venv is about to be built.
define check_python
v=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || { \
  echo "make: no working Python at PYTHON=$(PYTHON); install Python 3.11 or newer and run e.g. PYTHON=python3.12 make test" >&2; exit 1; }; \
maj=$${v%%.*}; min=$${v#*.}; \
if [ "$$maj" -lt 3 ] || { [ "$$maj" -eq 3 ] && [ "$$min" -lt 11 ]; }; then \
  echo "make: PYTHON=$(PYTHON) is Python $$v, but the pinned requirements need Python 3.11 or newer." >&2; \
  echo "      Install one (python.org, pyenv, conda, or apt install python3.12 python3.12-venv on Ubuntu) and run e.g. PYTHON=python3.12 make test" >&2; \
  exit 1; fi
endef
check-python:
	@$(check_python); echo "make: PYTHON=$(PYTHON) is Python $$v (3.11 or newer: fine)"

$(VENV)/.stamp-run: requirements.txt pyproject.toml
	@test -x $(PY) || { $(check_python); $(PYTHON) -m venv $(VENV) || { \
	  echo "make: '$(PYTHON) -m venv' failed (Debian/Ubuntu: apt install python$$v-venv)" >&2; exit 1; }; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@
$(VENV)/.stamp-dev: $(VENV)/.stamp-run requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $@
$(VENV)/.stamp-lab: $(VENV)/.stamp-run requirements-lab.txt
	$(PY) -m pip install --quiet -r requirements-lab.txt
	$(PY) -m ipykernel install --user --name s2dm --display-name "S2-DMs (.venv)"
	@touch $@
venv: $(VENV)/.stamp-run

# ---------------------------------------------------------------- notebooks
# Each executed notebook is a make target, so a second run redoes only what is out of date.
# Dependencies between notebooks are the files they exchange (see each notebook's first cell).
reproduce: $(VENV)/.stamp-run
	@profile="$${PROFILE:-$$($(PY) -c 'import torch; print("gpu" if torch.cuda.is_available() else "cpu")')}"; \
	echo "== make reproduce at profile $$profile =="; \
	start=$$(date +%s); \
	$(MAKE) --no-print-directory notebooks PROFILE=$$profile && \
	echo "== done in $$(( $$(date +%s) - start )) s; outputs under figures/$$profile/ =="

# ROOT_OUT=DIR writes figures/ and data/runs/ under DIR instead of the repository (used by the tests).
ROOT_OUT ?=
OUT = $(if $(ROOT_OUT),$(ROOT_OUT)/,)figures/$(PROFILE)
RUNS = $(if $(ROOT_OUT),$(ROOT_OUT)/,)data/runs/$(PROFILE)
EXECUTED := $(patsubst notebooks/%.ipynb,$(OUT)/%.ipynb,$(NOTEBOOKS))
notebooks: $(EXECUTED)
$(OUT)/%.ipynb: notebooks/%.ipynb $(LIB) scripts/run_notebook.py
	@$(PY) scripts/run_notebook.py $< --profile $(PROFILE) $(if $(ROOT_OUT),--root $(ROOT_OUT),)
# The notebooks that write under data/runs/<profile>/ run again when the marker run_notebook.py left
# there is gone (data/runs deleted), however new their executed copy is.
WRITES_RUNS := 03_train 04_sampler_sweeps 06_related_methods
$(foreach n,$(WRITES_RUNS),$(if $(wildcard $(RUNS)/.notebooks/$(n).done),,$(eval $(OUT)/$(n).ipynb: FORCE)))
.PHONY: FORCE
FORCE:
# Data flow: 03 trains the models that 04, 06 and 07 read; 05 tabulates 04's measurements.
$(OUT)/04_sampler_sweeps.ipynb: $(OUT)/03_train.ipynb
$(OUT)/05_fid_tables.ipynb: $(OUT)/04_sampler_sweeps.ipynb
$(OUT)/06_related_methods.ipynb: $(OUT)/03_train.ipynb
$(OUT)/07_interpolation.ipynb: $(OUT)/03_train.ipynb
$(OUT)/08_pretrained.ipynb: $(OUT)/03_train.ipynb

clean-figures:
	rm -rf figures/$(PROFILE)

# ---------------------------------------------------------------- explicit downloads (the only step that uses the network)
# make fetch PROFILE=gpu: CIFAR-10, clean-fid's Inception weights and CIFAR-10 statistics, the DDPM CIFAR-10 EMA
# checkpoint; each verified by checksum where one is published, skipped when already in place.
fetch: $(VENV)/.stamp-run
	$(PY) -m lib.experiment.fetch --profile $${PROFILE:-gpu}

# ---------------------------------------------------------------- tests, lab, bench
test: $(VENV)/.stamp-dev
	$(PY) -m pytest -q tests

# At the repository root, so figures/ is browsable beside notebooks/; new notebooks get the registered kernel.
lab: $(VENV)/.stamp-lab
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" --MappingKernelManager.default_kernel_name=s2dm

# The clean filter that .gitattributes names for *.ipynb (scripts/strip_outputs.py needs no packages).
hooks:
	git config filter.strip-outputs.clean "python3 scripts/strip_outputs.py --stdin"
	git config filter.strip-outputs.smudge cat
	@echo "git now stores notebooks without outputs (.gitattributes: *.ipynb filter=strip-outputs)"

bench: $(VENV)/.stamp-dev
	$(PY) bench/sampler_overhead.py
	$(PY) bench/train_speed.py

# ---------------------------------------------------------------- the GPU check (docs/GPU.md)
# One prepared run on one GPU (<= 8 min on an H100/H200): correctness (pytest -m cuda), speed, end to
# end -> bench/results/gpu_check_<gpu>.md/.json. Runs with .venv when there is one, else the machine's
# own python3 (a preinstalled PyTorch >= 2.1): no network. A folder WHEELS (default .whl) is used first
# to install missing diffusers/clean-fid/mlxtend offline (scripts/install_missing.py, the one
# installer). GPU_CHECK_ARGS=--dry-run: CPU, tiny.
.PHONY: gpu-check
WHEELS ?= .whl
GPU_CHECK_ARGS ?=
GPU_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))
GPU_EXTRAS = diffusers,clean-fid,mlxtend
gpu-check:
	@if [ -d "$(WHEELS)" ]; then $(GPU_PY) scripts/install_missing.py --requirements requirements.txt \
	  --requirements requirements-dev.txt --only $(GPU_EXTRAS) --offline "$(WHEELS)" || true; fi
	$(GPU_PY) bench/gpu_check.py $(GPU_CHECK_ARGS)
