# Throttle — every target installs what it needs first and says what it is doing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DURATION ?= 3m
PYTEST_ARGS ?=

IMAGE ?= throttle:dev
IMAGE_BASE ?= official

.PHONY: help venv deps testenv lock lint format test test-fast image images kind demo bench chaos clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml devtools/pyproject.toml
	@echo "==> Python virtualenv in $(VENV) (package + dev tools)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip
	@$(BIN)/pip install -q -e '.[dev]' -e ./devtools
	@touch $@

venv: $(BIN)/.installed  ## create the virtualenv with the package and dev tools

deps:  ## install Redis, PostgreSQL, nginx, podman, mmdebstrap, runc, containerd, CNI plugins, iptables, chromium + chromedriver from Debian if missing
	@bash scripts/deps.sh

lock: venv  ## pin the image's dependencies, with hashes, from pyproject.toml (requirements.lock)
	@echo "==> requirements.lock (pip-compile --generate-hashes; the Dockerfile installs it with --require-hashes)"
	@$(BIN)/pip-compile -q --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url \
		--no-emit-find-links --output-file requirements.lock pyproject.toml

testenv:  ## build kube-apiserver, etcd, kubectl, helm, promtool and the test node (kubelet, ...) from the Go module proxy (cached)
	@bash scripts/testenv.sh
	@bash scripts/promtool.sh
	@echo "==> the test node: kubelet, kube-controller-manager, kube-scheduler, kube-proxy, CoreDNS, pause image (scripts/node-build.sh, cached)"
	@bash scripts/node-build.sh >/dev/null

lint: venv  ## ruff, mypy, duplicate code, bandit and pip-audit
	@echo "==> ruff"
	@$(BIN)/ruff check throttle devtools tests bench scripts
	@$(BIN)/ruff format --check throttle devtools tests bench scripts
	@echo "==> mypy (strict)"
	@$(BIN)/mypy
	@echo "==> duplicate code (pylint: no block of 6 or more lines twice in throttle/)"
	@$(BIN)/pylint --disable=all --enable=duplicate-code --min-similarity-lines=6 \
		--score=n throttle
	@echo "==> duplicate shapes (the same block with other names, within a file too)"
	@$(BIN)/python scripts/duplicate_shapes.py throttle
	@echo "==> bandit (config and justifications in pyproject.toml [tool.bandit])"
	@$(BIN)/bandit -q -c pyproject.toml -r throttle 2>&1 | grep -v 'nosec encountered'; \
		test $${PIPESTATUS[0]} -eq 0
	@echo "==> pip-audit (installed dependencies against known vulnerabilities)"
	@out=$$($(BIN)/pip-audit --skip-editable --progress-spinner off 2>&1) \
		|| { echo "$$out"; exit 1; }; echo "$$out" | head -n 1; \
		if echo "$$out" | grep -q 'could not be audited'; then \
		echo "pip-audit: WARNING: PyPI's vulnerability data is out of reach here; $$(echo "$$out" | grep -c 'could not be audited') packages were NOT audited"; fi

format: venv  ## apply ruff's formatting and safe fixes
	@$(BIN)/ruff check --fix throttle devtools tests bench
	@$(BIN)/ruff format throttle devtools tests bench

test: venv deps testenv lint  ## the whole suite against real Redis, PostgreSQL, kube-apiserver
	@echo "==> pytest (real Redis, PostgreSQL and kube-apiserver; long fault tests are in make chaos)"
	@$(BIN)/pytest -m 'not (chaos and slow)' $(PYTEST_ARGS)

test-fast: venv deps  ## the suite without slow tests, no lint
	@$(BIN)/pytest -m 'not slow' $(PYTEST_ARGS)

image:  ## build the image with docker or podman (IMAGE=throttle:dev; IMAGE_BASE=debian: no registry needed)
	@IMAGE=$(IMAGE) IMAGE_BASE=$(IMAGE_BASE) bash scripts/image.sh

images:  ## build the dev profile's images (throttle, simulator, Redis, PostgreSQL) as archives for a node or kind
	@bash scripts/images.sh

KIND_CLUSTER ?= throttle
KIND_KUBECONFIG := .local/kind-$(KIND_CLUSTER).kubeconfig

kind: venv  ## a kind cluster (Docker) with the dev profile installed, checked and showing traffic
	@for tool in docker kind kubectl helm; do command -v $$tool >/dev/null || \
		{ echo "kind: $$tool is not installed (docs/deploy.md, \"Try it on kind\")"; exit 1; }; done
	@docker info >/dev/null 2>&1 || { echo "kind: no Docker engine answers (start Docker)"; exit 1; }
	@echo "==> kind cluster '$(KIND_CLUSTER)' (created unless it exists; kubeconfig in $(KIND_KUBECONFIG))"
	@kind get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)' || kind create cluster --name '$(KIND_CLUSTER)' --wait 120s
	@mkdir -p .local && kind get kubeconfig --name '$(KIND_CLUSTER)' > $(KIND_KUBECONFIG)
	@echo "==> images built with docker, loaded with kind, the dev profile installed and checked (throttle_dev.cluster_check)"
	@ENGINE=docker $(BIN)/python -m throttle_dev.cluster_check install-and-check \
		--kubeconfig $(KIND_KUBECONFIG) --load 'kind load image-archive {archive} --name $(KIND_CLUSTER)'
	@echo "==> look at it (KUBECONFIG=$(KIND_KUBECONFIG)):"
	@echo "    kubectl -n throttle get tp --watch          the demo's policies, queued and in flight"
	@echo "    kubectl -n throttle exec deploy/throttle-webhook -- throttle status"
	@echo "    kubectl -n throttle port-forward svc/throttle-hubspot-simulator 8090  then http://localhost:8090/_sim/report?format=text"
	@echo "    Grafana: import deploy/helm/throttle/dashboards/throttle.json (a Prometheus scraping the pods' /metrics),"
	@echo "    or add --set monitoring.dashboard.enabled=true for a Grafana sidecar; docs/deploy.md has the rest"
	@echo "    kind delete cluster --name $(KIND_CLUSTER)   when done"

demo: venv deps  ## run everything locally with the HubSpot simulator driving traffic
	@$(BIN)/python -m throttle_dev.demo --duration $(DURATION)

chaos: venv deps  ## every fault against real processes; prints the fault table into docs/reliability.md
	@$(BIN)/python -m throttle_dev.chaos --write docs/reliability.md

bench: venv deps  ## run the benchmarks and print their tables
	@for b in bench/*.py; do echo "==> $$b"; $(BIN)/python $$b || exit 1; done

clean:  ## remove the virtualenv, caches and local data (not the ~/.cache/throttle build cache)
	rm -rf $(VENV) .local demo-output .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
