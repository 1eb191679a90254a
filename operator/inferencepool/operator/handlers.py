"""Kopf handlers: glue between the cluster, Prometheus and policy.decide(). No decisions are made here.

- create / update / resume: server-side apply the pool's Deployment and Service (adopting existing ones).
- every pool once per `interval`, in one round (rounds.py; on a fixed grid, however long a run took): read the pool's
  metrics (one batched Prometheus read per interval serves every pool), its Deployment and pods (from
  Kopf indexes fed by watches: memory, not a GET and a LIST per pool per tick, see `Kube`); decide; apply the replica count (that field alone) only
  when it changes (when it falls, after setting the pods' deletion costs: drain.py, the idlest go first);
  write status only when a field a user or the policy acts on changed, else at most every
  `STATUS_REFRESH_INTERVALS` (the decision History and live figures; the operator keeps the newest status
  in memory); post an Event per scale and per condition change; log one line per decision.
- a watch on the pools' Deployments: one deleted or scaled by hand is put back when the event arrives.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import kopf

from inferencepool.operator import drain, logs, modes, observe, rounds, slo as pool_slo, spec as pool_spec, status as pool_status, workload
from inferencepool.operator.budget import BudgetBook
from inferencepool.core import policy
from inferencepool.operator.metrics import OperatorMetrics

FIELD_MANAGER = "inferencepool"  # owns the Deployment and Service templates (server-side apply)
SCALER_MANAGER = "inferencepool-autoscaler"  # owns spec.replicas alone
RESOURCE = (pool_spec.GROUP, pool_spec.VERSION, pool_spec.PLURAL)
DEPLOYMENT_INDEX, POD_INDEX = "pool_deployments", "pool_pods"  # Kopf index ids, also their kwarg names
SHARD_INDEX = "shard_pools"  # with --selector: the pools of this shard, for the Prometheus read's scope
STATUS_REFRESH_INTERVALS = 4  # live figures in status are at most this many intervals old
log = logs.get("inferencepool.operator")


@dataclass(frozen=True)
class OperatorConfig:
    prometheus_url: str = "http://localhost:9090"
    interval: float = 15.0  # seconds between two decisions for a pool
    query: observe.QuerySettings = field(default_factory=observe.QuerySettings)


def _compact(obj: Mapping, keep: Mapping) -> dict:
    """The parts of a watched object the decisions read (`keep` maps a key to True or to its own `keep`)."""
    out = {}
    for key, sub in keep.items():
        value = obj.get(key)
        if isinstance(sub, dict) and isinstance(value, Mapping):
            value = _compact(value, sub) or None
        if value is not None:
            out[key] = copy.deepcopy(value)
    return out


_DEPLOYMENT = {"metadata": {"name": True, "namespace": True, "uid": True, "ownerReferences": True,
                            "annotations": {workload.TEMPLATE_HASH: True}},
               "spec": {"replicas": True}, "status": {"readyReplicas": True}}
_POD = {"metadata": {"name": True, "creationTimestamp": True, "deletionTimestamp": True,
                     "annotations": {drain.DELETION_COST: True}},
        "status": {"phase": True}}


def deployment_entry(namespace, labels, body, **_) -> dict:
    """Kopf index of the pools' Deployments by (namespace, pool): what autoscale reads of one."""
    entry = _compact(body, _DEPLOYMENT)
    # who owns spec.replicas, in managedFields order (replicas_manager), without the rest of managedFields
    entry["metadata"]["managedFields"] = [
        {"manager": e.get("manager"), "fieldsV1": {"f:spec": {"f:replicas": {}}}}
        for e in body.get("metadata", {}).get("managedFields") or ()
        if "f:replicas" in ((e.get("fieldsV1") or {}).get("f:spec") or {})]
    return {(namespace, labels[workload.POOL_LABEL]): entry}


