# brainage: `make demo` and `make test` set up everything they need on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# The CPU build of PyTorch; only used when no NVIDIA GPU is found and the CPU
# wheel is not already reachable through pip's configured indexes.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
BIDS_VALIDATOR_VERSION ?= 1.15.0
DEMO_DIR ?= brainage-demo
# Bounded network waits for apt-get, so a stalled mirror fails the step instead of holding it.
APT_OPTS := -o Acquire::http::Timeout=60 -o Acquire::https::Timeout=60 -o Acquire::Retries=3

.PHONY: install install-test demo test test-all lint bench tools chromium clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# PyTorch first, explicitly: the CUDA build where `nvidia-smi` sees a GPU, the
# CPU build otherwise, so that resolving the package's `torch` requirement
# never pulls the multi-GB CUDA wheels onto a machine without a GPU.
$(VENV)/.torch-installed: | $(BIN)/python
	@start=$$(date +%s); \
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  echo "NVIDIA GPU found: installing the CUDA build of torch $(TORCH_VERSION)"; \
	  $(BIN)/pip install --quiet "torch==$(TORCH_VERSION)"; \
	else \
	  echo "no GPU: installing the CPU build of torch $(TORCH_VERSION)"; \
	  $(BIN)/pip install --quiet "torch==$(TORCH_VERSION)+cpu" 2>/dev/null \
	  || $(BIN)/pip install --quiet "torch==$(TORCH_VERSION)" --index-url $(TORCH_CPU_INDEX); \
	fi && echo "installed torch in $$(( $$(date +%s) - start )) s"
	touch $@

# The runtime (what `make demo` needs), then the test tools on top (`make test`); each step
# says how long it took, since installation is a new user's first wait.
$(VENV)/.installed: pyproject.toml $(VENV)/.torch-installed
	@start=$$(date +%s); echo "installing brainage and its dependencies into $(VENV) (about 2 GB, mostly PyTorch, ANTs and MONAI)"; \
	$(BIN)/pip install --quiet -e . && echo "installed in $$(( $$(date +%s) - start )) s"
	touch $@

$(VENV)/.test-installed: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.test-installed

# The official BIDS validator (npm package), used by the test suite. Three tries, each bounded
# by a timeout: a registry hiccup failed one clean-clone CI run (the retry a minute later installed
# it), and a stalled connection once held another run until its 90-minute limit.
.tools/node_modules/.bin/bids-validator:
	@for try in 1 2 3; do \
		timeout 300 npm install --no-audit --no-fund --loglevel=error --prefix .tools \
			--fetch-timeout=60000 --fetch-retries=2 \
			"bids-validator@$(BIDS_VALIDATOR_VERSION)" && break; \
		echo "npm install of bids-validator failed (try $$try of 3)"; sleep 10; \
	done; test -x $@ || { echo "bids-validator is not installed: npm install failed 3 times"; exit 1; }

# Debian's chromium for the browser test of the reports (Playwright drives it through
# its executable path; no browser is downloaded). Installed with apt-get when run as root.
chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's chromium for the browser test"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_OPTS) chromium >/dev/null \
	  || { apt-get update -qq $(APT_OPTS) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_OPTS) chromium >/dev/null; }; \
	else echo "the browser test needs Debian's chromium: sudo apt-get install chromium"; exit 1; fi

tools: .tools/node_modules/.bin/bids-validator chromium

demo: install
	$(BIN)/brainage demo $(DEMO_DIR)

test: install-test tools
	$(BIN)/python -m pytest -q -m "not gpu"

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: install-test
	$(BIN)/python bench/run

clean:
	rm -rf $(VENV) .tools .pytest_cache $(DEMO_DIR)
