#!/usr/bin/env python3
"""Docker-free Kubernetes test bed with fake GPU nodes, all on 127.0.0.1.

    bed.py up | down | env | status

`up` starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler (real binaries built by
e2e/cluster/install) and KWOK in controller-only mode, which plays kubelet for the fake nodes of
nodes.yaml. `down` stops exactly the processes `up` started (by pid). Both are idempotent.

Environment:
  IPOOL_BED_DIR                 state dir: pids, logs, certs, kubeconfig (/tmp/inferencepool-bed)
  IPOOL_BED_PORT_BASE           first of the loopback ports used (24700); see PORTS
  IPOOL_BED_NODES               node pool config (e2e/cluster/nodes.yaml)
  IPOOL_BED_COLD_START_SECONDS  overrides the default cold start of nodes.yaml
  INFERENCEPOOL_CACHE           where install put the binaries (~/.cache/inferencepool)
Stdlib only, plus PyYAML to read nodes.yaml.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("INFERENCEPOOL_CACHE") or Path.home() / ".cache" / "inferencepool")
BIN = CACHE / "bin"
STATE = Path(os.environ.get("IPOOL_BED_DIR") or "/tmp/inferencepool-bed")
PORT_BASE = int(os.environ.get("IPOOL_BED_PORT_BASE") or 24700)
NODES_FILE = Path(os.environ.get("IPOOL_BED_NODES") or HERE / "nodes.yaml")
HOST = "127.0.0.1"

# Every listener binds 127.0.0.1. Prometheus instances started by tests take base+10 .. base+29.
PORTS = {
    "etcd": PORT_BASE,
    "etcd-peer": PORT_BASE + 1,
    "kube-apiserver": PORT_BASE + 2,
    "kube-controller-manager": PORT_BASE + 3,
    "kube-scheduler": PORT_BASE + 4,
    "kwok": PORT_BASE + 5,
}
PROMETHEUS_PORTS = range(PORT_BASE + 10, PORT_BASE + 30)
COMPONENTS = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"]
TOOLS = COMPONENTS + ["kubectl", "helm", "prometheus"]

# Fake pods get IPs from their node's podCIDR and nodes have InternalIPs, all in loopback space so
# no address in the bed points off the machine. Nothing ever connects to them.
POD_CIDR_FMT = "127.100.{i}.0/24"
NODE_IP_FMT = "127.101.0.{i}"
# Service ClusterIPs are virtual (no kube-proxy here); keep them in loopback space as well.
SERVICE_CIDR = "127.96.0.0/16"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
COLD_START_ANNOTATION = "inferencepool.dev/cold-start-seconds"


class BedError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[bed {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def missing_tools() -> list[str]:
    return [t for t in TOOLS if not os.access(BIN / t, os.X_OK)]


def paths() -> dict[str, Path]:
    return {
        "pki": STATE / "pki",
        "logs": STATE / "logs",
        "pids": STATE / "pids",
        "etcd-data": STATE / "etcd-data",
        "kubeconfig": STATE / "kubeconfig",
        "kwok-config": STATE / "kwok.yaml",
        "nodes": STATE / "nodes.json",
        "info": STATE / "bed.json",
        "env": STATE / "env.sh",
    }


# ------------------------------------------------------------------------------------- processes
def _pid_file(name: str) -> Path:
    return paths()["pids"] / f"{name}.pid"


def _our_pid(name: str) -> int | None:
    """Pid of component `name` if it still runs *our* binary (guards against recycled pids)."""
    try:
        pid = int(_pid_file(name).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    if state == "Z" or not cmdline or cmdline[0].decode() != str(BIN / name):
        return None
    return pid


_procs: dict[str, subprocess.Popen] = {}  # what this process started


def _alive(name: str) -> bool:
    # Right after exec, /proc/<pid>/cmdline can still read empty for an instant, so for our own
    # children ask the Popen object; _our_pid() is for processes a previous `up` started.
    if name in _procs:
        return _procs[name].poll() is None
    return _our_pid(name) is not None


def _start(name: str, args: list[str]) -> None:
    logf = open(paths()["logs"] / f"{name}.log", "ab")
    # Own session: survives the `up` process and never gets the caller's Ctrl-C.
    proc = subprocess.Popen([str(BIN / name), *args], stdin=subprocess.DEVNULL, stdout=logf,
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=STATE)
    _procs[name] = proc
    _pid_file(name).write_text(str(proc.pid))
    log(f"started {name} (pid {proc.pid}, log {paths()['logs'] / (name + '.log')})")


def _stop(name: str, timeout: float = 15) -> None:
    pid = _our_pid(name)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _our_pid(name) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        if _our_pid(name) is not None:
            os.kill(pid, signal.SIGKILL)
            while _our_pid(name) is not None:
                time.sleep(0.1)
        log(f"stopped {name} (pid {pid})")
    _pid_file(name).unlink(missing_ok=True)


def _tail(name: str, n: int = 25) -> str:
    try:
        lines = (paths()["logs"] / f"{name}.log").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def _wait(what: str, check, timeout: float, component: str | None = None, interval: float = 0.5):
    """Poll check() until it returns a truthy value; fail early if `component` died."""
    deadline = time.monotonic() + timeout
    last_err = None
    while time.monotonic() < deadline:
        if component and not _alive(component):
            raise BedError(f"{component} exited while waiting for {what}; last log lines:\n"
                           + _tail(component))
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - any failure just means "not yet"
            last_err = e
        time.sleep(interval)
    raise BedError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_err})"
                   + (f"; last log lines of {component}:\n{_tail(component)}" if component else ""))


def _https_get(url: str, client_cert: bool = True) -> str:
    p = paths()["pki"]
    if client_cert:
        ctx = ssl.create_default_context(cafile=str(p / "ca.crt"))
        ctx.load_cert_chain(p / "admin.crt", p / "admin.key")
    else:  # controller-manager / scheduler serve a self-signed cert; /healthz needs no auth
        ctx = ssl._create_unverified_context()  # noqa: S323 - loopback health probe only
    with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
        return r.read().decode()


# ------------------------------------------------------------------------------------------ pki
def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, cwd=paths()["pki"], capture_output=True)


def _make_pki() -> None:
    """A CA, the apiserver's serving cert, an admin client cert and the service-account key pair."""
    if not shutil.which("openssl"):
        raise BedError("openssl not found (e2e/cluster/install installs it)")
    pki = paths()["pki"]
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "3650", "-subj", "/CN=inferencepool-bed-ca")
    sans = ",".join(["IP:127.0.0.1", "DNS:localhost", "IP:" + SERVICE_CIDR.replace(".0/16", ".1")]
                    + [f"DNS:kubernetes{s}" for s in
                       ("", ".default", ".default.svc", ".default.svc.cluster.local")])
    certs = {  # name: (subject, extensions)
        "apiserver": ("/CN=kube-apiserver",
                      f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n"),
        # system:masters: one identity for the admin kubeconfig, the controller-manager, the
        # scheduler and KWOK keeps the bed small (controllers still use per-controller SAs).
        "admin": ("/O=system:masters/CN=inferencepool-admin", "extendedKeyUsage=clientAuth\n"),
    }
    for name, (subj, ext) in certs.items():
        (pki / f"{name}.ext").write_text("keyUsage=critical,digitalSignature,keyEncipherment\n" + ext)
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", subj)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "365", "-out", f"{name}.crt", "-extfile", f"{name}.ext")
    _openssl("genrsa", "-out", "sa.key", "2048")
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")


def _write_kubeconfig() -> None:
    pki = paths()["pki"]
    paths()["kubeconfig"].write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: inferencepool-bed
  cluster:
    server: https://{HOST}:{PORTS['kube-apiserver']}
    certificate-authority: {pki / 'ca.crt'}
users:
- name: admin
  user:
    client-certificate: {pki / 'admin.crt'}
    client-key: {pki / 'admin.key'}
contexts:
- name: inferencepool-bed
  context: {{cluster: inferencepool-bed, user: admin, namespace: default}}
current-context: inferencepool-bed
""")


# ---------------------------------------------------------------------------------------- nodes
def load_pools() -> dict:
    try:
        import yaml
    except ImportError as e:
        raise BedError("PyYAML is needed to read nodes.yaml: pip install pyyaml") from e
    cfg = yaml.safe_load(NODES_FILE.read_text())
    if os.environ.get("IPOOL_BED_COLD_START_SECONDS"):
        cfg["coldStartSeconds"] = float(os.environ["IPOOL_BED_COLD_START_SECONDS"])
    return cfg


def node_manifests(cfg: dict) -> list[dict]:
    nodes, i = [], 0
    for pool in cfg["pools"]:
        for n in range(pool["count"]):
            i += 1
            name = f"{pool['name']}-{n}"
            labels = {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "type": "kwok",
                "node.kubernetes.io/instance-type": pool["instanceType"],
                "inferencepool.dev/pool": pool["name"],
            }
            res = {"cpu": str(pool["cpu"]), "memory": str(pool["memory"]), "pods": "110"}
            taints = []
            if pool.get("gpus"):
                labels |= {  # as NVIDIA GPU feature discovery labels real nodes
                    "nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": pool["gpuProduct"],
                    "nvidia.com/gpu.count": str(pool["gpus"]),
                    "nvidia.com/gpu.memory": str(pool.get("gpuMemoryMiB", "")),
                }
                res["nvidia.com/gpu"] = str(pool["gpus"])
                taints.append(pool.get("taint", cfg["gpuTaint"]))
            nodes.append({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": labels,
                             "annotations": {KWOK_ANNOTATION: "fake",
                                             "node.alpha.kubernetes.io/ttl": "0"}},
                "spec": {"podCIDR": POD_CIDR_FMT.format(i=i), "podCIDRs": [POD_CIDR_FMT.format(i=i)],
                         "taints": taints},
                # Created with status: KWOK keeps capacity/addresses/nodeInfo and only adds conditions.
                "status": {"capacity": res, "allocatable": res,
                           "addresses": [{"type": "InternalIP", "address": NODE_IP_FMT.format(i=i)},
                                         {"type": "Hostname", "address": name}],
                           "nodeInfo": {"kubeletVersion": _k8s_version(), "architecture": "amd64",
                                        "operatingSystem": "linux",
                                        "containerRuntimeVersion": "kwok://fake",
                                        "kubeProxyVersion": "", "bootID": "", "machineID": "",
                                        "kernelVersion": "", "osImage": "KWOK fake node",
                                        "systemUUID": ""}},
            })
    return nodes


def _k8s_version() -> str:
    try:
        return (BIN / ".stamp-kube-apiserver").read_text().split()[0].split("=")[1]
    except (OSError, IndexError):
        return "v0.0.0"


def cold_start_jq(cfg: dict) -> str:
    """jq for KWOK's durationFrom: pod annotation, else the pool of the pod's node, as "<n>s"."""
    per_node = {n["metadata"]["name"]: str(p["coldStartSeconds"])
                for p in cfg["pools"] if "coldStartSeconds" in p
                for n in node_manifests({**cfg, "pools": [p]})}
    return (f'.spec.nodeName as $n | (.metadata.annotations["{COLD_START_ANNOTATION}"] '
            f'// ({json.dumps(per_node, separators=(",", ":"))} | .[$n]) // empty) '
            f'| tostring + "s"')


def _write_kwok_config(cfg: dict) -> None:
    text = (HERE / "kwok-stages.yaml").read_text()
    text = text.replace("__DEFAULT_COLD_START_MS__", str(int(float(cfg["coldStartSeconds"]) * 1000)))
    text = text.replace("__COLD_START_JQ__", cold_start_jq(cfg))
    paths()["kwok-config"].write_text(text)


# -------------------------------------------------------------------------------------- up/down
def kubectl(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "kubectl"), "--kubeconfig", str(paths()["kubeconfig"]), *args],
                          input=input, text=True, capture_output=True, check=check, timeout=120)


def running() -> bool:
    """True if every component runs and the apiserver is ready."""
    if any(_our_pid(c) is None for c in COMPONENTS):
        return False
    try:
        return _https_get(f"https://{HOST}:{PORTS['kube-apiserver']}/readyz") == "ok"
    except Exception:  # noqa: BLE001
        return False


def up() -> None:
    if missing_tools():
        raise BedError(f"missing binaries in {BIN}: {', '.join(missing_tools())}; "
                       "run e2e/cluster/install")
    if running():
        log(f"already up (state in {STATE})")
        return
    down(quiet=True)  # a half-started or crashed bed: clean it first
    busy = [f"{n}={p}" for n, p in PORTS.items() if not _port_free(p)]
    if busy:
        raise BedError(f"ports busy on {HOST}: {', '.join(busy)}; "
                       "set IPOOL_BED_PORT_BASE to another base")
    t0 = time.monotonic()
    for d in ("pki", "etcd-data"):
        shutil.rmtree(paths()[d], ignore_errors=True)
    for d in ("pki", "logs", "pids"):
        paths()[d].mkdir(parents=True, exist_ok=True)
    cfg = load_pools()
    _make_pki()
    _write_kubeconfig()
    _write_kwok_config(cfg)
    pki, kc, p = paths()["pki"], str(paths()["kubeconfig"]), PORTS

    etcd_url, peer_url = f"http://{HOST}:{p['etcd']}", f"http://{HOST}:{p['etcd-peer']}"
    _start("etcd", [
        "--name=bed", f"--data-dir={paths()['etcd-data']}",
        f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
        f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=bed={peer_url}",
        "--unsafe-no-fsync",  # throwaway data: do not wait for the disk on every write
        "--log-level=warn",
    ])
    _wait("etcd health", lambda: '"health":"true"' in urllib.request.urlopen(
        f"{etcd_url}/health", timeout=3).read().decode(), 60, "etcd")

    _start("kube-apiserver", [
        f"--etcd-servers={etcd_url}",
        f"--bind-address={HOST}", f"--advertise-address={HOST}", f"--secure-port={p['kube-apiserver']}",
        f"--cert-dir={pki}", f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}", f"--client-ca-file={pki / 'ca.crt'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # RBAC as on a real cluster, so the operator's chart RBAC gets exercised.
        "--authorization-mode=Node,RBAC",
        # No kubernetes Service endpoints: they would point at the advertise address, and
        # loopback endpoints are rejected by validation. Nothing in the bed needs them.
        "--endpoint-reconciler-type=none",
        "--allow-privileged=true", "--profiling=false", "--v=1",
    ])
    _wait("kube-apiserver /readyz",
          lambda: _https_get(f"https://{HOST}:{p['kube-apiserver']}/readyz") == "ok",
          120, "kube-apiserver")

    common = [f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
              f"--authorization-kubeconfig={kc}", f"--bind-address={HOST}",
              "--leader-elect=false",  # single instance: skip the lease wait
              "--profiling=false", "--v=1"]
    _start("kube-controller-manager", [
        *common, f"--secure-port={p['kube-controller-manager']}",
        f"--cert-dir={pki / 'kcm'}",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}", "--use-service-account-credentials=true",
        f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
    ])
    _start("kube-scheduler", [*common, f"--secure-port={p['kube-scheduler']}",
                              f"--cert-dir={pki / 'scheduler'}"])
    for c in ("kube-controller-manager", "kube-scheduler"):
        _wait(f"{c} /healthz", lambda c=c: _https_get(
            f"https://{HOST}:{p[c]}/healthz", client_cert=False) == "ok", 90, c)

    nodes = node_manifests(cfg)
    paths()["nodes"].write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}))
    kubectl("create", "-f", str(paths()["nodes"]))
    _start("kwok", [
        f"--kubeconfig={kc}", f"--config={paths()['kwok-config']}",
        "--manage-all-nodes=false", f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
        "--cidr=127.100.0.0/16", "--node-ip=127.101.0.1",  # fallbacks; nodes carry their own
        f"--server-address={HOST}:{p['kwok']}", "--node-lease-duration-seconds=40",
    ])

    def nodes_ready():
        items = json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"]
        ready = [n for n in items if any(c["type"] == "Ready" and c["status"] == "True"
                                         for c in n["status"].get("conditions", []))]
        return len(ready) == len(nodes)
    _wait(f"{len(nodes)} fake nodes Ready", nodes_ready, 90, "kwok")
    # Pods are refused until the controller-manager has made the namespace's default ServiceAccount.
    _wait("default ServiceAccount", lambda: kubectl(
        "get", "serviceaccount", "default", check=False).returncode == 0, 60,
        "kube-controller-manager")

    info = {"state_dir": str(STATE), "kubeconfig": kc, "bin_dir": str(BIN),
            "server": f"https://{HOST}:{p['kube-apiserver']}", "ports": PORTS,
            "prometheus_ports": [PROMETHEUS_PORTS.start, PROMETHEUS_PORTS.stop - 1],
            "kubernetes_version": _k8s_version(), "nodes_file": str(NODES_FILE),
            "pools": cfg["pools"], "cold_start_seconds": cfg["coldStartSeconds"],
            "pids": {c: _procs[c].pid for c in COMPONENTS}}
    paths()["info"].write_text(json.dumps(info, indent=2))
    paths()["env"].write_text(env_text())
    log(f"up in {time.monotonic() - t0:.1f}s: {len(nodes)} nodes Ready, "
        f"apiserver {info['server']}, state {STATE}")


def down(quiet: bool = False) -> None:
    # Reverse start order: KWOK and controllers first, etcd last.
    for c in reversed(COMPONENTS):
        _stop(c)
    shutil.rmtree(paths()["etcd-data"], ignore_errors=True)
    paths()["info"].unlink(missing_ok=True)
    busy = [f"{n}={p}" for n, p in PORTS.items() if not _port_free(p)]
    if busy and not quiet:
        log(f"note: ports still busy (not ours?): {', '.join(busy)}")
    if not quiet:
        log(f"down (logs kept in {paths()['logs']})")


def env_text() -> str:
    return (f"export KUBECONFIG={paths()['kubeconfig']}\n"
            f"export IPOOL_BED_DIR={STATE}\n"
            f"export IPOOL_BED_BIN={BIN}\n"
            f'export PATH="{BIN}:$PATH"\n')


# ----------------------------------------------------------------------------------- prometheus
class Prometheus:
    """A Prometheus (Debian's binary, installed by install) on 127.0.0.1 with a static scrape config.

    p = Prometheus.for_targets(["127.0.0.1:8000"], workdir=tmp_path).start()
    p.wait_for("up == 1"); p.query("vllm:num_requests_waiting"); p.stop()
    Storage lives under `workdir`; scrape targets must be loopback (network rule of the project).
    """

    def __init__(self, scrape_configs: list[dict], workdir: Path, port: int | None = None,
                 scrape_interval: str = "1s"):
        for sc in scrape_configs:
            for st in sc.get("static_configs", []):
                for t in st.get("targets", []):
                    host = t.rsplit(":", 1)[0].strip("[]")
                    if not (host.startswith("127.") or host in ("localhost", "::1")):
                        raise BedError(f"scrape target {t} is not on loopback")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or next((p for p in PROMETHEUS_PORTS if _port_free(p)), None)
        if self.port is None:
            raise BedError(f"no free Prometheus port in {PROMETHEUS_PORTS}")
        self.url = f"http://{HOST}:{self.port}"
        self.config_path = self.workdir / "prometheus.yml"
        self.log_path = self.workdir / "prometheus.log"
        # JSON is YAML: no YAML writer needed.
        self.config_path.write_text(json.dumps({
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "scrape_configs": scrape_configs}, indent=1))
        self.proc: subprocess.Popen | None = None

    @classmethod
    def for_targets(cls, targets: list[str], workdir: Path, job: str = "test",
                    metrics_path: str = "/metrics", **kw) -> "Prometheus":
        return cls([{"job_name": job, "metrics_path": metrics_path,
                     "static_configs": [{"targets": list(targets)}]}], workdir, **kw)

    def start(self, timeout: float = 60) -> "Prometheus":
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([
            str(BIN / "prometheus"), f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}", "--storage.tsdb.retention.time=2h",
            f"--web.listen-address={HOST}:{self.port}", "--log.level=warn",
        ], stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()

        def ready():
            if self.proc.poll() is not None:
                raise BedError("prometheus exited: " + self.log_path.read_text()[-2000:])
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=3) as r:
                return r.status == 200
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    return self
            except BedError:
                raise
            except Exception:  # noqa: BLE001 - not listening yet
                if time.monotonic() > deadline:
                    self.stop()
                    raise BedError(f"prometheus not ready after {timeout}s; see {self.log_path}")
            time.sleep(0.3)

    def query(self, expr: str) -> list[dict]:
        """Instant query; returns data.result (a list of {metric, value})."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise BedError(f"query {expr!r} failed: {body}")
        return body["data"]["result"]

    def wait_for(self, expr: str, timeout: float = 60) -> list[dict]:
        """Poll until the query returns a non-empty result."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise BedError(f"no result for {expr!r} after {timeout}s")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "Prometheus":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else "status"
    try:
        if cmd == "up":
            up()
            print(env_text(), end="")
        elif cmd == "down":
            down()
        elif cmd == "env":
            print(env_text(), end="")
        elif cmd == "status":
            ok = running()
            print(f"{'up' if ok else 'down'}: state {STATE}, apiserver "
                  f"https://{HOST}:{PORTS['kube-apiserver']}")
            return 0 if ok else 1
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except BedError as e:
        log(f"ERROR: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
