# The commands the README shows. Every target sets up what it needs itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Debian packages the tests use (installed when run as root and missing).
TEST_DEBS := apt apt-utils gnupg dpkg-dev opentracker nginx-light aria2 transmission-cli \
	transmission-daemon xz-utils bzip2 \
	zstd lz4 groff-base man-db chromium
ARGS ?=
# make run is a one-machine trial: discovery stays off the network (PEX only talks to
# peers you name). On a real LAN: make run DISCOVERY=lsd,dht,pex
DISCOVERY ?= pex

.PHONY: run test lint format unit debs venv bench-serve bench-swarm bench-fleet bench-index bench-load bench-speed bench-churn bench-lan bench clean

venv: $(VENV)/.stamp

$(VENV)/.stamp: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

debs:
	@missing=$$(for p in $(TEST_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian packages: $$missing"; \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
		else \
			echo "not root: tests needing $$missing will be skipped"; \
		fi; \
	fi

run: venv
	@echo "debtorrent: add one of these to apt (path form or proxy form):"
	@echo "  deb http://localhost:9988/deb.example.org/debian bookworm main"
	@echo '  Acquire::http::Proxy "http://localhost:9988/";'
	$(PY) bin/debtorrent --discovery $(DISCOVERY) $(ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: venv debs lint
	$(VENV)/bin/pytest $(ARGS)

unit: venv
	$(VENV)/bin/pytest tests/unit $(ARGS)

bench-serve: venv debs
	$(PY) bench/serve.py

bench-swarm: venv debs
	$(PY) bench/swarm.py

bench-fleet: venv debs
	$(PY) bench/fleet.py

bench-index: venv
	$(PY) bench/index.py

bench-load: venv debs
	$(PY) bench/load.py $(ARGS)

bench-speed: venv debs
	$(PY) bench/speed.py $(ARGS)

bench-churn: venv debs
	$(PY) bench/churn.py $(ARGS)

bench-lan: venv debs
	$(PY) bench/lan.py $(ARGS)

bench: bench-serve bench-swarm bench-fleet bench-index bench-load bench-speed bench-churn

clean:
	rm -rf $(VENV) build dist *.egg-info

# Debian packaging (debian/, man/): the .deb lands in dist/, built from a copy of the tree.
.PHONY: deb man check-package

deb:
	tools/build-deb.sh dist

man:
	$(PYTHON) tools/genman.py

check-package: deb
	lintian --info dist/debtorrent_*.changes
