# LightSAFT pipeline. `make demo` runs everything offline on synthetic data; `make test` tests it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
GRID   ?= experiments/demo_grid.yaml
ARGS   ?=

export PATH := $(abspath $(BIN)):$(PATH)
# Idle OpenMP threads sleep instead of spinning: tests, museval workers and data loaders share
# the cores, and spinning threads of one process stall the others (up to 100x on 2 cores).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup system-deps slurm-deps lint format test test-fast demo repro ui ablate bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# ffmpeg decodes MUSDB18 .stem.mp4; Chromium + chromedriver run the report's browser test.
system-deps:
	@command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || \
	  ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq ffmpeg)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver)

# SLURM and munge for the tests of studies on a cluster (tests/slurm_cluster.py starts a one-node
# cluster of its own, then stops it): installed without starting any service (a policy-rc.d that
# says no, for the length of the install). Not part of setup: the demo needs no SLURM. Without
# root it names what is missing (the SLURM tests then fail, saying so).
SLURM_TOOLS := munged slurmctld slurmd sbatch srun squeue scancel scontrol sinfo
slurm-deps:
	@missing=""; for tool in $(SLURM_TOOLS); do \
	  PATH="$$PATH:/usr/sbin:/sbin" command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "make slurm-deps: missing$$missing; as root: apt-get install slurm-wlm munge (without them the SLURM tests fail)"; \
	  exit 0; fi; \
	policy=/usr/sbin/policy-rc.d; ours=""; \
	if [ ! -e $$policy ]; then printf '#!/bin/sh\nexit 101\n' > $$policy && chmod +x $$policy && ours=1; fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; status=$$?; \
	if [ -n "$$ours" ]; then rm -f $$policy; fi; exit $$status

setup: system-deps $(VENV)/.installed
	@test -d .dvc || $(BIN)/dvc init -q

# ruff: formatting, lint and import order; import-linter: the layers and the arrows that must never
# exist (both configured in pyproject.toml). `make format` fixes what ruff can.
lint: $(VENV)/.installed
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

format: $(VENV)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Two lanes, the same behaviours: `test` (CI) runs everything, fixtures required; `test-fast` leaves
# out what needs real processes (stages, DVC, DDP, SLURM, signals) and may start no Python process
# that imports torch (tests/conftest.py enforces it). --durations shows the slowest tests of each run.
test: setup lint slurm-deps
	LIGHTSAFT_REQUIRE_FIXTURES=1 $(BIN)/pytest -q --durations=20

test-fast: setup
	LIGHTSAFT_LANE=fast $(BIN)/pytest -q -m "not slow" --durations=10

demo: setup
	$(BIN)/lightsaft demo

repro: setup
	$(BIN)/dvc repro

ui: setup
	$(BIN)/lightsaft ui

# Options of `lightsaft ablate` go through ARGS: make ablate GRID=... ARGS='--jobs 4' (or '--executor slurm ...').
ablate: setup
	$(BIN)/lightsaft ablate $(GRID) $(ARGS)

bench: setup
	$(BIN)/python benchmarks/model_speed.py
	$(BIN)/python benchmarks/train_speed.py
	$(BIN)/python benchmarks/loader.py
	$(BIN)/python benchmarks/prepare_speed.py
	$(BIN)/python benchmarks/separate_eval.py
	$(BIN)/python benchmarks/bsseval.py
	$(BIN)/python benchmarks/stats_calibration.py
	$(BIN)/python benchmarks/window_edges.py

clean:
	rm -rf .pytest_cache build src/*.egg-info
