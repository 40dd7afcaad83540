# Two entry points for a fresh clone: `make demo` (the whole path) and `make test`.
# Both create .venv and install the package with the pins in constraints.txt
# (torch==2.13.0: a looser torch spec would pull several GB of CUDA packages).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
NODE_STAMP := clients/node/node_modules/.installed-stamp
WEB_STAMP := clients/web/node_modules/.installed-stamp

.PHONY: setup demo test test-slow bench protos clean cpp system-packages

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

# Debian packages some tests need: Chromium for the browser tests (Playwright drives the system browser; no
# browser download), g++ and cmake for the C++ client and the AOTInductor tests, redis-server for the cluster
# tests (Envoy comes with the cluster extra). Installed when running as root
# (CI does); elsewhere those tests skip, saying why (with RNNPOLICY_REQUIRE_ALL=1, set by .ci/run, they fail).
SYSTEM_PACKAGES := /usr/bin/chromium:chromium /usr/bin/g++:g++ /usr/bin/cmake:cmake /usr/bin/redis-server:redis-server
system-packages:
	@missing=""; for entry in $(SYSTEM_PACKAGES); do \
		[ -x "$${entry%%:*}" ] || missing="$$missing $${entry##*:}"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		else echo "not installed (and not root):$$missing; the tests that need them skip (apt-get install -y$$missing)"; fi; \
	fi

# The C++ control loop build/cpp/policy_loop (clients/cpp), against the libtorch that the torch wheel ships.
cpp: $(STAMP) system-packages
	cmake -S clients/cpp -B build/cpp -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')"
	cmake --build build/cpp -j 2

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP) $(NODE_STAMP) $(WEB_STAMP) system-packages
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

protos: $(STAMP)
	$(PY) -m rnnpolicy.v1.regenerate

clean:
	rm -rf $(VENV) demo .pytest_cache
