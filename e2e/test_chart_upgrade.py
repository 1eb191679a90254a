"""`helm upgrade` from the previous chart version (the chart as of commit c866ce3, 0.1.0) to this one, on the bed,
with a pool running; and the CRD upgraded as the chart's README says (helm never upgrades crds/).

The operator runs as a process with the release's ServiceAccount token (the chart's RBAC), as in
e2e/test_closed_loop.py: the bed's operator pod is KWOK's and runs nothing. It is stopped for the upgrade, as
the Recreate rollout stops the old pod, and started again after it.

Asserted: the pool keeps its status (desired replicas, decision history, conditions) and its Deployment keeps
its replicas and pods through the upgrade; the CRD created by the old release's `helm install` takes
`kubectl apply --server-side --force-conflicts` (without --force-conflicts it is refused: helm owns the
fields), a changed schema lands and the pool survives it; the restarted operator resumes: decisions go on
from the stored history, the same replica count, no new scale Event.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_closed_loop import sa_kubeconfig  # noqa: E402
from test_operator import (  # noqa: E402
    OperatorProcess, conditions, get_pool, pool_events, pool_manifest, replicas, robust_answer, scrape_config,
    wait_for_full_window)
from vllm_exporter import VllmExporter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "inferencepool-operator"
PREVIOUS = "c866ce3"  # the commit whose chart is the previous release (0.1.0)
CRD_NAME = "inferencepools.autoscaling.inferencepool.dev"


def as_sa(cluster, kubeconfig: Path) -> SimpleNamespace:
    """The operator process's cluster handle with the ServiceAccount's kubeconfig, also as $KUBECONFIG: kopf's
    login (kopf.login_via_client) loads the kubernetes client's default file, fixed from $KUBECONFIG when the
    client is imported, not the --kubeconfig flag, so with the bed's admin $KUBECONFIG kopf's own calls
    (watches, status patches, Events) would go as admin."""
    return SimpleNamespace(kubeconfig=kubeconfig, env={**cluster.env, "KUBECONFIG": str(kubeconfig)})


def chart_version(path: Path) -> str:
    return yaml.safe_load((path / "Chart.yaml").read_text())["version"]


@pytest.fixture
def previous_chart(tmp_path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", PREVIOUS, "charts/inferencepool-operator"],
                             capture_output=True, check=True, timeout=60).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive, check=True, timeout=60)
    return tmp_path / "charts" / "inferencepool-operator"


def release_info(cluster, release: str, namespace: str) -> dict:
    (info,) = json.loads(cluster.helm("list", "-n", namespace, "-o", "json").stdout)
    assert info["name"] == release
    return info


def crd_description(cluster) -> str:
    crd = cluster.kubectl_json("get", "crd", CRD_NAME)
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    return spec["minReplicas"].get("description", "")


def test_helm_upgrade_keeps_the_pool_and_the_operator_resumes(cluster, namespace, prometheus, previous_chart, tmp_path):
    assert chart_version(previous_chart) == "0.1.0" and chart_version(CHART) != "0.1.0"
    release, name, rate, service = namespace, "llama", 4.0, 1.5
    expected = robust_answer(rate, service, 4, 1.0, 0.99)
    sets = ["--set", "prometheus.url=http://127.0.0.1:1"]
    # As on a fresh cluster, the old release's `helm install` creates the CRD (only a CRD that does not exist).
    # Pools other tests left behind without an operator would hold the deletion up on Kopf's finalizer.
    listed = cluster.kubectl("get", "ipool", "--all-namespaces", "-o", "json", check=False)
    for pool in json.loads(listed.stdout)["items"] if listed.returncode == 0 else []:
        cluster.kubectl("-n", pool["metadata"]["namespace"], "patch", "ipool", pool["metadata"]["name"],
                        "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
    cluster.kubectl("delete", "crd", CRD_NAME, "--ignore-not-found", "--wait=true", timeout=180)
    cluster.helm("install", release, str(previous_chart), "--namespace", namespace, "--wait", "--timeout", "120s", *sets)
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")
    assert release_info(cluster, release, namespace)["chart"] == "inferencepool-operator-0.1.0"
    sa = f"{release}-inferencepool-operator"

    exporter = VllmExporter().start()
    exporter.set_load(rate, service)
    prom = prometheus(scrape_configs=[scrape_config(name, namespace, exporter)])
    operator = None
    try:
        wait_for_full_window(prom, name)
        kubeconfig = sa_kubeconfig(cluster, namespace, sa, tmp_path / "sa-old.kubeconfig")
        operator = OperatorProcess(as_sa(cluster, kubeconfig), namespace, prom.url, tmp_path / "operator-old.log").start()
        cluster.apply(pool_manifest(name), namespace=namespace)
        cluster.wait_until(lambda: get_pool(cluster, namespace, name).get("status", {}).get("readyReplicas") == expected,
                           timeout=150, desc=f"{expected} replicas Ready under the old release")
        operator.stop()  # the old operator goes with the old release's pod
        before = get_pool(cluster, namespace, name)["status"]
        pods_before = sorted(p["metadata"]["name"] for p in cluster.kubectl_json(
            "-n", namespace, "get", "pods", "-l", f"autoscaling.inferencepool.dev/pool={name}")["items"])
        scale_events = [e for e in pool_events(cluster, namespace, name) if e["reason"] in ("ScaledUp", "ScaledDown")]
        assert before["desiredReplicas"] == expected and len(pods_before) == expected and len(scale_events) == 1

        # The CRD first (helm upgrade leaves crds/ alone): the README's command. Without --force-conflicts the
        # API server refuses a changed CRD, because helm's create owns its fields.
        changed = yaml.safe_load((CHART / "crds" / f"{CRD_NAME}.yaml").read_text())
        props = changed["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        props["minReplicas"]["description"] = "Upgrade test: " + props["minReplicas"].get("description", "")
        (tmp_path / "crds-next").mkdir()
        (tmp_path / "crds-next" / f"{CRD_NAME}.yaml").write_text(yaml.safe_dump(changed))
        refused = cluster.kubectl("apply", "--server-side", "-f", str(tmp_path / "crds-next"), check=False)
        assert refused.returncode != 0 and 'conflict with "helm"' in refused.stderr, refused.stderr
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(tmp_path / "crds-next"))
        assert crd_description(cluster).startswith("Upgrade test: ")
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))  # this chart's own
        assert not crd_description(cluster).startswith("Upgrade test: ")
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")

        # --reuse-values, as most upgrades are run: the old release's values, which lack this version's new keys
        cluster.helm("upgrade", release, str(CHART), "--namespace", namespace, "--wait", "--timeout", "120s",
                     "--reuse-values")
        info = release_info(cluster, release, namespace)
        assert (info["chart"], info["revision"], info["status"]) == (
            f"inferencepool-operator-{chart_version(CHART)}", "2", "deployed")
        values = json.loads(cluster.helm("get", "values", release, "-n", namespace, "-o", "json").stdout)
        assert values == {"prometheus": {"url": "http://127.0.0.1:1"}}
        deployment = cluster.kubectl_json("-n", namespace, "get", "deployment", sa)
        assert deployment["metadata"]["labels"]["helm.sh/chart"] == f"inferencepool-operator-{chart_version(CHART)}"
        assert deployment["status"].get("readyReplicas") == 1

        # Nothing of the pool changed: status, replicas, pods.
        after_upgrade = get_pool(cluster, namespace, name)["status"]
        for key in ("desiredReplicas", "readyReplicas", "history", "lastScaleTime", "conditions", "reason"):
            assert after_upgrade.get(key) == before.get(key), key
        assert replicas(cluster, namespace, name) == expected
        pods_after = sorted(p["metadata"]["name"] for p in cluster.kubectl_json(
            "-n", namespace, "get", "pods", "-l", f"autoscaling.inferencepool.dev/pool={name}")["items"])
        assert pods_after == pods_before

        # The operator of the new release resumes from the stored status, with the upgraded chart's RBAC.
        kubeconfig = sa_kubeconfig(cluster, namespace, sa, tmp_path / "sa-new.kubeconfig")
        operator = OperatorProcess(as_sa(cluster, kubeconfig), namespace, prom.url, tmp_path / "operator-new.log").start()
        count = json.loads(before["history"])["forecaster"]["count"]
        cluster.wait_until(
            lambda: json.loads(get_pool(cluster, namespace, name)["status"]["history"])["forecaster"]["count"] > count + 1,
            timeout=90, desc="decisions from the operator after the upgrade")
        resumed = get_pool(cluster, namespace, name)["status"]
        assert resumed["desiredReplicas"] == expected and replicas(cluster, namespace, name) == expected
        assert json.loads(resumed["history"])["last_scale_time"] == json.loads(before["history"])["last_scale_time"]
        assert conditions(get_pool(cluster, namespace, name))["MetricsAvailable"]["status"] == "True"
        decisions = operator.decisions()
        assert decisions and all(d["action"] == "hold" and d["replicas"] == expected for d in decisions)
        assert [e for e in pool_events(cluster, namespace, name) if e["reason"] in ("ScaledUp", "ScaledDown")] == scale_events
    finally:
        if operator and operator.proc.poll() is None:
            cluster.kubectl("-n", namespace, "delete", "ipool", "--all", "--wait=true", "--timeout=60s", check=False)
        if operator:
            operator.stop()
        for pool in cluster.kubectl_json("-n", namespace, "get", "ipool")["items"]:  # after a failure
            cluster.kubectl("-n", namespace, "patch", "ipool", pool["metadata"]["name"], "--type=merge",
                            "-p", '{"metadata":{"finalizers":null}}', check=False)
        exporter.stop()
        cluster.helm("uninstall", release, "--namespace", namespace, check=False)
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"), check=False)
        for log in sorted(tmp_path.glob("operator-*.log")):
            print(f"---- {log.name} (tail) ----\n" + log.read_text()[-4000:])
