# Two entry points that work on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test,ray]'
	touch $@

.PHONY: demo test test-all bench
demo: $(VENV)/.installed  ## explain the bundled sample with the bundled demo CNN -> hyinf-out/
	$(VENV)/bin/hyinf explain demo --out hyinf-out

test: $(VENV)/.installed  ## the CI suite (long cases excluded)
	$(PY) -m pytest -q

test-all: $(VENV)/.installed  ## including the cases marked slow
	$(PY) -m pytest -q -m ''

bench: $(VENV)/.installed  ## the engine benchmark; rewrites the table in docs/benchmarks.md
	$(PY) benchmarks/engine_speed.py --write docs/benchmarks.md
