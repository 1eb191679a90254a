"""`inferencepool run`: the operator (kopf) that autoscales InferencePools.

Wire it into a CLI with `run.add_parser(subparsers)` and call `run.run(args)`; or `python -m inferencepool.operator.run`.
Standalone by default (one operator replica); `--peering NAME` turns on kopf's peering so that of several
replicas only one acts (needs crds/kopf-peering.yaml).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import random
import sys

DEFAULT_PROMETHEUS = os.environ.get("INFERENCEPOOL_PROMETHEUS_URL", "http://localhost:9090")


def _positive_seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def _promql_duration(text: str) -> str:
    from inferencepool.operator.observe import parse_duration

    try:
        parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _selector(text: str) -> dict:
    """A label selector of equalities and existence (`shard=0,team`, `!paused`) as Kopf's label filter."""
    import kopf

    labels = {}
    for term in (t.strip() for t in text.split(",") if t.strip()):
        key, eq, value = term.replace("==", "=").partition("=")
        if any(c in term for c in "()") or key.endswith("!") or " in " in f" {term} " or " notin " in f" {term} ":
            raise argparse.ArgumentTypeError(
                f"--selector {text!r}: only key=value, key and !key terms are supported, got {term!r}")
        if not key or (eq and not value):
            raise argparse.ArgumentTypeError(f"--selector {text!r}: {term!r} needs a label key (and a value after =)")
        if key.startswith("!"):
            labels[key[1:]] = kopf.ABSENT
        else:
            labels[key] = value if eq else kopf.PRESENT
    return labels


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                       help="watch pools in this namespace (repeatable); default: all namespaces")
    where.add_argument("--all-namespaces", "-A", action="store_true", help="watch pools in every namespace (default)")
    parser.add_argument("--selector", "-l", type=_selector, default=None, metavar="SELECTOR",
                        help="manage only the pools whose labels match, e.g. autoscaling.inferencepool.dev/shard=0 "
                             "(one operator per shard: the chart's `shards`); key=value, key and !key terms")
    parser.add_argument("--prometheus-url", default=DEFAULT_PROMETHEUS,
                        help="Prometheus that scrapes the vLLM pods (env INFERENCEPOOL_PROMETHEUS_URL; default %(default)s)")
    parser.add_argument("--interval", type=_positive_seconds, default=15.0, metavar="SECONDS",
                        help="seconds between two decisions for a pool (default %(default)s)")
    parser.add_argument("--rate-window", type=_promql_duration, default="2m", metavar="DURATION",
                        help="PromQL window of every rate, e.g. 30s or 2m (default %(default)s)")
    parser.add_argument("--burst-window", type=_promql_duration, default="15s", metavar="DURATION",
                        help="short windows whose count dispersion estimates the arrival CV (default %(default)s)")
    parser.add_argument("--scrape-interval", type=_positive_seconds, default=None, metavar="SECONDS",
                        help="Prometheus' scrape interval of the vLLM pods; default: measured from the series' sample "
                             "spacing. Rate and burst windows are raised to hold >= 4 scrapes")
    parser.add_argument("--pool-label", default="pool",
                        help="the label that names the pool on vLLM's series in Prometheus (default %(default)s)")
    parser.add_argument("--namespace-label", default="namespace",
                        help="the label that names the namespace on vLLM's series (default %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=9808,
                        help="port of the operator's own /metrics; 0 turns it off (default %(default)s)")
    parser.add_argument("--metrics-address", default="0.0.0.0", help="address for /metrics (default %(default)s)")
    parser.add_argument("--log-format", choices=("json", "console"), default="json")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--peering", metavar="NAME",
                        help="run with kopf peering under this name, for more than one operator replica")
    parser.add_argument("--priority", type=int, default=None,
                        help="peering priority of this replica (default: a random one, so that of replicas started "
                             "alike exactly one acts: kopf pauses every operator that sees one of the same priority)")
    parser.set_defaults(handler=run)
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `run` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "run", help="run the operator that autoscales InferencePools",
        description="Run the InferencePool operator: keep each pool's vLLM Deployment sized for its SLO.",
    )
    return configure_parser(parser)


