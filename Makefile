# Yizhan — two commands on a fresh Debian / Raspberry Pi OS machine:
#   make demo   broker, hub and simulated stations on this machine
#   make test   everything the tests need, then the tests
# Both install what they need themselves (system packages only when run as root).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=
# pytest-xdist workers; each test file runs whole on one (docs/testing.md, "Workers").
TEST_WORKERS ?= 2

.PHONY: demo test lint bench soak grafana-pictures system-deps postgres-ready venv clean help

help:
	@echo "make demo    run broker, hub and simulated stations (Ctrl-C stops)"
	@echo "make test    install what the tests need and run them"
	@echo "make lint    ruff"
	@echo "make bench   benchmarks (see docs/benchmarks.md)"
	@echo "make soak    20 broker outages at production settings, < 30 min (docs/reliability.md)"
	@echo "make grafana-pictures  redraw docs/img/grafana/ from a real Prometheus run (docs/grafana.md)"

# System packages: the Python venv module, Mosquitto, PostgreSQL, Prometheus and
# Chromium with CJK fonts (the tests talk to real ones and look at real pages),
# debootstrap (tests/test_ansible.py applies the playbook to a Debian 12 root),
# systemd's systemd-analyze (tests/test_systemd_units.py verifies the units),
# poppler-utils' pdftoppm and zbar-tools' zbarimg (tests/test_poster.py renders the
# printed posters and reads their QR codes).
# Installed only when missing; as root directly, otherwise with sudo when present.
system-deps:
	@missing=""; \
	$(PYTHON) -c "import ensurepip, venv" 2>/dev/null || missing="$$missing python3-venv"; \
	[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null || missing="$$missing mosquitto"; \
	command -v mosquitto_passwd >/dev/null || missing="$$missing mosquitto-clients"; \
	command -v pg_ctlcluster >/dev/null || missing="$$missing postgresql"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	[ -d /usr/share/fonts/opentype/noto ] || missing="$$missing fonts-noto-cjk"; \
	command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing="$$missing debootstrap"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v zbarimg >/dev/null || missing="$$missing zbar-tools"; \
	command -v pdftoppm >/dev/null || missing="$$missing poppler-utils"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] || command -v sudo >/dev/null; then \
	    echo "installing:$$missing"; \
	    $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	  else \
	    echo "missing system packages:$$missing (install them, or run as root)"; \
	  fi; \
	fi

# The tests use the machine's PostgreSQL: make sure a cluster runs and that the
# current user is a superuser role on it (peer authentication on the socket).
postgres-ready: system-deps
	@if command -v pg_lsclusters >/dev/null; then \
	  pg_lsclusters -h | awk '$$4 != "online" {print $$1, $$2}' | while read v c; do \
	    echo "starting PostgreSQL $$v/$$c"; \
	    $(SUDO) pg_ctlcluster --skip-systemctl-redirect $$v $$c start || true; \
	  done; \
	  me=$$(id -un); \
	  if ! psql -d postgres -tAc "SELECT 1" >/dev/null 2>&1; then \
	    $(SUDO) -u postgres createuser -s "$$me" 2>/dev/null || \
	      su postgres -c "createuser -s $$me" 2>/dev/null || true; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,postgres,broker]'
	@touch $(STAMP)

venv: system-deps $(STAMP)

demo: venv
	$(VENV)/bin/yizhan demo

test: venv postgres-ready
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

bench: venv
	@if [ -d bench ] && ls bench/*.py >/dev/null 2>&1; then \
	  for b in bench/*.py; do [ "$$b" = bench/soak.py ] && continue; \
	    echo "== $$b"; $(PY) $$b || exit 1; done; \
	else echo "no benchmarks yet"; fi

# Not part of bench or test: it takes up to 30 minutes (docs/reliability.md).
soak: venv
	$(PY) bench/soak.py

# The pictures in docs/grafana.md: a real hub, stations and Prometheus, about two
# minutes; matplotlib is the optional docs extra.
grafana-pictures: venv
	$(PY) -m pip install -q -e '.[docs]'
	$(PY) deploy/grafana/render_pictures.py

clean:
	rm -rf $(VENV) run .pytest_cache .ruff_cache *.egg-info
