# The two commands: `make demo` and `make test`. Both create .venv when it is
# missing and (re)install when requirements.txt or setup.cfg changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-matrix test-slow bench clean

install: $(STAMP)

$(STAMP): requirements.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -e .
	touch $(STAMP)

demo: install
	$(PY) launch/demo.py --workdir=runs/demo

# Two workers (pytest-xdist), each taking whole test files: most tests are
# compile-bound and single-threaded, so two cores run them in about 0.7x the time.
TEST_WORKERS ?= 2

test: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# Every workload through every launch scenario (kill, SIGTERM, full disk,
# read-only checkpoints, corrupt checkpoint, 2 processes): about N minutes.
test-matrix: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup -m matrix

# Long experiments (minutes): the acceptance runs on real data.
test-slow: install
	$(PY) -m pytest -m slow

# JAX against its PyTorch twins, quick (torch is the `bench` extra).
bench: install
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) launch/bench.py --quick --out=bench.json

clean:
	rm -rf runs .pytest_cache
