# Two commands matter: `make run` (the service on http://127.0.0.1:8000) and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0
HOST    ?= 127.0.0.1
PORT    ?= 8000
# CI=1 makes a missing PostgreSQL/Redis an error instead of a skip and adds the chaos suite.
CI      ?=
PYTEST_MARKERS := $(if $(CI),not slow and not load and not gpu,not slow and not chaos and not contract and not load and not gpu)

.PHONY: run test venv test-slow bench openapi clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: a looser requirement resolved by pip alone may pull a multi-GB CUDA build.
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/crma dev --host $(HOST) --port $(PORT)

test: $(STAMP)
	CRMA_REQUIRE_SERVICES=$(if $(CI),1,0) $(BIN)/python -m pytest -m "$(PYTEST_MARKERS)" $(ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(ARGS)

openapi: $(STAMP)
	$(BIN)/crma openapi > openapi/openapi.json

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
