# The reproducible companion to S²-DMs.
#   make reproduce   run every numbered notebook headlessly (profile gpu with CUDA, else cpu; PROFILE= overrides)
#   make test        unit tests + every notebook at profile ci (what .ci/run calls)
#   make lab         JupyterLab on notebooks/ with this project's environment as the kernel
#   make bench       speed benchmarks; results under bench/results/
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
LIB := $(wildcard lib/*.py lib/*/*.py)

.PHONY: reproduce test lab bench venv clean-figures help fetch
help:
	@sed -n '2,6p' Makefile

# ---------------------------------------------------------------- environment
$(VENV)/.stamp-run: requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
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
EXECUTED := $(patsubst notebooks/%.ipynb,$(OUT)/%.ipynb,$(NOTEBOOKS))
notebooks: $(EXECUTED)
$(OUT)/%.ipynb: notebooks/%.ipynb $(LIB) scripts/run_notebook.py
	@$(PY) scripts/run_notebook.py $< --profile $(PROFILE) $(if $(ROOT_OUT),--root $(ROOT_OUT),)
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
	$(PY) -m lib.pretrained fetch --profile $${PROFILE:-gpu}

# ---------------------------------------------------------------- tests, lab, bench
test: $(VENV)/.stamp-dev
	$(PY) -m pytest -q tests

lab: $(VENV)/.stamp-lab
	$(VENV)/bin/jupyter lab notebooks/

bench: $(VENV)/.stamp-dev
	$(PY) bench/sampler_overhead.py
	$(PY) bench/train_speed.py
