# wasq: the two commands a newcomer needs are `make demo` and `make test`.
.PHONY: all build install tasks demo test test-unit lint fmt bench fuzz clean

CARGO ?= cargo
WASQ  := $(CARGO) run -q -p wasq-host --bin wasq --

all: build tasks

build:
	$(CARGO) build -p wasq-host --bin wasq

# `wasq` on PATH (~/.cargo/bin), built with the release profile.
install:
	$(CARGO) install --locked --path host --bin wasq

# The example and test guests, compiled to wasm32-wasip1 into target/tasks/.
tasks:
	./scripts/build-tasks.sh

# The whole pipeline on the embedded broker with in-process hosts.
demo: tasks
	$(WASQ) demo

# Unit, integration and end-to-end tests (they start their own redis-server).
# The guests are built from their lock file, and every test that needs one
# fails (rather than skips) when it is missing.
test:
	./scripts/build-tasks.sh --locked
	WASQ_REQUIRE_TASKS=1 $(CARGO) test --workspace --all-targets
	WASQ_REQUIRE_TASKS=1 $(CARGO) test --workspace --doc
	$(MAKE) python-tests

# The Python client's tests (clients/python/tests): the package and pytest in
# a virtualenv under target/python-venv, against a redis-server and `wasq
# host run` processes the tests start, with the binary and the example tasks
# built here (WASQ_BIN and WASQ_EXAMPLES_WASM point the tests elsewhere).
# `make test` runs them with the `wasq` its own `cargo test` built (the same
# features as the other tests, so nothing is compiled twice).
.PHONY: test-python python-tests
PYTHON ?= python3
PYVENV := target/python-venv
test-python: build
	./scripts/build-tasks.sh --locked
	$(MAKE) python-tests
python-tests:
	rm -rf clients/python/build   # setuptools keeps stale copies of the Lua links there
	$(PYTHON) -m venv $(PYVENV)
	$(PYVENV)/bin/pip install -q --disable-pip-version-check ./clients/python pytest
	cd clients/python && WASQ_BIN="$${WASQ_BIN:-$(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/debug/wasq}" \
		$(CURDIR)/$(PYVENV)/bin/python -m pytest -q tests

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings

fmt:
	$(CARGO) fmt --all

# Throughput, latency and cold start against a throwaway redis-server.
bench: tasks
	./scripts/bench.sh

# Fuzzing on stable Rust, not part of `make test`: wasm-smith modules through
# the sandbox, arbitrary bytes through module validation, args and envelope
# decoding, for FUZZ_SECONDS in all (split across the targets). Fails on any
# panic or misclassified outcome. Debug build on purpose: overflow checks on.
FUZZ_SECONDS ?= 300
fuzz:
	$(CARGO) run -q -p wasq-fuzz -- --seconds $(FUZZ_SECONDS)

clean:
	$(CARGO) clean
	rm -rf tasks/target
