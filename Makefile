# Two entry points for a fresh clone: `make demo` (the whole path) and `make test`.
# Both create .venv and install the package with the pins in constraints.txt
# (torch==2.13.0: a looser torch spec would pull several GB of CUDA packages).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
NODE_STAMP := clients/node/node_modules/.installed-stamp

.PHONY: setup demo test test-slow bench protos clean system-deps

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[train,dev,cluster]'
	touch $@

# The Node.js examples' packages; skipped (and their tests skip, saying why) where npm is absent.
$(NODE_STAMP): clients/node/package.json
	@if command -v npm >/dev/null 2>&1; then \
		cd clients/node && ONNXRUNTIME_NODE_INSTALL=skip npm install --no-audit --no-fund --silent && touch node_modules/.installed-stamp; \
	else echo "npm not found: skipping the Node.js client packages"; fi

demo: $(STAMP)
	$(PY) examples/demo.py

# redis-server for the cluster tests (Debian's package), installed when running as root (CI does);
# elsewhere those tests skip, saying why (with RNNPOLICY_REQUIRE_ALL=1, set by .ci/run, they fail instead).
system-deps:
	@if ! command -v redis-server >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; \
		else echo "redis-server not found (not root, or no apt-get): the cluster tests will skip"; fi; \
	fi

test: $(STAMP) $(NODE_STAMP) system-deps
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

protos: $(STAMP)
	$(PY) -m rnnpolicy.v1.regenerate

clean:
	rm -rf $(VENV) demo .pytest_cache