def may_watch(namespaces: list[str]) -> bool:
    """Whether these credentials may list and watch Deployments and pods where the pools are (a
    SelfSubjectAccessReview each, which every authenticated user may ask). Without, Kopf would wait for
    its indexes forever: an operator under an older chart's RBAC reads them per tick instead."""
    from kubernetes import client

    api = client.AuthorizationV1Api()
    for namespace in namespaces or [None]:
        for group, resource in (("apps", "deployments"), ("", "pods")):
            for verb in ("list", "watch"):
                review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(
                    resource_attributes=client.V1ResourceAttributes(
                        group=group, resource=resource, verb=verb, namespace=namespace)))
                if not api.create_self_subject_access_review(review).status.allowed:
                    return False
    return True


def build(args: argparse.Namespace, watch: bool = True):
    """The kopf registry, settings and operator for these arguments (no network yet)."""
    import kopf

    from inferencepool.operator import budget, handlers, observe
    from inferencepool.operator.metrics import OperatorMetrics

    query = observe.QuerySettings(
        rate_window=args.rate_window,
        burst_window=args.burst_window,
        pool_label=args.pool_label,
        namespace_label=args.namespace_label,
        scrape_interval=args.scrape_interval,
    )
    config = handlers.OperatorConfig(prometheus_url=args.prometheus_url, interval=args.interval, query=query)
    metrics = OperatorMetrics()
    reader = observe.PrometheusReader(
        config.prometheus_url,
        query,
        ttl=config.interval / 2,
        on_error=lambda signal, _error: metrics.prometheus_errors.labels(signal).inc(),
        wait=0.0,  # a refresh never holds a decision: the last answer serves meanwhile
        first_wait=min(config.interval / 2, 10.0),  # with no answer yet, a pool waits this long at most
    )
    budgets = budget.BudgetBook()
    operator = handlers.Operator(config, reader, handlers.Kube(_api_client()), metrics, budgets=budgets)
    selector = getattr(args, "selector", None)
    if selector:
        reader.scope = operator.shard_pools  # a shard reads its own pools' series, not every shard's
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry)(kopf.login_via_client)  # the same credentials as the kubernetes client
    handlers.register(registry, operator, config.interval, selector, watch,
                      initial_delay=config.interval if args.peering else None)
    budget.register(registry, budget.BudgetHandlers(budgets), config.interval, selector)

    settings = kopf.OperatorSettings()
    prefix = "autoscaling.inferencepool.dev"
    settings.persistence.finalizer = f"{prefix}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=prefix, key="last-handled-spec")
    settings.posting.level = logging.INFO
    settings.execution.max_workers = HANDLER_THREADS  # many new pools at start: their Deployments in parallel
    settings.networking.error_backoffs = ApiBackoffs()
    for resource, labels in watch_selectors(selector).items():
        settings.watching.label_selectors[resource] = labels
    settings.peering.standalone = not args.peering
    if args.peering:
        settings.peering.name = args.peering
        settings.peering.priority = peering_priority(args.priority)
        settings.peering.mandatory = True  # no peering object: fail, rather than act beside the other replicas
    return registry, settings, operator, metrics


def watch_selectors(selector: dict | None) -> dict[tuple, str]:
    """Server-side label selectors for Kopf's watch streams, by resource. The handlers' `labels=` filters
    run in the operator, after Kopf has parsed every object and kept a memory of it: a shard's operator
    would hold every shard's pools, and the Deployment and pod watches every pod of the cluster (issue 14).
    The apiserver filters these instead: the pools and budgets by `--selector`, the workloads by the pool
    label each one carries."""
    import kopf

    from inferencepool.operator import budget, handlers, workload

    terms = ",".join(f"!{key}" if value is kopf.ABSENT else key if value is kopf.PRESENT else f"{key}={value}"
                     for key, value in (selector or {}).items())
    selectors = {("apps", "v1", "deployments"): workload.POOL_LABEL, ("v1", "pods"): workload.POOL_LABEL}
    if terms:
        selectors.update({handlers.RESOURCE: terms, budget.RESOURCE: terms})
    return selectors


