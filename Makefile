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

# The main job on the embedded default: the frontier of every policy family on the bundled Azure trace
# (played twice, the second copy scored, 3 seeds, 2 workers: about 1-2 minutes on 2 cores).
demo: install
	$(VENV)/bin/inferencepool simulate --sweep --repeat 2 --warm-up repeats --quiet

# Unit, integration and e2e tests, against a real kube-apiserver, KWOK fake GPU nodes and Prometheus.
# Two pytest-xdist workers, whole files each; the second worker runs its e2e files on a bed of its own
# (e2e/conftest.py), so e2e tests still run one at a time per bed.
test: install tools
	$(PY) -m pytest -n 2 --dist loadfile
