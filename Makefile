# The reproducible companion to S²-DMs.
#   make reproduce   run every numbered notebook headlessly (profile gpu with CUDA, else cpu; PROFILE= overrides)
#   make test        unit tests + every notebook at profile ci (what .ci/run calls)
#   make lab         JupyterLab at the repository root with this project's environment as the kernel
#   make bench       speed benchmarks; results under bench/results/
#   make hooks       once per clone: git stores notebooks without outputs (.gitattributes' filter)
#   make fetch       download what a profile needs (PROFILE=gpu: CIFAR-10, FID weights, DDPM checkpoint)
#   make gpu-check   the prepared GPU check (bench/gpu_check.py; --dry-run on a CPU)
#   make rehearse    the gpu route (PROFILE=gpu|paper) on fixtures at tiny sizes, on any machine (scripts/rehearse.py)
#   make preflight   what PROFILE=gpu|paper needs, checked in seconds, and the plan (scripts/preflight.py)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
LIB := $(wildcard lib/*.py lib/*/*.py)

.PHONY: reproduce test lab bench venv check-python hooks clean-figures help fetch gpu-check torch rehearse preflight
help:
	@sed -n '2,11p' Makefile

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

# torch/torchvision at their pins, before the rest: from PyTorch's CPU wheel index where no NVIDIA GPU is
# present (nvidia-smi absent; ~0.8 GB instead of ~6 GB with CUDA), else from the default index (its Linux
# wheels carry CUDA). TORCH_INDEX=cpu|cuda|default overrides; an unreachable CPU index falls back to the
# default one, saying so. `make torch PIP=echo` shows the command without installing.
TORCH_INDEX ?= auto
TORCH_CPU_URL ?= https://download.pytorch.org/whl/cpu
PIP ?= $(PY) -m pip
# Reachable? (pip itself would silently take a wheel from another configured index or find-links folder.)
TORCH_PROBE ?= $(PY) -c "import urllib.request as u; u.urlopen('$(TORCH_CPU_URL)/torch/', timeout=10)"
define install_torch
pins=$$(grep -E '^(torch|torchvision)==' requirements.txt | tr '\n' ' '); idx="$(TORCH_INDEX)"; \
if [ "$$idx" = auto ]; then if command -v nvidia-smi >/dev/null 2>&1; then idx=cuda; else idx=cpu; fi; fi; \
case "$$idx" in \
  cpu) if $(TORCH_PROBE) >/dev/null 2>&1; then \
         echo "make: torch from the CPU wheel index $(TORCH_CPU_URL) (no NVIDIA GPU found; TORCH_INDEX=cuda overrides)"; \
         $(PIP) install --quiet --index-url $(TORCH_CPU_URL) $$pins; \
       else echo "make: the CPU wheel index $(TORCH_CPU_URL) is unreachable: torch from the default index instead"; \
         $(PIP) install --quiet $$pins; fi ;; \
  cuda|default) $(PIP) install --quiet $$pins ;; \
  *) echo "make: TORCH_INDEX=$$idx is not one of auto, cpu, cuda, default" >&2; exit 1 ;; \
esac
endef
.PHONY: torch
torch:
	@$(install_torch)

$(VENV)/.stamp-run: requirements.txt pyproject.toml
	@test -x $(PY) || { $(check_python); $(PYTHON) -m venv $(VENV) || { \
	  echo "make: '$(PYTHON) -m venv' failed (Debian/Ubuntu: apt install python$$v-venv)" >&2; exit 1; }; }
	$(PY) -m pip install --quiet --upgrade pip
	@$(install_torch)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@
$(VENV)/.stamp-dev: $(VENV)/.stamp-run requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $@
$(VENV)/.stamp-lab: $(VENV)/.stamp-run requirements-lab.txt
	$(PY) -m pip install --quiet -r requirements-lab.txt
	@touch $@
venv: $(VENV)/.stamp-run

# ---------------------------------------------------------------- notebooks
# Each executed notebook is a make target, so a second run redoes only what is out of date.
# Dependencies between notebooks are the files they exchange (see each notebook's first cell).
reproduce: $(VENV)/.stamp-run
	@profile="$${PROFILE:-$$($(PY) -c 'import torch; print("gpu" if torch.cuda.is_available() else "cpu")')}"; \
	echo "== make reproduce at profile $$profile =="; \
	case "$$profile" in gpu|paper) $(PY) scripts/preflight.py --profile $$profile $(if $(ROOT_OUT),--root $(abspath $(ROOT_OUT)),) || exit 1 ;; esac; \
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
	@$(PY) scripts/run_notebook.py $< --profile $(PROFILE) $(if $(ROOT_OUT),--root $(abspath $(ROOT_OUT)),)
