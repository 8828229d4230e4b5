# Every target works on a fresh clone: `make demo` and `make test` install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SAMPLE_RIG := tests/rigs/synthetic-2x3090-x16-x8.yaml
# A scratch root holding only what Ollama's installer would have written.
DEMO_ROOT := build/demo-root

.PHONY: install demo test lint bench bench-fleet clean templates

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/provision probe --rig $(SAMPLE_RIG)
	@echo
	$(BIN)/provision plan --rig $(SAMPLE_RIG)
	@echo
	rm -rf $(DEMO_ROOT) && mkdir -p build && cp -r tests/data/stock-root $(DEMO_ROOT)
	$(BIN)/provision diff --rig $(SAMPLE_RIG) --root $(DEMO_ROOT); test $$? -eq 1

# The benchmarks run with bounds 5-6x their targets: they catch regressions, not noise.
# The system tests fail rather than skip here: system-deps has installed what they need.
test: $(STAMP) system-deps lint
	GPU_PROVISION_SYSTEM_TESTS=require $(BIN)/pytest
	$(BIN)/python bench/probe_speed.py --runs 7 --bound-ms 1000
	$(BIN)/python bench/diff_speed.py --runs 5 --series-runs 3 --no-ansible --bound-ms 1500 --bound-ratio 16

lint: $(STAMP)
	$(BIN)/ruff check provision tests bench
	$(BIN)/ruff format --check provision tests bench
	$(BIN)/mypy provision

# Compile templates/ ahead of time (provision/render/templates.py); rerun after editing one.
templates: $(STAMP)
	$(BIN)/python -m provision.render.templates

bench: $(STAMP)
	$(BIN)/python bench/probe_speed.py
	$(BIN)/python bench/diff_speed.py
	$(BIN)/python bench/import_breakdown.py
	$(BIN)/python bench/estimate_accuracy.py

# A fleet play on 1, 2 and 3 real ssh hosts (root, systemd-nspawn; ~10 min): docs/FLEET.md.
bench-fleet: $(STAMP) system-deps
	$(BIN)/python bench/fleet_scale.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

# The system tests (tests/system) boot a real systemd in systemd-nspawn containers. CI is a
# fresh Debian 12 VM running as root: install the host packages once (no-op when present), with
# a temporary policy-rc.d so that installing nginx does not start it on the host.
# openssh-client and iproute2: the fleet tests' controller (ssh, ip link, bridges).
SYSTEM_DEBS := systemd-container mmdebstrap nginx zstd openssh-client iproute2

.PHONY: rootfs system-deps

system-deps:
	@n=$$(dpkg-query -W -f='$${Status}\n' $(SYSTEM_DEBS) 2>/dev/null | grep -c '^install ok installed$$'); \
	if [ "$$n" -ne $(words $(SYSTEM_DEBS)) ]; then \
		if [ "$$(id -u)" -ne 0 ]; then echo "system-deps: run as root to install $(SYSTEM_DEBS)" >&2; exit 1; fi; \
		guard=; if [ ! -e /usr/sbin/policy-rc.d ]; then guard=1; printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; fi; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SYSTEM_DEBS); rc=$$?; \
		if [ -n "$$guard" ]; then rm -f /usr/sbin/policy-rc.d; fi; exit $$rc; \
	fi

# Build and cache the Debian bookworm rootfs the system tests boot (outside the repo, under
# ${XDG_CACHE_HOME:-~/.cache}/gpu-provision/rootfs); the test fixture builds it when missing too.
rootfs: system-deps
	$(PYTHON) -m tests.system.nspawn rootfs

# The end-to-end stage alone: the system tests (tests/system), each on a real systemd booted in
# systemd-nspawn: install from the wheel, diff, apply, reboot, verify, tamper, repair, roll back.
# Fails (rather than skips) without root or the host tools; the rootfs is built when missing.
.PHONY: e2e
e2e: $(STAMP) system-deps
	GPU_PROVISION_SYSTEM_TESTS=require $(BIN)/pytest -q tests/system