def pod_entry(namespace, labels, body, **_) -> dict:
    """Kopf index of the pools' pods by (namespace, pool): phase, Ready and PodScheduled, deletion cost."""
    entry = _compact(body, _POD)
    entry.setdefault("status", {})["conditions"] = [
        dict(c) for c in body.get("status", {}).get("conditions") or () if c.get("type") in ("Ready", "PodScheduled")]
    return {(namespace, labels[workload.POOL_LABEL]): entry}


class Kube:
    """The few Kubernetes calls the operator makes, returning plain camelCase dicts.

    Reads come from Kopf's indexes once the operator has them (`indexes`; Kopf starts no handler before
    every index holds its first full listing). A Deployment the index does not hold (just created, or
    deleted) is asked from the API, so a missing one is never mistaken for a deleted one.
    """

    def __init__(self, api_client=None):
        from kubernetes import client

        self.api = api_client or client.ApiClient()
        self.apps = client.AppsV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.indexes: tuple | None = None  # (Deployment index, pod index) from kopf, or None: read the API

    @staticmethod
    def _indexed(index, key) -> list | None:
        try:
            return [copy.deepcopy(v) for v in index.get(key, ())]
        except RuntimeError:  # the store changed under us (the watch thread): read the API this once
            return None

    def _plain(self, obj) -> dict:
        return self.api.sanitize_for_serialization(obj)

    def apply(self, manifest: Mapping) -> None:
        """Server-side apply, forcing our fields back if someone else took them."""
        meta = manifest["metadata"]
        patch = {
            "Deployment": self.apps.patch_namespaced_deployment,
            "Service": self.core.patch_namespaced_service,
        }[manifest["kind"]]
        patch(
            meta["name"], meta["namespace"], manifest,
            field_manager=FIELD_MANAGER, force=True, _content_type="application/apply-patch+yaml",
        )

    def deployment(self, namespace: str, name: str, ask: bool = True) -> dict | None:
        """The Deployment from the index; one it does not hold is asked from the API (`ask`), or None."""
        from kubernetes.client.exceptions import ApiException

        if self.indexes is not None:
            found = self._indexed(self.indexes[0], (namespace, name))
            if found or (found is not None and not ask):
                return found[0] if found else None
        try:
            return self._plain(self.apps.read_namespaced_deployment(name, namespace))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def pods(self, namespace: str, pool_name: str) -> list[dict]:
        if self.indexes is not None:
            found = self._indexed(self.indexes[1], (namespace, pool_name))
            if found is not None:
                return found
        selector = ",".join(f"{k}={v}" for k, v in workload.selector(pool_name).items())
        return self._plain(self.core.list_namespaced_pod(namespace, label_selector=selector)).get("items", [])

    def pool(self, namespace: str, name: str) -> dict | None:
        """The pool itself (only when its Deployment went: a rare event, so a GET is fine)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            return client.CustomObjectsApi(self.api).get_namespaced_custom_object(*RESOURCE[:2], namespace, RESOURCE[2], name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def patch_status(self, namespace: str, name: str, status: Mapping) -> None:
        """A merge patch of the pool's status subresource (None removes a field), as Kopf writes one."""
        from kubernetes import client

        client.CustomObjectsApi(self.api).patch_namespaced_custom_object_status(
            *RESOURCE[:2], namespace, RESOURCE[2], name, {"status": dict(status)},
            _content_type="application/merge-patch+json")

    def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        """A merge patch of the pod's annotations (the deletion cost), nothing else."""
        self.core.patch_namespaced_pod(name, namespace, {"metadata": {"annotations": dict(annotations)}})

    def own_replicas(self, namespace: str, name: str, replicas: int) -> None:
        """The scaler's field manager claims spec.replicas at its current value (changes nothing else)."""
        self.scale(namespace, name, replicas)

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        """Server-side apply of spec.replicas alone, under its own field manager, so that managedFields
        tell who set the count last (the scale subresource does not record an owner for a field that
        had none, e.g. the defaulted count of a new Deployment)."""
        body = {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": namespace}, "spec": {"replicas": replicas}}
        self.apps.patch_namespaced_deployment(
            name, namespace, body,
            field_manager=SCALER_MANAGER, force=True, _content_type="application/apply-patch+yaml",
        )


def _message(conditions, kind: str) -> str | None:
    return next((c.get("message") for c in conditions or () if c.get("type") == kind), None)


def replicas_managers(deployment: Mapping) -> set[str]:
    """Every field manager that owns the Deployment's spec.replicas (server-side apply can share a field)."""
    return {entry.get("manager") for entry in (deployment.get("metadata") or {}).get("managedFields") or ()
            if "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})}


def replicas_manager(deployment: Mapping) -> str | None:
    """Who last set the Deployment's spec.replicas, from its managedFields (None: nobody, a default)."""
    manager = None
    for entry in (deployment.get("metadata") or {}).get("managedFields") or ():
        if "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {}):
            manager = entry.get("manager")
    return manager


class Operator:
    """The handlers' bodies, with their dependencies passed in (so they can be driven without kopf)."""

    def __init__(self, config: OperatorConfig, reader: observe.PrometheusReader, kube: Kube, metrics: OperatorMetrics,
                 running: drain.RunningReader | None = None, budgets: BudgetBook | None = None):
        self.config = config
        self.reader = reader
        self.kube = kube
        self.metrics = metrics
        self.running = running or drain.RunningReader(config.prometheus_url, config.query)
        self.budgets = budgets or BudgetBook()  # GPUBudgets shared with their timers (operator/budget.py)
        self.cold_starts = observe.ColdStarts()  # only pods seen cold-starting: Ready flaps are no cold start
        # pool -> (when its status was last written, the newest status decided): the status Kopf hands in
        # lags by up to STATUS_REFRESH_INTERVALS when only live figures moved
        self._status: dict[tuple[str, str], tuple[float | None, dict]] = {}
        self._restored: dict[tuple[str, str], tuple] = {}  # pool -> the Deployment (uid, generation) put back last
        self.rounds: rounds.Rounds | None = None  # every pool's decision, once per interval (register)

    def _use_indexes(self, kwargs: Mapping) -> None:
        """Kopf passes its indexes to every handler: give them to Kube, so its reads are memory reads."""
        if DEPLOYMENT_INDEX in kwargs and hasattr(self.kube, "indexes"):
            self.kube.indexes = (kwargs[DEPLOYMENT_INDEX], kwargs[POD_INDEX])
        if SHARD_INDEX in kwargs:
            self._shard_index = kwargs[SHARD_INDEX]

    def shard_pools(self) -> list[tuple[str, str]]:
        """The pools a shard's operator reads from Prometheus: its selector's, from Kopf's index (complete
        before the first decision: Kopf lists every indexed resource before it runs a handler), and those in
        the round. Without it, a shard's every read asked for every shard's pools: at 10,000 pools in 10
        shards, 34 queries of 10,000 series each, 377 s on the bed's Prometheus against a 30 s budget."""
        index = getattr(self, "_shard_index", None)
        known: list = []
        for _ in range(3):  # Kopf's loop may change the index while this thread reads it
            try:
                known = list(index.get("member", ())) if index is not None else []
                break
            except RuntimeError:
                continue
        return known + (self.rounds.members() if getattr(self, "rounds", None) is not None else [])

    # ------------------------------------------------------------ helpers

    def _parse(self, body, status: Mapping, patch) -> pool_spec.PoolConfig | None:
        """The pool's config, or None after reporting InvalidSpec in status (and once as an Event)."""
        try:
            pool_spec.check_name(body.metadata.name)
            return pool_spec.parse(body.get("spec") or {})
        except pool_spec.SpecError as error:
            previous = status.get("conditions")
            update = pool_status.invalid_spec_status(str(error), time.time(), body.metadata.get("generation"), previous)
            ready = [c for c in update["conditions"] if c["type"] == "Ready"]
            if pool_status.changed(previous, ready) or ready[0]["message"] != _message(previous, "Ready"):
                kopf.warn(body, reason="InvalidSpec", message=str(error))
            patch.status.update(update)
            log.warning("invalid spec", namespace=body.metadata.namespace, pool=body.metadata.name, error=str(error))
            return None

    def _apply_workload(self, body, config: pool_spec.PoolConfig, replicas: int | None = None) -> dict:
        namespace, name = body.metadata.namespace, body.metadata.name
        deployment = workload.deployment(body, config)
        live = self.kube.deployment(namespace, name)
        if live is None:
            # A new Deployment starts at the warm floor (or at `replicas`, the last decision, when one
            # deleted by hand is put back), not at Kubernetes' default of 1 replica, and the scaler's
            # field manager co-owns that count from the start (below).
            start = config.policy.min_replicas if replicas is None else replicas
            deployment = {**deployment, "spec": {**deployment["spec"], "replicas": start}}
            self.kube.apply(deployment)
            self.kube.own_replicas(namespace, name, start)
        else:
            owners = replicas_managers(live)
            if FIELD_MANAGER in owners and SCALER_MANAGER not in owners:
                # Server-side apply removes a field that its only owner stops applying: re-applying the
                # template (no replicas) would drop the Deployment to 1 replica, deleting pods at random.
                self.kube.own_replicas(namespace, name, int((live.get("spec") or {}).get("replicas", 1)))
            self.kube.apply(deployment)
        self.kube.apply(workload.service(body, config))
        return deployment

    def _mark_idlest(self, namespace: str, name: str, config: pool_spec.PoolConfig, pods: list[dict]) -> dict[str, str]:
        """Before a scale-down: each pod's deletion cost = its running requests, so the idlest go first.
        Without per-pod data the annotations stay as they are. Returns the costs it set."""
        running = self.running.read(config.prometheus_url, namespace, name, config.matchers)
        costs = drain.deletion_costs(pods, running)
        for pod, cost in costs.items():
            try:
                self.kube.annotate_pod(namespace, pod, {drain.DELETION_COST: cost})
            except Exception as error:  # noqa: BLE001 - a pod gone meanwhile; the scale-down still happens
                log.warning("deletion cost not set", namespace=namespace, pool=name, pod=pod, error=str(error))
        log.info("deletion costs", namespace=namespace, pool=name, running=running, set=costs,
                 error=self.running.last_error if not running else None)
        return costs

    # ------------------------------------------------------------ handlers

    def ensure(self, body, status, patch, **kwargs) -> None:
        """On create, update and resume: the Deployment and Service match the spec."""
        self._use_indexes(kwargs)
        config = self._parse(body, status, patch)
        if config is not None:
            self._apply_workload(body, config)

    def autoscale(self, body, status, patch, **kwargs) -> None:
        """One decision for one pool."""
        started = time.perf_counter()
        self._use_indexes(kwargs)
        namespace, name = body.metadata.namespace, body.metadata.name
        config = self._parse(body, status, patch)
        if config is None:
            self._status.pop((namespace, name), None)  # status now says InvalidSpec: compare with it next time
            return
        written, known = self._status.get((namespace, name), (None, None))
        stored, status = status, ({**status, **known} if known else status)  # the newest decided, when status lags
        indexed = getattr(self.kube, "indexes", None) is not None
        deployment = self.kube.deployment(namespace, name, ask=False) if indexed else self.kube.deployment(namespace, name)
        if deployment is None and indexed:
            # not created yet: the create handler makes it (and the watch puts back one deleted by hand);
            # doing it here too doubled a new pool's writes. Its watch event brings the first decision.
            log.info("waiting for the pool's Deployment", namespace=namespace, pool=name)
            return
        expected_hash = workload.deployment(body, config)["metadata"]["annotations"][workload.TEMPLATE_HASH]
        live_hash = ((deployment or {}).get("metadata", {}).get("annotations") or {}).get(workload.TEMPLATE_HASH)
        if deployment is None or live_hash != expected_hash:
            self._apply_workload(body, config)
            deployment = self.kube.deployment(namespace, name)

        now = time.time()
        pods = self.kube.pods(namespace, name)
        stuck = observe.unschedulable_pods(pods)
        cold_start = self.cold_starts.measure((namespace, name), pods) or status.get("coldStartSeconds")
        live_replicas = int((deployment.get("spec") or {}).get("replicas") or 0)
        last_desired = status.get("desiredReplicas")
        advisory = config.mode == modes.ADVISORY  # decide and report; never set the replicas
        hand_edited = (
            not advisory and status.get("mode") != modes.ADVISORY  # another scaler's count is no hand edit
            and last_desired is not None
            and live_replicas != last_desired
            and replicas_manager(deployment) not in (None, SCALER_MANAGER, FIELD_MANAGER)
        )
        current = int(last_desired) if hand_edited else live_replicas

        prometheus_error = missing = arrival_problem = window_note = None
        pools = None
        try:
            pools = self.reader.read(config.prometheus_url, config.matchers, pool=(namespace, name))
            window_note = getattr(pools, "window_note", None)
            metrics = observe.find(pools, namespace, name)
            if live_replicas == 0 and config.arrival_query:  # scale from zero: no vLLM runs, upstream sees demand
                metrics, arrival_problem = modes.upstream_metrics(self.reader, config, now)
            elif metrics is None or metrics.newest_sample_time is None:
                missing = observe.missing_series_message(
                    metrics, getattr(pools, "unlabelled_series", 0), self.config.query, namespace, name)
            elif config.arrival_query and not metrics.invalid_signals:  # the pool's own signal wins over vLLM's
                rate, problem = self.reader.value(config.prometheus_url, config.arrival_query)
                metrics = replace(metrics, arrival_rate=rate, arrival_source="query")
                arrival_problem = problem and f"spec.metrics.arrivalRateQuery {problem}"
        except observe.PrometheusUnavailable as error:
            metrics, prometheus_error = None, str(error)
        ready = int((deployment.get("status") or {}).get("readyReplicas") or 0)
        obs = observe.observations(metrics, now, current, ready, len(stuck), cold_start)
        slo_status, window_end, window_good, slo_note = pool_slo.measure(self.reader, config, pools, metrics,
                                                                         namespace, name, now)
        obs = replace(obs, slo_window_end=window_end, slo_window_good=window_good)
        rate_window = getattr(pools, "rate_window", None)
        window_seconds = observe.parse_duration(rate_window) if rate_window else None
        share, requests = observe.wait_tail(metrics, config.policy.slo_metric, config.policy.slo_target_seconds,
                                            window_seconds)
        own_rate = metrics is not None and metrics.arrival_source == "vllm"  # a user's query has its own window
        obs = replace(obs, wait_exceed_share=share, wait_exceed_requests=requests,
                      rate_window_seconds=window_seconds if own_rate else None,
                      wait_window_seconds=window_seconds if share is not None else None)
        history = policy.History.from_dict(pool_status.history_from_status(status))
        decision = policy.decide(config.policy, obs, history)
        decision = self.budgets.clamp(body, config, obs, decision, patch)  # a shared GPUBudget caps it
        if advisory:
            decision = modes.advisory_decision(decision, history)
            would = modes.would_event(decision, status.get("advisory"))
            if would:
                kopf.info(body, reason=would[0], message=would[1])

        if decision.replicas < live_replicas and not advisory:
            self._mark_idlest(namespace, name, config, pods)
        if decision.replicas != live_replicas and not advisory:
            self.kube.scale(namespace, name, decision.replicas)
        if hand_edited and decision.replicas != live_replicas:
            kopf.warn(
                body,
                reason="ReplicasRestored",
                message=(
                    f"Deployment replicas were set to {live_replicas} outside the operator; put back to "
                    f"{decision.replicas}. The pool owns its replica count: change minReplicas/maxReplicas instead."
                ),
            )
        if decision.action != "hold" and not advisory:
            kopf.info(body, reason="ScaledUp" if decision.action == "scale_up" else "ScaledDown", message=decision.reason)

        generation = body.metadata.get("generation")
        previous_conditions = status.get("conditions")
        conditions_now = pool_status.conditions(
            config, obs, decision, prometheus_error, stuck[0][1] if stuck else None, now, generation, missing,
            arrival_problem, metrics, window_note, slo_note,
        )
        for c in pool_status.changed(previous_conditions, conditions_now):
            self._condition_event(body, c, first=not previous_conditions)
        status_now = modes.status_patch(
            config.mode,
            pool_status.decision_status(config, obs, decision, metrics, conditions_now, previous_conditions, now, generation,
                                        getattr(pools, "scrape_interval", None), getattr(pools, "rate_window", None),
                                        slo_status),
            decision, live_replicas, status.get("advisory"), pool_status.timestamp(now))
        if (written is None or pool_status.needs_write(stored, status_now)
                or now - written >= STATUS_REFRESH_INTERVALS * self.config.interval):
            patch.status.update(status_now)
            written = now
        self._status[(namespace, name)] = (written, status_now)
        self._log(namespace, name, obs, decision, config, prometheus_error, hand_edited)
        self.metrics.record(namespace, name, decision, obs.arrival_rate, ready)
        self.metrics.record_status(namespace, name, config.policy, decision, conditions_now, status_now)
        self.metrics.record_slo(namespace, name, slo_status)
        self.metrics.record_mode(namespace, name, config.mode, live_replicas)
        self.metrics.reconcile_seconds.observe(time.perf_counter() - started)

    def status_not_written(self, key: tuple[str, str]) -> None:
        """The status patch failed: write it at the next decision whatever changed."""
        self._status[key] = (None, self._status.get(key, (None, {}))[1])

    def forget(self, body, **_) -> None:
        """On delete: drop the pool's series from the operator's /metrics and its curve history (owner refs
        delete the rest)."""
        self.metrics.forget(body.metadata.namespace, body.metadata.name)
        self._status.pop((body.metadata.namespace, body.metadata.name), None)
        self._restored.pop((body.metadata.namespace, body.metadata.name), None)
        self.reader.forget(body.metadata.namespace, body.metadata.name)  # its per-token-time history
        self.cold_starts.forget((body.metadata.namespace, body.metadata.name))

    def restore_needed(self, event, body) -> bool:
        """The cheap part of `restore`, run in Kopf's event loop for every Deployment event: whether there
        may be something to put back (then `restore` runs in a thread). A new pool's Deployment that just
        appeared kicks the pool's first decision."""
        namespace = body.metadata.namespace
        name = (body.metadata.labels or {}).get(workload.POOL_LABEL)
        known = self._status.get((namespace, name), (None, None))[1]
        if known is None:
            if self.rounds is not None and event.get("type") in (None, "ADDED", "MODIFIED"):
                self.rounds.kick((namespace, name))
            return False
        if event.get("type") == "DELETED":
            return True
        live, desired = int((body.get("spec") or {}).get("replicas") or 0), known.get("desiredReplicas")
        return (event.get("type") == "MODIFIED" and desired is not None and live != desired
                and replicas_manager(body) not in (None, SCALER_MANAGER, FIELD_MANAGER))

    def restore(self, event, body, **kwargs) -> None:
        """A pool's Deployment changed or went (from the watch, as it happens): put back one deleted or
        scaled by hand. Our own writes are told apart by managedFields; pools this operator has not decided
        yet (another shard's, or before their first decision) are left to their own operator or timer."""
        self._use_indexes(kwargs)
        namespace = body.metadata.namespace
        name = (body.metadata.labels or {}).get(workload.POOL_LABEL)
        known = self._status.get((namespace, name), (None, None))[1]
        if known is None or event.get("type") not in ("DELETED", "MODIFIED"):
            return
        desired = known.get("desiredReplicas")
        owner = next((r for r in body.metadata.get("ownerReferences") or () if r.get("kind") == pool_spec.KIND), None)
        if owner is None:
            return
        pool = {"apiVersion": owner["apiVersion"], "kind": owner["kind"],
                "metadata": {"name": owner["name"], "namespace": namespace, "uid": owner["uid"]}}
        if event["type"] == "DELETED":
            pool = self.kube.pool(namespace, name)
            if pool is None or pool["metadata"].get("deletionTimestamp"):
                return  # the pool is going: its Deployment goes with it
            try:
                config = pool_spec.parse(pool.get("spec") or {})
            except pool_spec.SpecError:
                return  # autoscale reports it
            self._apply_workload(kopf.Body(pool), config, desired)
            kopf.warn(pool, reason="DeploymentRestored",
                      message=f"Deployment {name} was deleted outside the operator; created again with {desired} replicas")
            log.warning("workload restored", namespace=namespace, pool=name, trigger="watch", deleted=True, replicas=desired)
            return
        live = int((body.get("spec") or {}).get("replicas") or 0)
        manager = replicas_manager(body)
        generation = (body.metadata.get("uid"), body.metadata.get("generation"))
        if (desired is None or live == desired or manager in (None, SCALER_MANAGER, FIELD_MANAGER)
                or self._restored.get((namespace, name)) == generation):  # its status moving meanwhile
            return
        self._restored[(namespace, name)] = generation
        self.kube.scale(namespace, name, desired)
        kopf.warn(pool, reason="ReplicasRestored", message=(
            f"Deployment replicas were set to {live} outside the operator; put back to {desired}. "
            "The pool owns its replica count: change minReplicas/maxReplicas instead."))
        log.warning("workload restored", namespace=namespace, pool=name, trigger="watch", manager=manager,
                    replicas_set=live, replicas=desired)

    # ------------------------------------------------------------ reporting

    @staticmethod
    def _condition_event(body, c: Mapping, first: bool) -> None:
        """Warn when something goes wrong, note when it recovers; stay quiet about a healthy start."""
        bad = {"Ready": "False", "MetricsAvailable": "False", "Saturated": "True", "ScalingLimited": "True",
               "MeasurementLimited": "True"}
        if first and c["reason"] == "NoReadyReplicas":
            return  # a new pool is loading its model: nothing is wrong yet
        if c["status"] == bad[c["type"]]:
            kopf.warn(body, reason=c["reason"], message=c["message"])
        elif not first:
            kopf.info(body, reason=c["reason"], message=f"{c['type']}={c['status']}: {c['message']}")

    @staticmethod
    def _log(namespace, name, obs, decision, config, prometheus_error, hand_edited) -> None:
        """The one line per decision: every Decision field but the history, and what it was decided on."""
        log.info(
            "decision",
            namespace=namespace,
            pool=name,
            action=decision.action,
            replicas=decision.replicas,
            previous_replicas=decision.previous_replicas,
            required_replicas=decision.required_replicas,
            constraint=decision.constraint,
            reason=decision.reason,
            planning_rate=decision.planning_rate,
            forecast_rate=decision.forecast_rate,
            ramp_rate=decision.ramp_rate,
            horizon_seconds=decision.horizon_seconds,
            utilization=decision.utilization,
            p_wait_exceeds={str(n): p for n, p in decision.p_wait_exceeds.items()},
            predicted_wait=decision.predicted_wait,
            metrics_available=decision.metrics_available,
            saturated=decision.saturated,
            scaling_limited=decision.scaling_limited,
            cost_per_hour=decision.cost_per_hour(config.policy),
            last_scale_time=decision.history.last_scale_time,
            arrival_rate=obs.arrival_rate,
            arrival_cv=decision.arrival_cv or obs.arrival_cv,
            held_cv=decision.held_cv,
            dispersion_timescale=decision.dispersion_timescale,
            wait_correction=decision.wait_correction,
            observed_wait_exceeds=obs.wait_exceed_share,
            service_time=obs.service_time,
            service_cv=obs.service_cv,
            prefill_time=obs.prefill_time,
            ready_replicas=obs.ready_replicas,
            unschedulable_replicas=obs.unschedulable_replicas,
            cold_start_seconds=obs.cold_start_seconds,
            metrics_age_seconds=obs.metrics_age_seconds,
            prometheus_error=prometheus_error,
            hand_edit_reverted=hand_edited,
            mode=config.mode,
        )


def register(registry: kopf.OperatorRegistry, operator: Operator, interval: float,
             labels: Mapping | None = None, watch: bool = True, initial_delay: float | None = None) -> None:
    """Attach the handlers to a kopf registry (built by run.py, so the interval is a flag). `labels`: only
    the pools that carry them (a shard's, `--selector`). Every pool is decided in one round per `interval`
    (rounds.py: a fixed grid, not `interval` after a late run); a Kopf daemon per pool only says it is in
    the round. A new pool is decided at once, or with peering after `initial_delay`, so that a replica that
    just started does not write beside one that has not yet seen it and paused (two ScaledUp Events for
    one scale, issue 15)."""
    pools = {"labels": dict(labels)} if labels else {}
    # A failed handler (the apiserver down, a quota) is retried after one interval, not kopf's default 60 s.
    retry = {"backoff": interval, "registry": registry, **pools}
    kopf.on.create(*RESOURCE, id="create-workload", **retry)(operator.ensure)
    kopf.on.resume(*RESOURCE, id="resume-workload", **retry)(operator.ensure)
    kopf.on.update(*RESOURCE, id="update-workload", field="spec", **retry)(operator.ensure)
    operator.rounds = rounds.Rounds(operator, interval, (DEPLOYMENT_INDEX, POD_INDEX, SHARD_INDEX))
    if labels:
        async def shard_pool(body, **_):
            return {"member": (body.metadata.namespace, body.metadata.name)}

        kopf.index(*RESOURCE, id=SHARD_INDEX, registry=registry, **pools)(shard_pool)
    kopf.daemon(*RESOURCE, id="autoscale", initial_delay=initial_delay, cancellation_timeout=1.0,
                **retry)(operator.rounds.member)
    kopf.on.delete(*RESOURCE, id="forget", optional=True, registry=registry, **pools)(operator.forget)

    async def left_the_selector(event, body, **kwargs):
        """A DELETED event with no deletion under way: the pool was relabelled out of this operator's
        server-side selector (run.watch_selectors); another shard's operator has it now."""
        if event["type"] == "DELETED" and not body.metadata.get("deletionTimestamp"):
            if operator.rounds.evict((body.metadata.namespace, body.metadata.name)):
                log.info("pool left this operator's selector", namespace=body.metadata.namespace,
                         pool=body.metadata.name)
                operator.forget(body)

    kopf.on.event(*RESOURCE, id="left-the-selector", registry=registry)(left_the_selector)
    if not watch:  # no list/watch granted on Deployments and pods (an older chart's RBAC): read them per tick
        return
    # the pools' Deployments and pods, from watches (by the pool label every one carries)
    watched = {workload.POOL_LABEL: kopf.PRESENT}
    # Async, so that Kopf runs them in its loop: a sync handler costs a thread hop per watch event, and at
    # 1,000 pools the pods' and Deployments' events queued up in Kopf faster than its threads took them.
    async def deployment_index(**kwargs):
        return deployment_entry(**kwargs)

    async def pod_index(**kwargs):
        return pod_entry(**kwargs)

    async def restore(event, body, **kwargs):
        if operator.restore_needed(event, body):  # rare: a hand edit or delete; its API calls in a thread
            await asyncio.to_thread(operator.restore, event=event, body=body, **kwargs)

    kopf.index("apps", "v1", "deployments", id=DEPLOYMENT_INDEX, labels=watched, registry=registry)(deployment_index)
    kopf.index("v1", "pods", id=POD_INDEX, labels=watched, registry=registry)(pod_index)
    kopf.on.event("apps", "v1", "deployments", id="restore-workload", labels=watched, registry=registry)(restore)
