# qkd-gateway developer and operator targets. Every target is idempotent and works on a fresh
# Debian 12 machine as root.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
GW := $(VENV)/bin/qkd-gateway
DEBS := iproute2 iputils-ping wireguard-go wireguard-tools mosquitto mosquitto-clients \
        iperf3 tcpdump kmod systemd procps
# Extra arguments for pytest, e.g. `make test PYTEST_ARGS="-k config"`.
# The demo runs a minute and reports a verdict; `make demo DEMO_ARGS=` runs until Ctrl-C.
DEMO_ARGS ?= --duration 60 --rekey-interval 5
PYTEST_ARGS ?=

.PHONY: setup apt venv example-keys demo test test-vm bench lint clean

setup: apt venv example-keys

apt:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@# Debian's mosquitto unit is not wanted: the tests start their own brokers on loopback.
	@systemctl disable --now mosquitto >/dev/null 2>&1 || true

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lint]'
	touch $@

example-keys: venv
	$(PY) scripts/example_keys.py

demo: setup
	$(GW) demo $(DEMO_ARGS)

test: setup
	$(PY) -m pytest -m "not vm" $(PYTEST_ARGS)

test-vm: venv
	bash scripts/kernel_lab.sh

bench: venv
	$(PY) bench/run_all.py

lint: venv
	$(VENV)/bin/ruff check gateway tests bench scripts
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .lab .pytest_cache .mypy_cache .ruff_cache build *.egg-info
