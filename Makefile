# qkd-gateway developer and operator targets. Every target is idempotent and works on a fresh
# Debian 12 machine as root.
#   make test          the whole suite: host tier, then the systemd tier, then the kernel lab
#   make test-host     pytest -m "not vm and not systemd" (unit, fuzz, mqtt, netns, e2e)
#   make test-systemd  the .deb installed and run by a real systemd in a booted Debian 12 root
#   make test-vm       the kernel lab (kernel WireGuard/ESP under QEMU)
#   make demo-vm       the demo in the kernel lab: ESP tunnels (DEMO_VM_DATAPLANE=kernel|mixed)
#   make deb           build/deb/qkd-gateway_<version>-1_amd64.deb
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
GW := $(VENV)/bin/qkd-gateway
# Every apt call installs only what is named (--no-install-recommends): wireguard-tools
# Recommends wireguard-modules, which apt satisfies with a kernel image (and udev, apparmor,
# initramfs-tools). tests/packaging/test_apt_surprises.py simulates this list and fails on those.
# mmdebstrap, systemd-container: the systemd tier; python3-venv: the package's venv (make deb);
# prometheus: the dashboard test evaluates every panel query on a real Prometheus;
# nftables, faketime: the fault suite's partitions, losses and wall-clock jumps.
DEBS := iproute2 iputils-ping wireguard-go wireguard-tools mosquitto mosquitto-clients \
        iperf3 tcpdump kmod systemd procps mmdebstrap systemd-container python3-venv prometheus \
        nftables faketime
# The performance peer of `make bench` (strongSwan's charon with user-space ESP); not for CI.
BENCH_DEBS := strongswan-charon strongswan-swanctl libcharon-extra-plugins \
        libstrongswan-standard-plugins libstrongswan-extra-plugins
DEB_DIR := build/deb
# Extra arguments for pytest, e.g. `make test PYTEST_ARGS="-k config"`.
# The demo runs a minute and reports a verdict; `make demo DEMO_ARGS=` runs until Ctrl-C.
DEMO_ARGS ?= --duration 60 --rekey-interval 5
# `make demo-vm`: the same demo in the kernel lab, for what this host's kernel lacks (ESP, kernel
# WireGuard); 3 sites and 40 s there by default (QEMU is 5-10x slower), DEMO_VM_ARGS adds options.
DEMO_VM_DATAPLANE ?= xfrm
DEMO_VM_ARGS ?=
PYTEST_ARGS ?=
SOAK_TUNNELS ?= 1000

.PHONY: setup apt print-debs venv example-keys demo demo-vm test test-host test-systemd test-vm deb \
        bench bench-hub bench-hub-vm soak fuzz lint clean

setup: apt venv example-keys

apt:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	elif ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then \
	  apt-get update -qq; \
	fi
	@# (the package lists are also what the apt-simulation test reads)
	@# Debian's mosquitto and prometheus units are not wanted: the tests start their own.
	@systemctl disable --now mosquitto prometheus >/dev/null 2>&1 || true

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

demo-vm: venv
	bash scripts/demo_vm.sh $(DEMO_VM_DATAPLANE) $(DEMO_VM_ARGS)

# The README's test command runs everything, tier by tier; make stops at the first tier that fails.
test: test-host test-systemd test-vm

test-host: setup
	$(PY) -m pytest -m "not vm and not systemd" $(PYTEST_ARGS)

# Builds the .deb first; the tier boots a Debian 12 root (cached in .cache/nspawn/ for the day).
test-systemd: setup deb
	QKD_GATEWAY_DEB="$$(ls $(DEB_DIR)/qkd-gateway_*.deb)" $(PY) -m pytest -m systemd \
	  tests/systemd tests/packaging $(PYTEST_ARGS)

test-vm: venv
	bash scripts/kernel_lab.sh

deb:
	bash packaging/build_deb.sh $(DEB_DIR)

print-debs:
	@echo $(DEBS)

# Benchmarks and long runs: outside CI, one command each (figures in docs/performance.md and
# docs/reliability.md).
bench: setup
	@missing=""; for p in $(BENCH_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi
	@systemctl disable --now strongswan-starter >/dev/null 2>&1 || true
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/run_all.py

bench-hub: setup
	$(PY) -m bench.fullstack.hub --tunnels 100 --window 10 --pairs 2 --out bench/results/hub.json

bench-hub-vm: venv
	mkdir -p .lab bench/results
	QKD_HUB_KEYED_TIMEOUT=2400 LAB_MEMORY=2G LAB_TIMEOUT=3600 bash scripts/kernel_lab.sh --exec '.venv/bin/python -m bench.fullstack.hub --backend kernel --tunnels 100 --window 30 --interval 5 --out "$$LAB_RESULTS/hub-vm.json"'
	cp .lab/results/hub-vm.json bench/results/hub-vm.json

soak: setup
	$(PY) bench/soak.py --tunnels $(SOAK_TUNNELS) --interval 10 --duration 600

fuzz: venv
	$(PY) tests/fuzz/run_long.py

lint: venv
	$(VENV)/bin/ruff check gateway tests bench scripts
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .lab .cache .pytest_cache .mypy_cache .ruff_cache build *.egg-info
