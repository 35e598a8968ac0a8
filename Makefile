# slurmft: the two commands are `make demo` and `make test`; both install what they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
APT_PACKAGES := slurm-wlm munge openssh-server openmpi-bin libopenmpi-dev iputils-ping iproute2 \
	util-linux procps psmisc shellcheck rsync cgroup-tools prometheus nftables slurmrestd
# Binaries whose presence means the apt step is done (promtool: Debian's prometheus, which
# tests the rendered scrape config and alert rules of `slurmft render deploy`).
APT_BINARIES := slurmctld slurmd munged /usr/sbin/sshd mpirun ping ip nsenter unshare shellcheck rsync pkill promtool nft /usr/sbin/slurmrestd
PYTEST_ARGS ?=

.PHONY: install apt venv test unit integration demo lint bench clean cluster-up cluster-down help wheel-check

help:
	@echo "make demo   - set up and run the end-to-end recovery demo on a local cluster"
	@echo "make test   - install, then run unit and integration tests (needs root)"
	@echo "make unit   - unit tests only (no root, no cluster)"
	@echo "make lint   - import-layer contract"
	@echo "make wheel-check - build the wheel, install it in a fresh venv, run it outside the checkout"
	@echo "make bench  - benchmarks (print tables with the baseline from the same run)"

install: apt venv

apt:
	@missing=0; for b in $(APT_BINARIES); do command -v $$b >/dev/null 2>&1 || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "make install: run as root to install Debian packages: $(APT_PACKAGES)"; exit 1; fi; \
	  echo "installing Debian packages: $(APT_PACKAGES)"; \
	  before=$$(pgrep -x prometheus | tr '\n' ' '); own_policy=0; \
	  if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\n# make apt: no daemon starts while packages install\nexit 101\n' >/usr/sbin/policy-rc.d; \
	    chmod 0755 /usr/sbin/policy-rc.d; own_policy=1; \
	  fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; rc=$$?; \
	  if [ $$own_policy = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; \
	  if [ -d /run/systemd/system ]; then systemctl disable -q prometheus.service 2>/dev/null || true; fi; \
	  for pid in $$(pgrep -x prometheus || true); do \
	    case " $$before " in *" $$pid "*) ;; *) echo "make apt: stopping the prometheus daemon the package started (pid $$pid)"; kill $$pid;; esac; \
	  done; \
	  [ $$rc = 0 ] || exit $$rc; \
	fi

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools

# Torch first and pinned: the CPU wheel on disk. mpi4py built from source against Debian's
# Open MPI (pip caches the wheel, so only the first build costs minutes).
$(VENV)/.stamp-installed: setup.cfg setup.py | $(PY)
	$(PIP) install -q "torch==$(TORCH_VERSION)"
	$(PIP) install -q --no-binary mpi4py -e ".[mpi,torch,torchft,plot,dev]"
	touch $@

venv: $(VENV)/.stamp-installed

unit: venv
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

# All tests; integration tests need root (they build real clusters in network namespaces, and
# the docker backend's suite starts a private dockerd).
# The import contracts and the wheel check first (seconds), then the docker suite on the
# other Slurm releases (24.11 trixie, 26.05 sid; pytest below runs it on 22.05), then pytest,
# whose summary line closes the output.
CI_SLURM_RELEASES ?= 24.11,26.05
test: install docker-apt
	$(VENV)/bin/lint-imports
	@$(MAKE) --no-print-directory wheel-check
	@$(MAKE) --no-print-directory test-slurm-matrix SLURM_RELEASES=$(CI_SLURM_RELEASES) PYTEST_ARGS=
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

# The wheel as a site gets it: built, installed into a fresh venv outside the checkout
# (/tmp/slurmft-wheel-venv), run from a folder outside it (render job, render logging and, as
# root, cluster up/down --name sft-wheel). See .ci/wheel-check.sh.
wheel-check: venv
	.ci/wheel-check.sh $(PY)

lint: venv
	$(VENV)/bin/lint-imports

demo: install
	$(VENV)/bin/slurmft demo

bench: install
	$(PY) bench/probe.py
	$(PY) bench/checkpoint.py

clean:
	rm -rf $(VENV) build *.egg-info /tmp/slurmft-wheel-venv

# === docker backend (issue 8) ===
# The same test cluster in containers (slurmft/testbed/docker/; the image's files are package
# data in its files/). Needs Docker with compose; as root on Debian, the targets install
# docker.io, docker-compose and debootstrap, and `up` starts a private dockerd (own socket,
# no bridge, no iptables) when no daemon answers; `down` stops it again.
DOCKER_APT := docker.io docker-compose debootstrap
DOCKER_NODES ?= 4
DOCKER_CLUSTER ?= sft

.PHONY: docker-apt docker-cluster docker-cluster-down docker-test

docker-apt:
	@if ! command -v docker >/dev/null || \
	   { ! command -v docker-compose >/dev/null && ! docker compose version >/dev/null 2>&1; } || \
	   { ! command -v dockerd >/dev/null && [ -z "$$DOCKER_HOST" ]; }; then \
	  if [ "$$(id -u)" != 0 ]; then echo "make $@: install Docker and docker-compose (root: apt-get install $(DOCKER_APT))"; exit 1; fi; \
	  echo "installing Debian packages: $(DOCKER_APT)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DOCKER_APT) >/dev/null; \
	fi

docker-cluster: venv docker-apt
	$(VENV)/bin/slurmft cluster up --backend docker --name $(DOCKER_CLUSTER) --nodes $(DOCKER_NODES)
	@echo "use: $(VENV)/bin/slurmft cluster exec --backend docker --name $(DOCKER_CLUSTER) -- sinfo"
	@echo "stop: make docker-cluster-down"

docker-cluster-down: venv
	$(VENV)/bin/slurmft cluster down --backend docker --name $(DOCKER_CLUSTER)

docker-test: venv docker-apt
	$(PY) -m pytest tests/integration/test_docker_cluster.py -m docker -q $(PYTEST_ARGS)

# The docker suite once per Slurm release (22.05 bookworm, 24.11 trixie, 26.05 sid: one image
# each, built once, reused); the run writes the release x test table to build/slurm-matrix.md
# (and .json, JUnit XML per release). SLURM_RELEASES=24.11 runs one.
SLURM_RELEASES ?= 22.05,24.11,26.05
.PHONY: test-slurm-matrix
test-slurm-matrix: venv docker-apt
	$(PY) -m tests.integration.slurm_matrix --releases $(SLURM_RELEASES) --out build/slurm-matrix -- $(PYTEST_ARGS)
