# The two commands of the README, and what they need. Everything installs into .venv and
# ~/.cache/inferencepool (built Kubernetes tools), never into the repository.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install tools demo test

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

tools:
	bash e2e/cluster/install

# The main job on the embedded default: replay the bundled Azure trace through every policy.
demo: install
	$(VENV)/bin/inferencepool simulate

# Unit, integration and e2e tests, against a real kube-apiserver, KWOK fake GPU nodes and Prometheus.
test: install tools
	$(PY) -m pytest
