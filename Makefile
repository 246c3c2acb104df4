# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.cxrfx-installed
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: demo test install clean label-env label bench zoo-check

install: $(STAMP)

# Everything goes through constraints.txt: an unpinned torch would pull GBs of CUDA packages.
$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m cxrfx demo --out $(DEMO_OUT)

# pytest exits 5 when it collected no test: make treats any non-zero exit as failure.
test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

# Benchmarks (ratios measured in one run) -> docs/benchmarks.md; BENCH_ARGS=--quick for a smoke run.
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache

# MONAI Label: its own venv (never the main .venv), built from the lock file constraints-label.txt and cached in
# ~/.cache/cxrfx/label-venv/<hash>; `make label` serves the bundles on 127.0.0.1 with the phantom studies, offline.
LABEL_PORT ?= 8000
LABEL_ARGS ?=
label-env:
	$(PYTHON) plugins/cxrfx/label/env.py

label: label-env
	PYTHONPATH=$(CURDIR)/plugins $$($(PYTHON) plugins/cxrfx/label/env.py) -m cxrfx.label serve --port $(LABEL_PORT) $(LABEL_ARGS)

# The Model Zoo's own CI run offline on the three packaged bundles (its pre-commit hooks, isort / black / flake8,
# ci/verify_bundle.py min and full, its unit-test runner on our test_<zoo_name>.py) against a local copy of the
# zoo's files; fetches nothing. Table: runs/zoo-check/zoo_check.md. make zoo-check ZOO=/path/to/model-zoo
ZOO ?=
ZOO_ARGS ?=
zoo-check: $(STAMP)
	@test -n "$(ZOO)" || { echo "usage: make zoo-check ZOO=/path/to/a/copy/of/model-zoo [ZOO_ARGS='--bundles finetune_seg']"; exit 2; }
	$(PY) -m cxrfx.packaging.zoo_check --zoo "$(ZOO)" $(ZOO_ARGS)
