"""Imports go one way: the shells (operator, plan, simulate, cli) import the core, never the reverse.

The core must stay free of Kubernetes, Kopf and Prometheus clients so that the planner and the simulator
run without a cluster and decide exactly as the operator does. Checked twice: statically (every import
statement of every core module, including those inside functions) and at run time (importing the whole
core in a fresh interpreter loads none of them).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "operator" / "inferencepool"
CLUSTER_CLIENTS = ("kopf", "kubernetes", "prometheus_api_client")
SHELLS = ("inferencepool.operator", "inferencepool.simulate", "inferencepool.plan", "inferencepool.cli")


def imported_modules(path: Path, package: str | None = None) -> set[str]:
    """Absolute names of every module a file imports (relative imports resolved against its package)."""
    package = package or ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def offending(names: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))


def modules_of(subpackage: str) -> list[Path]:
    return sorted((PACKAGE / subpackage).rglob("*.py"))


@pytest.mark.parametrize("path", modules_of("core"), ids=lambda p: p.name)
def test_core_imports_no_cluster_client_and_no_shell(path):
    bad = offending(imported_modules(path), CLUSTER_CLIENTS + SHELLS)
    assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}: the core must stay pure (move the I/O to a shell)"


@pytest.mark.parametrize("subpackage", ["plan", "simulate"])
def test_offline_tools_do_not_import_the_operator_shell(subpackage):
    for path in modules_of(subpackage):
        bad = offending(imported_modules(path), ("inferencepool.operator", "kopf", "kubernetes",
                                                 "prometheus_api_client"))
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}; share pure code through inferencepool.core"


def test_importing_the_core_loads_no_cluster_client():
    core = [f"inferencepool.core.{p.stem}" for p in modules_of("core") if p.stem != "__init__"]
    assert {"inferencepool.core.queueing", "inferencepool.core.policy", "inferencepool.core.forecast"} <= set(core)
    script = ("import importlib, sys\n"
              f"for name in {core!r}: importlib.import_module(name)\n"
              f"print(sorted(m for m in sys.modules if m.split('.')[0] in {CLUSTER_CLIENTS!r}))")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", f"importing the core loaded {loaded.strip()}"


def test_the_checker_sees_a_forbidden_import(tmp_path):
    """The static check is not vacuous: imports inside functions and relative ones into a shell are caught."""
    probe = tmp_path / "probe.py"
    probe.write_text("import numpy\n"
                     "def f():\n    import kopf\n    from kubernetes.client import CoreV1Api\n"
                     "from prometheus_api_client import PrometheusConnect\n"
                     "from ..operator import observe\n")
    names = imported_modules(probe, package="inferencepool.core")
    assert offending(names, CLUSTER_CLIENTS + SHELLS) == [
        "inferencepool.operator", "inferencepool.operator.observe", "kopf", "kubernetes.client",
        "kubernetes.client.CoreV1Api", "prometheus_api_client", "prometheus_api_client.PrometheusConnect"]
    assert "numpy" in names
