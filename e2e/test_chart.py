"""The Helm chart: lint, schema, rendered args against `inferencepool run`'s real parser, and an install on
the test bed (the operator pod lands on the cpu node and turns Ready by KWOK; no container runs), with
least-privilege RBAC checked by `kubectl auth can-i` as the chart's ServiceAccount; the example pools apply."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest
import yaml

from inferencepool.operator import run

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "inferencepool-operator"
KUBE_VERSION = "1.36.3"  # what the bed runs; the chart requires >= 1.28 (helm template defaults to 1.20)
RELEASE = "ipool"
FULLNAME = f"{RELEASE}-inferencepool-operator"
POOL_EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml")
                       if any(d and d.get("kind") == "InferencePool" for d in yaml.safe_load_all(p.read_text())))
VARIANTS = {
    "default": [],
    "peering": ["--set", "replicaCount=2"],
    "namespaced": ["--set", "watch.allNamespaces=false", "--set", "watch.namespaces={a,b}"],
}


@pytest.fixture(scope="module")
def helm():
    import ipool_bed as bed  # loaded by conftest

    path = bed.BIN / "helm"
    if not path.exists():
        pytest.skip(f"helm not installed in {bed.BIN}; run e2e/cluster/install")

    def call(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([str(path), *args], text=True, capture_output=True, timeout=120)
        if check and r.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{r.stderr}{r.stdout}")
        return r
    return call


def render(helm, *sets: str) -> list[dict]:
    out = helm("template", RELEASE, str(CHART), "--namespace", "ipool-system", "--kube-version", KUBE_VERSION, *sets).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def operator_args(docs: list[dict]) -> argparse.Namespace:
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    parser = run.configure_parser(argparse.ArgumentParser(exit_on_error=False))
    return parser.parse_args(container["args"]), container, deployment


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_is_clean(helm, variant):
    r = helm("lint", str(CHART), "--strict", *VARIANTS[variant])
    assert "0 chart(s) failed" in r.stdout and "[WARNING]" not in r.stdout, r.stdout


@pytest.mark.parametrize("sets, field", [
    (["replicaCount=0"], "replicaCount"),
    (["image.pullPolicy=Sometimes"], "pullPolicy"),
    (["prometheus.url=prometheus:9090"], "url"),
    (["watch.allNamespaces=false"], "namespaces"),
    (["watch.allNamespaces=false", "watch.namespaces={Bad_NS}"], "namespaces"),
    (["intervalSeconds=0"], "intervalSeconds"),
    (["rateWindow=two minutes"], "rateWindow"),
    (["scrapeIntervalSeconds=0"], "scrapeIntervalSeconds"),
    (["metrics.port=70000"], "port"),
    (["replicas=2"], "replicas"),  # a typo of replicaCount: unknown keys are refused
])
def test_schema_rejects_bad_values(helm, sets, field):
    args = [a for s in sets for a in ("--set", s)]
    r = helm("template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION, *args, check=False)
    assert r.returncode != 0, f"{sets} rendered"
    assert "schema" in r.stderr and field in r.stderr, r.stderr


def test_rendered_args_are_the_operators_real_flags(helm):
    args, container, deployment = operator_args(render(helm))
    # 0.1.x's metricPrefix is accepted (helm upgrade --reuse-values) and changes nothing: both spellings are read
    assert operator_args(render(helm, "--set", "metricPrefix=vllm_"))[1] == container
    assert args.all_namespaces and not args.namespace and args.peering is None
    assert args.interval == 15 and args.rate_window == "2m" and args.scrape_interval is None  # measured
    assert operator_args(render(helm, "--set", "scrapeIntervalSeconds=30"))[0].scrape_interval == 30.0
    assert args.prometheus_url == "http://prometheus-operated.monitoring.svc:9090"
    assert container["ports"][0]["containerPort"] == args.metrics_port == 9808
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True

    docs = render(helm, *VARIANTS["peering"], "--set", "metrics.port=9100")
    args, container, deployment = operator_args(docs)
    assert args.peering == FULLNAME and args.metrics_port == 9100 and "strategy" not in deployment["spec"]
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "ClusterKopfPeering"] == [FULLNAME]

    docs = render(helm, *VARIANTS["namespaced"])
    args, _, _ = operator_args(docs)
    assert args.namespace == ["a", "b"] and not args.all_namespaces
    roles = {(d["kind"], d["metadata"].get("namespace")) for d in docs if d["kind"] in ("Role", "RoleBinding", "ClusterRole")}
    assert roles == {("Role", "a"), ("Role", "b"), ("RoleBinding", "a"), ("RoleBinding", "b"), ("ClusterRole", None)}


def test_shards_render_one_operator_per_shard_with_its_selector_and_peering(helm):
    """`shards: N`: N Deployments, shard i managing the pools labelled autoscaling.inferencepool.dev/shard=i,
    each with its own pod selector (they must not adopt each other's pods) and, with replicas, its own peering."""
    assert helm("lint", str(CHART), "--strict", "--set", "shards=3", "--set", "replicaCount=2").returncode == 0
    docs = render(helm, "--set", "shards=3", "--set", "replicaCount=2")
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert [d["metadata"]["name"] for d in deployments] == [f"{FULLNAME}-shard-{i}" for i in range(3)]
    parser = run.configure_parser(argparse.ArgumentParser(exit_on_error=False))
    for i, deployment in enumerate(deployments):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        args = parser.parse_args(container["args"])
        assert args.selector == {"autoscaling.inferencepool.dev/shard": str(i)} and args.peering == f"{FULLNAME}-shard-{i}"
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert deployment["spec"]["selector"]["matchLabels"]["autoscaling.inferencepool.dev/shard"] == str(i)
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "ClusterKopfPeering"] == [
        f"{FULLNAME}-shard-{i}" for i in range(3)]
    args = operator_args(render(helm))[0]  # shards: 1 (the default) is one operator for every pool, as before
    assert args.selector is None and args.peering is None
    assert helm("template", RELEASE, str(CHART), "--set", "shards=0", check=False).returncode != 0


