# `make play` and `make test` each do their own set-up: a virtual environment in .venv
# with this package installed. On a machine without CUDA, torch is pinned to the local
# CPU build so that pip does not pull several GB of CUDA packages.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 1)
TORCH_PIN := $(if $(HAS_CUDA),torch,torch==2.13.0)
ARGS ?=

.PHONY: play test lint setup browser nginx clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

play: $(STAMP)
	$(VENV)/bin/wm play $(ARGS)

# Headless Chromium from Debian's packages, for the browser tests (Playwright drives it).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# nginx from Debian's packages, for the scale-out test (tests/test_scale.py) and
# `wm play --workers N`; the test runs it as a plain foreground process, not as a service.
nginx:
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || { \
	  echo "installing Debian's nginx-light for the scale-out test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null; }

test: $(STAMP) browser nginx
	$(PY) -m pytest -q $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check worldmodel distill app tests scripts

clean:
	rm -rf $(VENV) .pytest_cache
