# Every target sets up what it needs: a .venv from PyPI, and Debian packages when missing.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PORT ?= 8111

.PHONY: run test clean

$(STAMP): setup.py
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[cloud,dev]'
	touch $@

run: $(STAMP)
	$(VENV)/bin/cra-cloud --port $(PORT) --seed etc/cra-cloud-seed.json

test: $(STAMP)
	$(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
