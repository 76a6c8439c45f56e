# Werkstroom: `make run` starts the whole pipeline on embedded Kafka + ClickHouse,
# `make test` runs the tests. Both install into .venv first when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run demo test unit integration bench bench-pg lint fmt clean install chromium node-clients lock geo geo-update

install: $(STAMP) geo

# Re-install whenever pyproject.toml changes. `embedded`: chdb and the tansu broker, for
# `make run` and the tests' embedded Kafka and ClickHouse (the image leaves them out); `bench`:
# the PostgreSQL driver of `make bench-pg`.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,test,dev,bench]'
	@touch $(STAMP)

# The image's dependencies (pyproject's, no extras), every one pinned with its hashes, resolved
# for the image's Python 3.11 on Linux x86_64 from any machine; deploy/Dockerfile installs them
# with --require-hashes. Run it after changing a dependency (tests/unit/deploy/test_image.py fails
# while the lock does not satisfy pyproject.toml); pins already in the lock are kept where they
# still fit, `make lock LOCK_UPGRADE=--upgrade` moves all to the newest. uv runs from its own venv.
LOCK        := deploy/requirements.lock
LOCK_TOOL   := $(VENV)/.lock-tool
LOCK_UPGRADE ?=
lock:
	@test -x $(LOCK_TOOL)/bin/uv || { $(PYTHON) -m venv $(LOCK_TOOL) && \
	  $(LOCK_TOOL)/bin/python -m pip install --quiet 'uv==0.13.9'; }
	$(LOCK_TOOL)/bin/uv pip compile pyproject.toml --quiet --generate-hashes $(LOCK_UPGRADE) \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	  --custom-compile-command 'make lock' --output-file $(LOCK)

# The IP-to-country database ingest reads (werkstroom.geo): the npm package pinned, with its
# integrity hash, by geo/package-lock.json, installed into the git-ignored geo/node_modules when
# missing or when the lock changed. Without node/npm ingest still runs, storing no country.
GEO := geo
geo:
	@if ! command -v npm >/dev/null; then \
	  echo "npm not found: not installing the country database ($(GEO)/): ingest stores country \"\"" >&2; \
	elif [ ! -f $(GEO)/node_modules/.installed ] || \
	     [ $(GEO)/package-lock.json -nt $(GEO)/node_modules/.installed ]; then \
	  cd $(GEO) && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	fi

# The newest version of the database into geo/package.json and its lock (commit both), installed,
# and what it is: its version and the date it was built.
geo-update:
	cd $(GEO) && npm install --save-exact --no-audit --no-fund --loglevel=error \
	  @ip-location-db/geo-whois-asn-country-mmdb@latest && touch node_modules/.installed
	$(BIN)/python -m werkstroom.geo

run: $(STAMP) geo
	WERKSTROOM_LOG_FORMAT=$${WERKSTROOM_LOG_FORMAT:-console} $(BIN)/werkstroom serve --target all

# With `make run` up (another terminal): 60 days of simulated history and a funnel (ready in
# seconds, its figures printed), then live visitors browsing until Ctrl-C.
demo: $(STAMP) geo
	$(BIN)/werkstroom demo --seconds inf

# Two workers (pytest-xdist), a test file each at a time: each worker starts its own embedded
# Kafka and ClickHouse (tests/conftest.py `infra`), so files never share them. The suite is
# mostly waiting on brokers and subprocesses: 15.6 min in one worker, 8.2 in two on 2 cores.
TEST_WORKERS ?= 2
test: $(STAMP) geo chromium node-clients
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The dashboard's real-browser test (tests/e2e/test_dashboard.py) drives Debian's chromium
# through Playwright (no `playwright install`): installed here when missing and we are root.
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "/usr/bin/chromium is missing: install Debian's chromium (root) or the browser test fails" >&2; \
	  fi; \
	fi

# The Node.js SDKs the client matrix sends with (tests/clients/node), at the versions of its
# package-lock.json: installed when missing or when the lock changed; without node/npm the
# matrix's Node test skips.
NODE_CLIENTS := tests/clients/node
node-clients:
	@if ! command -v node >/dev/null || ! command -v npm >/dev/null; then \
	  echo "node/npm not found: not installing $(NODE_CLIENTS) (its test will skip)" >&2; \
	elif [ ! -f $(NODE_CLIENTS)/node_modules/.installed ] || \
	     [ $(NODE_CLIENTS)/package-lock.json -nt $(NODE_CLIENTS)/node_modules/.installed ]; then \
	  cd $(NODE_CLIENTS) && npm ci --no-audit --no-fund && touch node_modules/.installed; \
	fi

unit: $(STAMP) geo
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP) geo
	$(BIN)/python -m pytest -q -m integration

bench: $(STAMP) geo
	$(BIN)/python bench/ingest_bench.py
	$(BIN)/python bench/aggregator_bench.py
	$(BIN)/python bench/refresh_bench.py
	$(BIN)/python bench/load_bench.py
	$(BIN)/python bench/lookup_bench.py
	$(BIN)/python bench/api_bench.py
	$(BIN)/python bench/disk_bench.py
	$(BIN)/python bench/crash_bench.py
	$(BIN)/python bench/soak_bench.py

# Opt-in, not in `make bench`: the seed's design (PostgreSQL) against Werkstroom over the same
# 10M events (bench/pg_bench.py, about half an hour). Debian's postgresql is installed when
# missing and we are root; without it, or not root, the bench says why and exits 0.
bench-pg: $(STAMP) geo
	@if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	fi
	$(BIN)/python bench/pg_bench.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .werkstroom .pytest_cache .ruff_cache $(NODE_CLIENTS)/node_modules $(GEO)/node_modules
