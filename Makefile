# Two commands on a fresh machine: `make run` (demo) and `make test`.
# Everything else (environment, Kafka jars, broker) is created on demand.

PYTHON      ?= python3
VENV        ?= .venv
BIN         := $(VENV)/bin
KAFKA_PORT  ?= 9092
PYTEST_ARGS ?=
# Test processes (pytest-xdist) sharing one broker: most tests wait on Kafka's clocks
# (session timeouts, transaction timeouts), so three fit two cores.
TEST_PROCESSES ?= 3

# pytest exits 5 when a subset selects no tests; that is not a failure.
PYTEST = $(BIN)/pytest $(PYTEST_ARGS)
ALLOW_EMPTY = || [ $$? -eq 5 ]

.PHONY: install test chaos soak run bench bench-quick bench-windows-steady kafka-start kafka-stop clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

test: install
	$(PYTEST) -n $(TEST_PROCESSES) --dist loadgroup -m "not chaos" tests $(ALLOW_EMPTY)

chaos: install
	$(PYTEST) --durations=0 -m chaos tests $(ALLOW_EMPTY)

# The demo: a local broker (unless KAFKA_BOOTSTRAP_SERVERS is set), the running-sum job,
# a generator feeding it, progress and results. DEMO_ARGS=--keep-running leaves it up.
BENCH_VENV := .venv-bench

$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q -U pip
	$(BENCH_VENV)/bin/pip install -q -e '.[bench]'
	touch $@

# The benchmark suite: our job against a plain confluent-kafka loop and Quix Streams on
# one local broker; results and plots in docs/bench/, headline table in README.md.
bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/suite.py $(BENCH_ARGS)

bench-quick: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/suite.py --quick $(BENCH_ARGS)

# Ten minutes of a windowed job with state that has a time to live, at a steady rate:
# state size and RSS over time in docs/bench/steady-state.{json,png}.
bench-windows-steady: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/steady_state.py $(BENCH_ARGS)

# Ten minutes of input under SIGKILLs, zombies and a broker restart (own broker).
soak: install
	$(BIN)/python -m tests.soak --minutes $${SOAK_MINUTES:-10}

run: install
	$(BIN)/eos --log-level WARNING demo --port $(KAFKA_PORT) $(DEMO_ARGS)

kafka-start: install
	$(BIN)/eos kafka start --port $(KAFKA_PORT)

kafka-stop: install
	$(BIN)/eos kafka stop --port $(KAFKA_PORT)

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache test-output
