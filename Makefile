# Two entry points for a fresh clone: `make demo` (the whole path) and `make test`.
# Both create .venv and install the package with the pins in constraints.txt
# (torch==2.13.0: a looser torch spec would pull several GB of CUDA packages).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
NODE_STAMP := clients/node/node_modules/.installed-stamp
WEB_STAMP := clients/web/node_modules/.installed-stamp

.PHONY: setup demo test test-slow bench protos clean chromium redis-server

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

# The browser page's onnxruntime-web (pinned by clients/web/package-lock.json); skipped where npm is absent.
$(WEB_STAMP): clients/web/package.json clients/web/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd clients/web && npm ci --no-audit --no-fund --silent && touch node_modules/.installed-stamp; \
	else echo "npm not found: skipping the web page's packages"; fi

# Debian's Chromium for the browser tests (Playwright drives the system browser; no browser download).
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && apt-get install -y -qq chromium; \
		else echo "chromium not found (and not root): the browser tests skip; install it with apt-get install -y chromium"; fi; \
	fi

# Debian's redis-server for the cluster tests (the session store; Envoy comes with the cluster extra).
redis-server:
	@if ! command -v redis-server >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && apt-get install -y -qq redis-server; \
		else echo "redis-server not found (and not root): the cluster tests skip; install it with apt-get install -y redis-server"; fi; \
	fi

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP) $(NODE_STAMP) $(WEB_STAMP) chromium redis-server
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

protos: $(STAMP)
	$(PY) -m rnnpolicy.v1.regenerate

clean:
	rm -rf $(VENV) demo .pytest_cache