def can_i(cluster, verb: str, resource: str, namespace: str | None, sa: str, *extra: str) -> bool:
    ns = ["-n", namespace] if namespace else ["--all-namespaces"]
    r = cluster.kubectl("auth", "can-i", verb, resource, *ns, *extra,
                        f"--as=system:serviceaccount:{sa}", check=False)
    assert r.stdout.strip() in ("yes", "no"), r.stderr
    return r.stdout.strip() == "yes"


def test_helm_install_on_the_bed_with_least_privilege(cluster, namespace):
    release_ns, other = namespace, f"{namespace}-other"
    cluster.kubectl("create", "namespace", other)
    try:
        cluster.helm("install", RELEASE, str(CHART), "--namespace", release_ns, "--wait", "--timeout", "120s",
                     "--set", "prometheus.url=http://127.0.0.1:9090")
        cluster.wait_until(lambda: cluster.kubectl_json("-n", release_ns, "get", "deployment", FULLNAME)
                           .get("status", {}).get("readyReplicas") == 1, timeout=120, desc="operator Deployment Ready")
        (pod,) = cluster.kubectl_json("-n", release_ns, "get", "pods", "-l",
                                      f"app.kubernetes.io/instance={RELEASE}")["items"]
        assert pod["spec"]["nodeName"] == "cpu-0" and pod["spec"]["serviceAccountName"] == FULLNAME
        for kind, name in (("serviceaccount", FULLNAME), ("service", f"{FULLNAME}-metrics")):
            cluster.kubectl("-n", release_ns, "get", kind, name)
        for kind in ("clusterrole", "clusterrolebinding"):
            cluster.kubectl("get", kind, FULLNAME, f"{FULLNAME}-discovery", f"{FULLNAME}-gpu-inventory")
        for crd in ("inferencepools.autoscaling.inferencepool.dev", "gpubudgets.autoscaling.inferencepool.dev",
                    "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"):
            cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd}")

        sa = f"{release_ns}:{FULLNAME}"
        for verb, resource, extra in [
            ("patch", "inferencepools.autoscaling.inferencepool.dev", ["--subresource=status"]),
            ("watch", "inferencepools.autoscaling.inferencepool.dev", []),
            ("create", "deployments.apps", []),
            ("patch", "deployments.apps", []),
            ("patch", "services", []),
            ("list", "pods", []),
            ("watch", "pods", []),  # the watch cache of the pools' pods and Deployments
            ("watch", "deployments.apps", []),
            ("patch", "pods", []),  # the deletion cost before a scale-down
            ("create", "events", []),
            ("watch", "gpubudgets.autoscaling.inferencepool.dev", []),
            ("patch", "gpubudgets.autoscaling.inferencepool.dev", ["--subresource=status"]),
        ]:
            assert can_i(cluster, verb, resource, other, sa, *extra), f"cannot {verb} {resource} {extra}"
        for verb, resource in [
            ("get", "secrets"), ("list", "secrets"), ("delete", "secrets"), ("get", "configmaps"),
            ("delete", "deployments.apps"), ("delete", "pods"), ("create", "pods"), ("delete", "services"),
            ("delete", "inferencepools.autoscaling.inferencepool.dev"), ("update", "deployments.apps"),
            ("create", "rolebindings.rbac.authorization.k8s.io"), ("patch", "nodes"),
        ]:
            assert not can_i(cluster, verb, resource, other, sa), f"can {verb} {resource}: more than it needs"
        assert not can_i(cluster, "get", "secrets", None, sa)
        # a GPUBudget's count of what other workloads hold: lists of nodes and pods everywhere, nothing more
        assert can_i(cluster, "list", "nodes", None, sa) and can_i(cluster, "list", "pods", None, sa)
        # (pods are watched too in this all-namespaces install: the pools' pod index, issue 14)
        for verb, resource in [("patch", "nodes"), ("get", "nodes"), ("watch", "nodes"), ("delete", "pods"),
                               ("delete", "gpubudgets.autoscaling.inferencepool.dev")]:
            assert not can_i(cluster, verb, resource, None, sa), f"can {verb} {resource} cluster-wide"
    finally:
        cluster.helm("uninstall", RELEASE, "--namespace", release_ns, "--wait", check=False)
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_namespaced_install_grants_nothing_elsewhere(cluster, namespace):
    watched, unwatched = f"{namespace}-w", f"{namespace}-u"
    for ns in (watched, unwatched):
        cluster.kubectl("create", "namespace", ns)
    release = "ipoolns"
    try:
        cluster.helm("install", release, str(CHART), "--namespace", namespace,
                     "--set", "watch.allNamespaces=false", "--set", f"watch.namespaces={{{watched}}}")
        sa = f"{namespace}:{release}-inferencepool-operator"
        assert can_i(cluster, "create", "deployments.apps", watched, sa)
        assert can_i(cluster, "patch", "inferencepools.autoscaling.inferencepool.dev", watched, sa, "--subresource=status")
        assert not can_i(cluster, "create", "deployments.apps", unwatched, sa)
        assert not can_i(cluster, "list", "inferencepools.autoscaling.inferencepool.dev", unwatched, sa)
    finally:
        cluster.helm("uninstall", release, "--namespace", namespace, check=False)
        for ns in (watched, unwatched):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.mark.skipif(not POOL_EXAMPLES, reason="no example InferencePool manifests")
def test_example_pools_apply(cluster):
    cluster.kubectl("apply", "-f", str(ROOT / "crds" / "inferencepools.autoscaling.inferencepool.dev.yaml"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/inferencepools.autoscaling.inferencepool.dev")
    namespaces = {d["metadata"].get("namespace") for p in POOL_EXAMPLES for d in yaml.safe_load_all(p.read_text()) if d}
    created = [ns for ns in namespaces if ns and cluster.kubectl("get", "namespace", ns, check=False).returncode != 0]
    for ns in created:
        cluster.kubectl("create", "namespace", ns)
    try:
        for path in POOL_EXAMPLES:
            cluster.kubectl("apply", "--dry-run=server", "-f", str(path))
            cluster.kubectl("apply", "-f", str(path))
            for d in yaml.safe_load_all(path.read_text()):
                if d and d["kind"] == "InferencePool":
                    got = cluster.kubectl_json("-n", d["metadata"]["namespace"], "get", "ipool", d["metadata"]["name"])
                    assert got["spec"]["gpu"] == {**d["spec"]["gpu"], **got["spec"]["gpu"]}
            cluster.kubectl("delete", "-f", str(path), "--wait=false")
    finally:
        for ns in created:
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
