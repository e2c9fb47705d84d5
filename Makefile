# wasq: the two commands a newcomer needs are `make demo` and `make test`.
.PHONY: all build tasks demo test test-unit lint fmt bench clean

CARGO ?= cargo
WASQ  := $(CARGO) run -q -p wasq-host --bin wasq --

all: build tasks

build:
	$(CARGO) build -p wasq-host --bin wasq

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

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings

fmt:
	$(CARGO) fmt --all

# Throughput, latency and cold start against a throwaway redis-server.
bench: tasks
	./scripts/bench.sh

clean:
	$(CARGO) clean
	rm -rf tasks/target
