# The two commands: `make demo` and `make test`. Both create .venv when it is
# missing and (re)install when requirements.txt or setup.cfg changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install constraints demo test test-matrix test-slow bench clean

install: $(STAMP)

# constraints.txt pins what CI tested, so a fresh machine gets the same.
$(STAMP): requirements.txt constraints.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -r requirements.txt -e .
	touch $(STAMP)

# The versions installed now become the pins (after a green `make test`).
constraints: install
	{ sed -n '1,/^#   make constraints/p' constraints.txt; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^frontiers'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

demo: install
	$(VENV)/bin/frontiers demo --workdir=runs/demo

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
	$(VENV)/bin/frontiers bench --quick --out=bench.json

clean:
	rm -rf runs .pytest_cache
