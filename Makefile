# lowbit — the two set-up commands of the README, and their parts.
# torch is installed first, pinned, so pip takes the local CPU build instead of a CUDA one.
PYTHON ?= python3
PIP = $(PYTHON) -m pip
TORCH_PIN = torch==2.13.0

.PHONY: install install-test demo test bench

install:
	$(PIP) install --quiet $(TORCH_PIN)
	$(PIP) install --quiet -e ".[fast]"

install-test: install
	$(PIP) install --quiet -e ".[test]"

demo: install
	$(PYTHON) -m lowbit formats
	$(PYTHON) -m lowbit info posit8_es2
	$(PYTHON) -m lowbit explain -5.75 fp32
	$(PYTHON) -m lowbit explain 3.3 posit8_es2
	$(PYTHON) -m lowbit explain -5 int8

test: install-test
	$(PYTHON) -m pytest -q

bench: install
	$(PIP) install --quiet -e ".[bench]"
	$(PYTHON) benchmarks/bench_formats.py --out benchmarks/results
