# The two commands of the README:
#   make demo   set up everything and run the demo
#   make test   set up everything and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-all bench system-deps

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "diml_jax needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[demo,test,tfds]'
	touch $@

# Optional system packages: the OpenClipArt demo set and Chromium for the HTML-report
# test. Installed when we may (root with apt-get); otherwise the demo falls back to the
# synthetic set and those tests skip, each saying why.
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  dpkg -s openclipart-png chromium >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openclipart-png chromium >/dev/null; } \
	  || echo "note: could not install openclipart-png/chromium; the demo uses the synthetic set"; \
	else echo "note: run 'sudo apt-get install openclipart-png chromium' for the demo set and the browser test"; fi

# Trains DIML on the clip-art demo set (minutes on a CPU), then writes the retrieval
# report and flow figures to runs/demo/eval/step_*/.
demo: system-deps $(VENV)/.installed
	$(PY) train.py --config configs/demo.py --workdir runs/demo
	$(PY) eval.py --workdir runs/demo --explain

test: system-deps $(VENV)/.installed
	$(PY) -m pytest

test-all: system-deps $(VENV)/.installed
	$(PY) -m pytest -m ''

bench: $(VENV)/.installed
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done
