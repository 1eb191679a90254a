"""The operator as the e2e tests run it: `python -m inferencepool.operator.run` as a subprocess against the bed.

    with Operators(cluster, namespace, tmp_path / "operator.log") as operator:
        op = operator(prometheus.url)             # more: operator(url, interval=2, extra_args=["--peering=x"])
    with ChartOperators(cluster, namespace, tmp_path) as operator:   # the chart's ServiceAccount and RBAC
        op = operator(prometheus.url)

At the end of either (or at close()) the namespace's pools are deleted while an operator still runs (it
removes their finalizers), every operator is stopped and the log's tail printed (pytest shows it when a test
fails); ChartOperators then uninstalls the chart. Fixtures: `operator` (test_operator.py) and
`chart_operator` (conftest.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "inferencepool-operator"
INTERVAL = 3
RATE_WINDOW = "30s"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OperatorProcess:
    """One operator for one namespace (--namespace), its JSON log lines in `log_path` (appended, kept for failures)."""

    def __init__(self, cluster, namespace: str, prometheus_url: str, log_path: Path, interval: float = INTERVAL,
                 rate_window: str = RATE_WINDOW, kubeconfig: Path | None = None, extra_args: tuple[str, ...] = ()):
        self.cluster, self.namespace, self.prometheus_url, self.log_path = cluster, namespace, prometheus_url, log_path
        self.interval, self.rate_window, self.extra_args = interval, rate_window, list(extra_args)
        self.kubeconfig = kubeconfig or cluster.kubeconfig
        self.metrics_port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> OperatorProcess:
        command = [
            sys.executable, "-m", "inferencepool.operator.run",
            "--kubeconfig", str(self.kubeconfig),
            "--namespace", self.namespace,
            "--prometheus-url", self.prometheus_url,
            "--interval", str(self.interval),
            "--rate-window", self.rate_window,
            "--burst-window", "6s",
            "--metrics-port", str(self.metrics_port),
            "--metrics-address", "127.0.0.1",
            *self.extra_args,
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.cluster.env, start_new_session=True)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Send `sig` (SIGKILL: a crash) to the process group; SIGKILL after 30 s if it is still there."""
        if self.running():
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def decisions(self, event: str = "decision") -> list[dict]:
        """The log lines (JSON) whose event is `event`."""
        lines = []
        for line in self.log_path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == event:
                lines.append(entry)
        return lines

    def metrics_text(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()


class Operators:
    """operator = Operators(cluster, namespace, log_path, **defaults); operator(prometheus_url, **kw) starts one
    (kw and defaults: OperatorProcess's keywords, log_path= to log elsewhere). close(), also at the end of a
    `with` block: the namespace's pools are deleted while an operator still runs (it removes their finalizers),
    every operator is stopped and each log's tail printed (pytest shows it when the test fails)."""

    def __init__(self, cluster, namespace: str, log_path: Path, **defaults):
        self.cluster, self.namespace, self.log_path, self.defaults = cluster, namespace, log_path, defaults
        self.started: list[OperatorProcess] = []

    def __call__(self, prometheus_url: str, **kw) -> OperatorProcess:
        op = OperatorProcess(self.cluster, self.namespace, prometheus_url, kw.pop("log_path", self.log_path),
                             **{**self.defaults, **kw})
        self.started.append(op.start())
        return op

    def close(self) -> None:
        if any(op.running() for op in self.started):
            self.cluster.kubectl("-n", self.namespace, "delete", "ipool", "--all", "--wait=true", "--timeout=60s",
                                 check=False)
        for op in self.started:
            op.stop()
        for path in dict.fromkeys(op.log_path for op in self.started):
            if path.exists():
                print(f"---- operator log {path.name} (tail) ----\n" + path.read_text()[-20000:])
        self.started = []

    def __enter__(self) -> Operators:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sa_kubeconfig(cluster, namespace: str, sa: str, path: Path) -> Path:
    """A kubeconfig with the ServiceAccount's token: the operator runs with exactly the chart's RBAC."""
    token = cluster.kubectl("-n", namespace, "create", "token", sa, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "bed", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "bed", "user": "sa", "namespace": namespace}}]}))
    return path


class ChartOperators(Operators):
    """Operators with the chart's ServiceAccount token: the chart is installed (release = namespace, its own
    Deployment pointed at no Prometheus) for its CRDs and RBAC; close() also uninstalls it."""

    def __init__(self, cluster, namespace: str, tmp_path: Path, **defaults):
        self.release = namespace  # unique cluster-scoped names per test
        cluster.helm("install", self.release, str(CHART), "--namespace", namespace,
                     "--set", "prometheus.url=http://127.0.0.1:1")
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                        "crd/inferencepools.autoscaling.inferencepool.dev")
        kubeconfig = sa_kubeconfig(cluster, namespace, f"{self.release}-inferencepool-operator",
                                   tmp_path / "sa.kubeconfig")
        super().__init__(cluster, namespace, tmp_path / "operator.log", kubeconfig=kubeconfig, **defaults)
        self.installed = True

    def close(self) -> None:
        super().close()
        if self.installed:
            self.cluster.helm("uninstall", self.release, "--namespace", self.namespace, check=False)
            self.installed = False