# The notebooks that write under data/runs/<profile>/ run again when the marker run_notebook.py left
# there is gone (data/runs deleted), or a folder it names (data/runs/<profile>/images deleted), however new
# their executed copy is (lib.infra.paths.write_notebook_marker).
WRITES_RUNS := 03_train 04_sampler_sweeps 06_related_methods
RUNS_GONE = $(strip $(foreach d,$(shell cat "$(RUNS)/.notebooks/$(1).done" 2>/dev/null),$(if $(wildcard $(RUNS)/$(d)),,$(d))))
$(foreach n,$(WRITES_RUNS),$(if $(and $(wildcard $(RUNS)/.notebooks/$(n).done),$(if $(call RUNS_GONE,$(n)),,ok)),,$(eval $(OUT)/$(n).ipynb: FORCE)))
.PHONY: FORCE
FORCE:
# Data flow: 03 trains the models that 04, 06 and 07 read; 05 tabulates 04's measurements.
$(OUT)/04_sampler_sweeps.ipynb: $(OUT)/03_train.ipynb
$(OUT)/05_fid_tables.ipynb: $(OUT)/04_sampler_sweeps.ipynb
$(OUT)/06_related_methods.ipynb: $(OUT)/03_train.ipynb
$(OUT)/07_interpolation.ipynb: $(OUT)/03_train.ipynb
$(OUT)/08_pretrained.ipynb: $(OUT)/03_train.ipynb

# ---------------------------------------------------------------- the GPU route before a GPU sees it (docs/GPU.md)
# make rehearse PROFILE=gpu|paper [REHEARSE_ROOT=DIR]: every notebook through the profile's code paths at tiny
# sizes on fixtures, under DIR (default data/rehearse), never figures/ or data/runs/. make preflight PROFILE=gpu.
REHEARSE_ROOT ?= data/rehearse
rehearse: $(VENV)/.stamp-run
	$(PY) scripts/rehearse.py --profile $${PROFILE:-gpu} --root $(REHEARSE_ROOT)
preflight: $(VENV)/.stamp-run
	$(PY) scripts/preflight.py --profile $${PROFILE:-gpu}

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

# At the repository root, so figures/ is browsable beside notebooks/. The kernel is registered inside .venv
# (--sys-prefix: nothing in the home folder) under a name unique to this clone, and is the only kernel offered
# (allowed_kernelspecs hides ipykernel's "python3"), so a notebook asking for "python3" opens on it, the one
# Python kernel there is. As root (Docker, cloud GPU images) JupyterLab needs --allow-root.
KERNEL := s2dm-$(shell printf '%s' "$(CURDIR)" | cksum | cut -d' ' -f1)
LAB_ARGS = --ServerApp.root_dir="$(CURDIR)" --MappingKernelManager.default_kernel_name=$(KERNEL) \
  --KernelSpecManager.allowed_kernelspecs=$(KERNEL) $(if $(filter 0,$(shell id -u)),--allow-root,)
lab: $(VENV)/.stamp-lab
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "S2-DMs ($(notdir $(CURDIR)))"
	$(VENV)/bin/jupyter lab $(LAB_ARGS)

# The clean filter that .gitattributes names for *.ipynb (scripts/strip_outputs.py needs no packages).
hooks:
	git config filter.strip-outputs.clean "python3 scripts/strip_outputs.py --stdin"
	git config filter.strip-outputs.smudge cat
	@echo "git now stores notebooks without outputs (.gitattributes: *.ipynb filter=strip-outputs)"

bench: $(VENV)/.stamp-dev
	$(PY) bench/sampler_overhead.py
	$(PY) bench/train_speed.py

# ---------------------------------------------------------------- the GPU check (docs/GPU.md)
# One prepared run on one GPU (<= 8 min on an H100/H200): correctness (pytest -m cuda), then the speed
# benchmark bench/gpu_speed.py, in one time budget -> bench/results/gpu_check_<gpu>.md/.json. Runs with
# .venv when there is one, else the machine's own python3 (a preinstalled PyTorch >= 2.1): no network. A folder WHEELS (default .whl) is used first
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