HANDLER_THREADS = 16  # Kopf's threads for create/update/resume (its default is 6); the rounds have their own 8


def _api_client():
    """The kubernetes client for Kube, with a connection for every thread that may use it at once (Kopf's
    and the rounds'): its default pool of 10 discarded connections beyond, and a new one costs a TLS
    handshake per request."""
    from kubernetes import client

    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = HANDLER_THREADS + 16
    return client.ApiClient(configuration)


def peering_priority(given: int | None) -> int:
    """--priority, else a random one (issue 15: the chart's two replicas both ran at priority 0, and kopf
    pauses an operator that sees a peer of the same priority, so neither acted)."""
    return given if given is not None else random.SystemRandom().randint(1, 2**31 - 1)


class ApiBackoffs:
    """kopf's retries of a failed API request: its default 1, 1, 2, 3, 5, 8, 13, 21 s, then every 30 s for
    ever. With the default alone, a status patch in flight when the apiserver stayed down over 54 s
    escalated and ended that pool's timer task for good (issue 15: 6 of 300 pools left un-autoscaled
    until a restart). kopf takes any re-iterable (kopf/_cogs/clients/api.py, `request`)."""

    def __iter__(self):
        return itertools.chain((1, 1, 2, 3, 5, 8, 13, 21), itertools.repeat(30.0))


def _load_kube_config(kubeconfig: str | None) -> None:
    """The kubernetes client's config, shared with kopf's login (which reads the same sources).

    kopf's login_via_client calls load_kube_config() with no file, which reads the module default that
    the client took from $KUBECONFIG at import: point that default at --kubeconfig too, or kopf's
    watches and status patches would use other credentials than the Deployment writes.
    """
    from kubernetes import config
    from kubernetes.config import kube_config

    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = kubeconfig
        config.load_kube_config(config_file=kubeconfig)
        return
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


def run(args: argparse.Namespace) -> int:
    """Run the operator until SIGINT/SIGTERM; returns the process exit code."""
    import kopf

    from inferencepool.operator import logs

    from inferencepool.operator import rounds

    rounds.tune_allocator()  # before any thread starts (rounds.py: where the RSS of many pools went)
    logs.configure(args.log_format, args.log_level)
    logs.post_failures()
    log = logs.get("inferencepool.operator.run")
    try:
        _load_kube_config(args.kubeconfig)
    except Exception as error:  # noqa: BLE001 - any failure here is "no cluster to talk to"
        log.error("no Kubernetes configuration", error=str(error))
        return 2
    try:
        watch = may_watch(args.namespace)
    except Exception as error:  # noqa: BLE001 - cannot ask: try the watches (Kopf reports what it is refused)
        log.warning("cannot check list/watch permissions", error=str(error))
        watch = True
    if not watch:
        log.warning("no list/watch on deployments and pods: each decision reads them from the API "
                    "(grant list and watch, as the chart does, for the watch caches)")
    registry, settings, _, metrics = build(args, watch)
    if args.metrics_port:
        metrics.serve(args.metrics_port, args.metrics_address)
    log.info(
        "starting",
        namespaces=args.namespace or "all",
        prometheus_url=args.prometheus_url,
        interval=args.interval,
        rate_window=args.rate_window,
        metrics_port=args.metrics_port,
        peering=args.peering or "standalone",
        selector={k: str(v) for k, v in (args.selector or {}).items()} or None,
    )
    from inferencepool.operator import memdump

    if memdump.start_from_env():  # IPOOL_MEMORY_DUMP: where the memory goes (memdump.py); after the imports
        log.warning("tracing memory allocations", prefix=os.environ["IPOOL_MEMORY_DUMP"])
    kopf.run(
        registry=registry,
        settings=settings,
        standalone=not args.peering,
        peering_name=args.peering,
        priority=settings.peering.priority,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = configure_parser(argparse.ArgumentParser(prog="inferencepool run", description=__doc__.splitlines()[0]))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
