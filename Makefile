# The two commands of the README: `make demo` and `make test`. Both create .venv
# when it is missing and install trainpipe into it (again only when pyproject.toml changed).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_WORKERS ?= 2

.PHONY: demo test test-optuna-oldest bench bench-gpu clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/trainpipe train

test: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) --durations=15

# The sweep and report tests on the oldest Optuna that pyproject.toml admits (installed
# beside the venv's own, in .optuna-oldest/, and put first on the import path).
OPTUNA_OLDEST := 3.6.0
test-optuna-oldest: $(STAMP)
	$(PY) -m pip install -q --no-deps --upgrade --target .optuna-oldest "optuna==$(OPTUNA_OLDEST)"
	PYTHONPATH=.optuna-oldest$${PYTHONPATH:+:$$PYTHONPATH} $(PY) -c "import optuna; print('testing on optuna', optuna.__version__)"
	PYTHONPATH=.optuna-oldest$${PYTHONPATH:+:$$PYTHONPATH} OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) tests/sweep tests/report

bench: $(STAMP)
	$(PY) -m bench

# Needs an NVIDIA GPU (refuses with a message otherwise); e.g. make bench-gpu ARGS="--cifar10 DIR".
bench-gpu: $(STAMP)
	$(PY) -m bench gpu $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .optuna-oldest
