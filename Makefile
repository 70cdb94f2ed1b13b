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
PYTEST_ARGS ?=

.PHONY: help setup java train package serve deploy apply predict demo test unit integration stop status clean

help:
	@echo "make demo      set up, quick-train, package, serve, deploy and predict ($(MODEL))"
	@echo "make test      run the whole test suite (starts its own TorchServe)"
	@echo "make train | package | serve | deploy | apply | predict | status | stop | clean   (MODEL=, VERSION=)"

# The virtual environment, made and filled on first use; redone when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

setup: $(STAMP)

java:
	@scripts/check-java.sh

train: setup
	$(TS) train $(MODEL)

package: setup
	$(TS) package $(MODEL) --version $(VERSION)

serve: setup java
	$(TS) serve start

deploy: setup
	$(TS) deploy $(MODEL) --version $(VERSION)

apply: setup
	$(TS) apply deploy.yaml

predict: setup
	$(BIN)/python scripts/demo_request.py $(MODEL) | $(TS) predict $(MODEL) --version $(VERSION) --json "$$(cat)"

status: setup
	$(TS) serve status

stop: setup
	$(TS) serve stop

# The demo reuses what a previous run left (checkpoint, archive, running server, registration),
# so running it twice in a row just works. deploy.yaml says what the server should run.
demo: setup java
	@set -e; start=$$(date +%s); \
	if [ -z "$$(ls -d checkpoints/$(MODEL)/*/meta.json 2>/dev/null)" ]; then $(TS) train $(MODEL) --quick; \
	else echo "checkpoint of $(MODEL) exists: skipping training (make train for a new one)"; fi; \
	if [ ! -f model_store/$(MODEL)-$(VERSION).mar ]; then $(TS) package $(MODEL) --version $(VERSION); \
	else echo "model_store/$(MODEL)-$(VERSION).mar exists: skipping packaging"; fi; \
	$(TS) serve start; \
	$(TS) apply deploy.yaml; \
	echo; echo "prediction for $(MODEL) $(VERSION):"; \
	$(BIN)/python scripts/demo_request.py $(MODEL) | $(TS) predict $(MODEL) --version $(VERSION) --json "$$(cat)"; \
	echo; $(TS) models; \
	echo; echo "demo done in $$(( $$(date +%s) - start )) s (after set-up). The server keeps running: make stop"

test: setup java
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: setup
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

integration: setup java
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

clean:
	-@test -x $(TS) && $(TS) serve stop
	rm -rf checkpoints model_store .torchship .pytest_cache
