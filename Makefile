# The two commands: `make serve` and `make test`. Both set up everything on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
HOST ?= 127.0.0.1
SERVE_ARGS ?=

.PHONY: serve test lint format examples proto bench bench-peers bench-workers bench-ceiling bench-ab bench-queues bench-security bench-memory bench-runtimes bench-optimize bench-ray bench-attacks bench-transport clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "modelport needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(VENV)/.installed $@

serve: $(VENV)/.installed
	$(BIN)/modelport serve --host $(HOST) --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) $(SERVE_ARGS)

# The quality gates (lint), then the tests.
test: lint
	bash scripts/install_test_deps.sh
	$(BIN)/python -m pytest

# ruff (lint, format); mypy --strict on src/modelport; import-linter's layer contracts. Config
# for all three is in pyproject.toml.
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(VENV)/.installed-dev
	$(BIN)/ruff format src tests benchmarks scripts
	$(BIN)/ruff check --fix src tests benchmarks scripts

examples: $(VENV)/.installed
	$(BIN)/python scripts/make_examples.py

proto: $(VENV)/.installed-dev
	bash scripts/gen_grpc.sh

bench: $(VENV)/.installed-dev
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	bash benchmarks/setup_loadgen.sh
	$(BIN)/python benchmarks/serving_http.py

# modelport next to the peers (needs: bash ../shared/bench/setup.sh torch perf fastapi mlserver pytriton)
bench-peers: $(VENV)/.installed-dev
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	bash benchmarks/run_peers.sh $${TAG:-run} $${DURATION:-5} $${REPEATS:-1}

# one server process against two (--workers 2); needs: bash ../shared/bench/setup.sh torch perf
bench-workers: $(VENV)/.installed-dev
	bash benchmarks/run_workers.sh $${TAG:-run} $${ROUNDS:-3} $${DURATION:-5}

# cnn against the raw onnxruntime ceiling in alternating rounds; needs: setup.sh torch perf
bench-ceiling: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/ceiling_rounds.py --tag $${TAG:-run} --rounds $${ROUNDS:-5}

# this checkout against BEFORE (a commit; default HEAD~1) in alternating rounds, mlp and cnn at c=32
# with wrk, perf_analyzer HTTP and gRPC; makes a worktree + venv for BEFORE in /tmp and removes it
# afterwards; needs: bash ../shared/bench/setup.sh torch perf
bench-ab: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/ab_rounds.py --tag $${TAG:-run} --rounds $${ROUNDS:-3} \
		--before /tmp/modelport-ab-$${TAG:-run} --before-commit $$(git rev-parse --short $${BEFORE:-HEAD~1})

# mlp at concurrency 32 over REST (wrk) and gRPC (h2load): plain vs API key vs TLS vs both
bench-security: $(VENV)/.installed-dev
	command -v wrk >/dev/null && command -v h2load >/dev/null || \
		(apt-get update && apt-get install -y wrk nghttp2-client)
	$(BIN)/python benchmarks/security.py --tag $${TAG:-run} --rounds $${ROUNDS:-5} --dur $${DURATION:-8}

# mlp through Redis Streams, RabbitMQ and NATS JetStream (32 in flight) against modelport's REST JSON
# and a Celery worker on Redis, in alternating rounds; brokers: bash scripts/install_test_deps.sh
bench-queues: $(VENV)/.installed-dev
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	$(BIN)/python benchmarks/queues.py --tag $${TAG:-run} --rounds $${ROUNDS:-3} --dur $${DURATION:-10}

# modelport on Ray Serve (Ray's proxy and its HAProxy ingress) next to the shared bench's plain Ray
# Serve deployment and modelport alone, mlp at c=32 with wrk, in alternating rounds
bench-ray: $(VENV)/.installed-dev
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(BIN)/python benchmarks/ray_serve.py --tag $${TAG:-run} --rounds $${ROUNDS:-3} --dur $${DURATION:-10}

# a well-behaved gRPC client's p50/p99 while each HTTP/2 attack of issue 19 runs, against quiet
# windows in alternating rounds (server on CPU 0, clients on CPU 1)
bench-attacks: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/attacks.py --tag $${TAG:-run} --rounds $${ROUNDS:-3} --dur $${DURATION:-5}

# the HTTP/2 transport's floor: canned unary gRPC calls/s at concurrency 1 and 32, our server vs an
# h2-library connection behind the same seam vs grpc.aio, alternating rounds, h2load as the client
bench-transport: $(VENV)/.installed-dev
	command -v h2load >/dev/null || (apt-get update && apt-get install -y nghttp2-client)
	$(BIN)/python benchmarks/transport_floor.py --tag $${TAG:-run} --rounds $${ROUNDS:-5} --dur $${DURATION:-8}

# memory and start-up with both bench models in one server, next to MLServer (setup.sh mlserver)
bench-memory: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/memory.py --tag $${TAG:-run}

bench-runtimes: $(VENV)/.installed-dev
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	bash benchmarks/setup_loadgen.sh
	cd benchmarks && ../$(BIN)/python runtimes.py --tag $${TAG:-run}

# Original vs graph-optimized / int8 / fp16 / pruned / distilled, for a digits MLP and CNN
bench-optimize: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/optimize_digits.py --tag $${TAG:-run}

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .import_linter_cache
