# rigpilot: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint typecheck unit bench-sim bench-observe bench-decide bench-curtail bench-power-off bench-backtest bench-metrics bench-persist backtest-sample backtest-docs soak clean

# pip runs --quiet (its output is hundreds of lines); these echo lines say what is going on.
$(STAMP): pyproject.toml constraints.txt
	@echo "make setup: creating the virtual environment $(VENV) with $(PYTHON) ($$($(PYTHON) --version 2>&1))"
	$(PYTHON) -m venv $(VENV)
	@echo "make setup: installing rigpilot and the exact dependency versions of constraints.txt into $(VENV)"
	@echo "make setup: this takes a minute or two and prints nothing more unless something fails"
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)
	@echo "make setup: done; next: make demo (a simulated fleet), make test"

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/rigpilot demo --live

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# pytest-xdist workers (TEST_WORKERS=0: one process). Most of the suite waits on subprocesses,
# sockets, brokers and daemons' ticks, so more workers than the 2 cores it was sized on pay off.
# Each worker has a network namespace and a simulated fleet of its own (tests/conftest.py).
# --dist loadgroup keeps the tests of an xdist_group (the wheel's) on one worker.
TEST_WORKERS ?= 4
unit: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

test: lint typecheck unit

bench-sim: $(STAMP)
	$(BIN)/python -m bench.sim_rps

bench-observe: $(STAMP)
	$(BIN)/python -m bench.observe $(ARGS)

bench-decide: $(STAMP)
	$(BIN)/python -m bench.decide

soak: $(STAMP)
	$(BIN)/python -m bench.soak

bench-curtail: $(STAMP)
	$(BIN)/python -m bench.curtail

bench-power-off: $(STAMP)
	$(BIN)/python -m bench.power_off

bench-backtest: $(STAMP)
	$(BIN)/python -m bench.backtest

bench-metrics: $(STAMP)
	$(BIN)/python -m bench.metrics

bench-persist: $(STAMP)
	$(BIN)/python -m bench.persist

backtest-sample: $(STAMP)
	$(BIN)/python -m scripts.make_backtest_sample

backtest-docs: $(STAMP)
	$(BIN)/python -m scripts.backtest_docs --write

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
