# torchship: train -> package -> deploy in one go.   make demo | make test
# Every step honours MODEL= and VERSION=.

SHELL   := /bin/bash
PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
TS      := $(BIN)/torchship
STAMP   := $(VENV)/.installed
MODEL   ?= mlp
VERSION ?= 1.0
# the models `make demo` trains, packages and deploys (deploy.yaml lists the same)
MODELS  ?= mlp sentiment fashion recommender embedder textgen
PYTEST_ARGS ?=
# The OS packages the goals need (scripts/setup-os.sh installs what is missing): Python's venv
# until .venv exists, Java for TorchServe (not for `make data` or `make unit`), Debian's
# Fashion-MNIST for the data (not for `make serve`), and wrk and nginx (the TLS gateway) for the
# goals that load-test or run the integration tests.
OS_NEEDS ?= $(if $(wildcard $(BIN)/python),,venv) $(if $(filter-out data unit,$(MAKECMDGOALS)),java) \
            $(if $(filter-out serve,$(MAKECMDGOALS)),fashion-mnist) \
            $(if $(filter test integration bench,$(MAKECMDGOALS)),wrk nginx)

.PHONY: help setup os java data train package serve deploy apply predict demo test lint types unit integration bench dist stop status clean

help:
	@echo "make demo      set up, quick-train, package, serve, deploy and predict ($(MODEL))"
	@echo "make test      lint, types and the whole test suite (starts its own TorchServe)"
	@echo "make train | package | serve | deploy | apply | predict | bench | status | stop | clean   (MODEL=, VERSION=)"

# The virtual environment, made and filled on first use; redone when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { PYTHON=$(PYTHON) scripts/setup-os.sh venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

setup: $(STAMP)

# OS packages: silent when all are there; as root apt-get, else sudo -n, else one line saying how.
os:
	@PYTHON=$(PYTHON) scripts/setup-os.sh $(OS_NEEDS)

java:
	@scripts/setup-os.sh java

# The example data (fetched and checked by sha256) and the golden sets built from it.
data: os setup
	$(BIN)/python scripts/fetch_data.py$(if $(FASHION_MNIST_DIR), --fashion-dir $(FASHION_MNIST_DIR))
	$(BIN)/python scripts/make_golden.py all

train: data
	$(TS) train $(MODEL)

package: setup
	$(TS) package $(MODEL) --version $(VERSION)

serve: os setup
	$(TS) serve start

deploy: setup
	$(TS) deploy $(MODEL) --version $(VERSION)

apply: setup
	$(TS) apply deploy.yaml

predict: setup
	scripts/demo_predict.sh $(MODEL) $(VERSION)

status: setup
	$(TS) serve status

stop: setup
	$(TS) serve stop

# The demo reuses what a previous run left (checkpoint, archive, running server, registration),
# so running it twice in a row just works. deploy.yaml says what the server should run.
demo: os data
	@set -e; start=$$(date +%s); \
	for m in $(MODELS); do \
	  if [ -z "$$(ls -d checkpoints/$$m/*/meta.json 2>/dev/null)" ]; then $(TS) train $$m --quick; \
	  else echo "checkpoint of $$m exists: skipping training (make train MODEL=$$m for a new one)"; fi; \
	  if [ ! -f model_store/$$m-$(VERSION).mar ]; then $(TS) package $$m --version $(VERSION); \
	  else echo "model_store/$$m-$(VERSION).mar exists: skipping packaging"; fi; \
	done; \
	$(TS) serve start; \
	$(TS) apply deploy.yaml; \
	for m in $(MODELS); do echo; echo "== prediction of $$m $(VERSION):"; scripts/demo_predict.sh $$m $(VERSION); done; \
	echo; $(TS) models; \
	echo; echo "demo done in $$(( $$(date +%s) - start )) s (after set-up). The server keeps running: make stop"

# Lint and types first (seconds), then every test.
test: os lint types data
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .

types: setup
	$(BIN)/python -m mypy

unit: data
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

integration: os data
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

# The serving benchmark: torchship, stock TorchServe and the peers users deploy instead (FastAPI,
# LitServe, BentoML, Ray Serve), side by side. The peers live in their own virtual environment,
# made here from benchmarks/peers/requirements.txt (redone when that file changes); a peer that
# does not install is skipped by the benchmark with the reason.
PEERS_VENV  := .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed

$(PEERS_STAMP): benchmarks/peers/requirements.txt | $(STAMP)
	@test -x $(PEERS_VENV)/bin/python || $(BIN)/python -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -qq --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install -qq -r benchmarks/peers/requirements.txt \
	  || $(PEERS_VENV)/bin/python -m pip install -qq -r <(grep -v '^ray' benchmarks/peers/requirements.txt) \
	  || echo "bench: the peers did not all install: the benchmark skips those missing"
	@touch $@

bench: os data $(PEERS_STAMP)
	$(BIN)/python benchmarks/bench_serving.py
	$(BIN)/python benchmarks/bench_gateway.py

# The sdist and the wheel (built from the sdist, so the wheel holds only what the sdist ships):
# `pip install dist/torchship-*.whl` gives a working `torchship` anywhere (docs/your-own-model.md).
dist: setup
	rm -rf dist
	$(BIN)/python -c "from setuptools import build_meta as b; b.build_sdist('dist')"
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation -w dist dist/torchship-*.tar.gz
	@ls dist

clean:
	-@test -x $(TS) && $(TS) serve stop
	rm -rf checkpoints model_store .torchship .pytest_cache
