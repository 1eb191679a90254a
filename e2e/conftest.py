"""Pytest fixtures for end-to-end tests on the Docker-free Kubernetes test bed (e2e/cluster).

Fixtures
  cluster     (session)  the bed, started once (or reused if already up) -> Cluster
  namespace   (function) a fresh namespace name in the bed, deleted after the test
  prometheus  (function) factory starting Prometheus on 127.0.0.1 with a static scrape config
  chart_operator (function) the chart installed in the namespace; starts operators with its RBAC (operators.py)

Tests are skipped only when the bed's binaries are missing (run e2e/cluster/install, or set
IPOOL_BED_AUTO_INSTALL=1 to let the fixture run it). A bed that fails to start is an error.
IPOOL_BED_KEEP=1 leaves a bed this session started running afterwards (e2e/cluster/down stops it).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

CLUSTER_DIR = Path(__file__).resolve().parent / "cluster"
# Under pytest-xdist (`make test`: -n 2 --dist loadfile) every worker after the first gets its own bed, 100 ports
# up and in <IPOOL_BED_DIR>-gwN: the tests count on the bed's GPUs and nodes being theirs alone.
_worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
if _worker != "gw0":
    os.environ["IPOOL_BED_DIR"] = f"{os.environ.get('IPOOL_BED_DIR') or '/tmp/inferencepool-bed'}-{_worker}"
    os.environ["IPOOL_BED_PORT_BASE"] = str(int(os.environ.get("IPOOL_BED_PORT_BASE") or 24700) + 100 * int(_worker[2:]))
_spec = importlib.util.spec_from_file_location("ipool_bed", CLUSTER_DIR / "bed.py")
bed = importlib.util.module_from_spec(_spec)
sys.modules["ipool_bed"] = bed
_spec.loader.exec_module(bed)


@dataclass
class Cluster:
    """Handle on the running bed. All paths are absolute; all endpoints are on 127.0.0.1."""

    kubeconfig: Path                 # admin (system:masters) kubeconfig
    server: str                      # https://127.0.0.1:<port> of kube-apiserver
    state_dir: Path                  # pids, logs/<component>.log, pki/, bed.json
    bin_dir: Path                    # all tools below live here
    kubectl_path: Path
    helm_path: Path
    prometheus_path: Path
    kwok_path: Path
    kubernetes_version: str          # e.g. "v1.36.3"
    ports: dict[str, int]            # component -> loopback port
    pools: list[dict]                # node pools as in nodes.yaml
    default_cold_start_seconds: float
    env: dict[str, str] = field(repr=False, default_factory=dict)  # os.environ + KUBECONFIG, PATH

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run kubectl against the bed; raises with stderr in the message if check fails."""
        return _run([str(self.kubectl_path), *args], self.env, input, check, timeout)

    def kubectl_json(self, *args: str, **kw: Any) -> dict:
        return json.loads(self.kubectl(*args, "-o", "json", **kw).stdout)

    def apply(self, manifest: str | dict | list, namespace: str | None = None) -> None:
        """kubectl apply a YAML string, a dict or a list of dicts."""
        if not isinstance(manifest, str):
            items = manifest if isinstance(manifest, list) else [manifest]
            manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        ns = ["-n", namespace] if namespace else []
        self.kubectl("apply", *ns, "-f", "-", input=manifest)

    def helm(self, *args: str, check: bool = True, timeout: float = 300,
             ) -> subprocess.CompletedProcess[str]:
        return _run([str(self.helm_path), *args], self.env, None, check, timeout)

    def cold_start_seconds(self, pool: str) -> float:
        """Cold start (Running -> Ready delay) of pods on nodes of `pool`, without annotation."""
        p = next(p for p in self.pools if p["name"] == pool)
        return float(p.get("coldStartSeconds", self.default_cold_start_seconds))

    def api_client(self):
        """A kubernetes.client.ApiClient for the bed (needs `pip install kubernetes`)."""
        from kubernetes import config
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    @staticmethod
    def wait_until(predicate: Callable[[], Any], timeout: float = 120, interval: float = 0.5,
                   desc: str = "condition") -> Any:
        """Poll predicate() until truthy and return its value; generous timeouts for a busy box. A KeyError
        or IndexError counts as not yet: a status field or condition appears when the operator's writer
        threads patch it, which can be after the Deployment moved (the last one is named on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value, error = predicate(), None
            except (KeyError, IndexError) as missing:
                value, error = None, missing
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {desc}"
                                     + (f" (last: {error!r})" if error is not None else ""))
            time.sleep(interval)


def _run(cmd, env, input, check, timeout) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, env=env, input=input, text=True, capture_output=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}{r.stdout}")
    return r


def _require_tools(tools: list[str]) -> None:
    missing = [t for t in bed.missing_tools() if t in tools]
    if missing and os.environ.get("IPOOL_BED_AUTO_INSTALL") == "1":
        subprocess.run(["bash", str(CLUSTER_DIR / "install")], check=False)
        missing = [t for t in bed.missing_tools() if t in tools]
    if missing:
        pytest.skip(f"test bed tools not installed ({', '.join(missing)} missing in {bed.BIN}); "
                    "run e2e/cluster/install")


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    _require_tools(bed.TOOLS)
    started = False
    if not bed.running():
        # Run `up` as its own process so the components are re-parented away from pytest
        # (no zombies when `down` stops them) exactly as for a developer running e2e/cluster/up.
        r = subprocess.run([sys.executable, str(CLUSTER_DIR / "bed.py"), "up"],
                           text=True, capture_output=True, timeout=600)
        if r.returncode != 0:
            pytest.fail(f"test bed failed to start:\n{r.stderr}", pytrace=False)
        started = True
    info = json.loads((bed.STATE / "bed.json").read_text())
    env = dict(os.environ, KUBECONFIG=info["kubeconfig"],
               PATH=f"{bed.BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               # helm keeps its state under these; keep it out of $HOME
               HELM_CACHE_HOME=str(bed.STATE / "helm" / "cache"),
               HELM_CONFIG_HOME=str(bed.STATE / "helm" / "config"),
               HELM_DATA_HOME=str(bed.STATE / "helm" / "data"))
    yield Cluster(
        kubeconfig=Path(info["kubeconfig"]), server=info["server"], state_dir=bed.STATE,
        bin_dir=bed.BIN, kubectl_path=bed.BIN / "kubectl", helm_path=bed.BIN / "helm",
        prometheus_path=bed.BIN / "prometheus", kwok_path=bed.BIN / "kwok",
        kubernetes_version=info["kubernetes_version"], ports=info["ports"], pools=info["pools"],
        default_cold_start_seconds=float(info["cold_start_seconds"]), env=env)
    if started and os.environ.get("IPOOL_BED_KEEP") != "1":
        subprocess.run([sys.executable, str(CLUSTER_DIR / "bed.py"), "down"], timeout=120)


@pytest.fixture
def namespace(cluster: Cluster) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    # Pods are refused until the namespace's default ServiceAccount exists.
    cluster.wait_until(lambda: cluster.kubectl("-n", name, "get", "sa", "default",
                                               check=False).returncode == 0,
                       timeout=180, desc=f"default ServiceAccount in {name}")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def prometheus(tmp_path: Path):
    """Factory: prometheus(targets=["127.0.0.1:PORT"]) or prometheus(scrape_configs=[...]).

    Returns a started bed.Prometheus (attributes url, port, config_path, log_path; methods
    query(expr) -> list, wait_for(expr, timeout) -> list, stop()). Stopped after the test.
    """
    _require_tools(["prometheus"])
    started: list = []

    def start(targets: list[str] | None = None, scrape_configs: list[dict] | None = None,
              job: str = "test", scrape_interval: str = "1s", metrics_path: str = "/metrics"):
        workdir = tmp_path / f"prometheus-{len(started)}"
        if scrape_configs is None:
            p = bed.Prometheus.for_targets(targets or [], workdir, job=job,
                                           metrics_path=metrics_path,
                                           scrape_interval=scrape_interval)
        else:
            p = bed.Prometheus(scrape_configs, workdir, scrape_interval=scrape_interval)
        started.append(p)
        return p.start()

    yield start
    for p in started:
        p.stop()


@pytest.fixture
def chart_operator(cluster: Cluster, namespace: str, tmp_path: Path):
    """operators.ChartOperators: chart_operator(prometheus_url, interval=..., rate_window=...) starts an operator
    with the chart's ServiceAccount; chart_operator.close() (or the teardown) deletes the pools, stops it and
    uninstalls the chart."""
    from operators import ChartOperators  # e2e/ is on sys.path (pytest's rootdir conftest)

    with ChartOperators(cluster, namespace, tmp_path) as operator:
        yield operator
