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

.PHONY: run test venv browser test-slow bench openapi screenshots clean

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

# The dashboard tests (tests/web) drive a headless Chromium. CI installs Debian's package
# when none is found; elsewhere those tests skip and say why. $CRMA_CHROMIUM picks another.
browser:
	@if [ -n "$$CRMA_CHROMIUM" ] || command -v chromium >/dev/null 2>&1 \
	    || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && { [ "$$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then \
	    as_root=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	    echo "installing Chromium for the browser tests (apt-get install chromium)"; \
	    $$as_root apt-get install -y -q chromium >/dev/null 2>&1 \
	    || { $$as_root apt-get update -q >/dev/null && $$as_root apt-get install -y -q chromium >/dev/null; }; \
	else echo "no Chromium and no usable apt-get: the browser tests will be skipped"; fi

test: $(STAMP) $(if $(CI),browser)
	CRMA_REQUIRE_SERVICES=$(if $(CI),1,0) $(BIN)/python -m pytest -m "$(PYTEST_MARKERS)" $(ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(ARGS)

# Refresh the README's dashboard pictures (docs/images) from the browser tests.
screenshots: $(STAMP) browser
	CRMA_SCREENSHOT_DIR=$(CURDIR)/docs/images $(BIN)/python -m pytest -m "not slow" tests/web $(ARGS)

openapi: $(STAMP)
	$(BIN)/crma openapi > openapi/openapi.json

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
