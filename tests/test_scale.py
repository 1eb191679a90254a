"""Issue 14, one operator for thousands of pools, as pure logic: reads from watch indexes, status written
only on change, a bounded decision History, a Prometheus read that never blocks, the timer and selector."""

from __future__ import annotations

import argparse
import json
import random
import re
import threading
import time

import kopf
import pytest

from inferencepool.core import policy
from inferencepool.operator import budget, handlers, observe, run, status as pool_status, workload
from test_handlers import Pool, erlang_c_replicas, events, metrics, world  # noqa: F401


# ---------------------------------------------------------------- status writes


def tick(operator, pool) -> dict:
    """One decision; returns the status patch (empty: nothing written)."""
    patch = kopf.Patch()
    operator.autoscale(body=kopf.Body(pool.raw), status=json.loads(json.dumps(pool.raw["status"])), patch=patch)
    written = dict(patch.get("status") or {})
    for key, value in written.items():
        if value is None:
            pool.raw["status"].pop(key, None)
        else:
            pool.raw["status"][key] = value
    return written


def test_status_is_written_when_something_acted_on_changes_and_live_figures_every_few_intervals(world, events, monkeypatch):
    operator, kube, reader = world  # interval 3 s
    clock = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    pool = Pool()
    reader.pools = metrics(rate=12.0, service=1.5)
    assert tick(operator, pool)["desiredReplicas"] == erlang_c_replicas(12.0, 1.5)  # the first: always
    written_at = clock[0]
    clock[0] += 3
    kube.set_ready(kube.scaled[-1])
    assert tick(operator, pool)["readyReplicas"] == kube.scaled[-1]  # a user sees it at once
    written_at = clock[0]

    reader.pools = metrics(rate=12.5, service=1.5)  # the same answer, other live figures
    skipped = []
    while clock[0] + 3 < written_at + handlers.STATUS_REFRESH_INTERVALS * 3:
        clock[0] += 3
        skipped.append(tick(operator, pool))
    assert skipped == [{}] * (handlers.STATUS_REFRESH_INTERVALS - 1)
    assert pool.raw["status"]["arrivalRate"] == 12.0  # stale, by at most the refresh period
    # the History went on in memory meanwhile: each decision saw the one before, not the written one
    known = json.loads(operator._status[("serving", "llama")][1]["history"])  # noqa: SLF001
    assert known["recommendations"][-1][0] == clock[0] > json.loads(pool.raw["status"]["history"])["recommendations"][-1][0]
    clock[0] += 3
    assert tick(operator, pool)["arrivalRate"] == 12.5  # the bounded staleness

    clock[0] += 3
    reader.pools = {}  # metrics gone: a condition changes, written at once
    written = tick(operator, pool)
    assert next(c for c in written["conditions"] if c["type"] == "MetricsAvailable")["reason"] == "NoVllmSeries"
    assert written["arrivalRate"] is None


def test_needs_write_ignores_live_figures_and_the_numbers_in_messages():
    def status(rate, replicas, message, reason="MetricsFresh"):
        return {"desiredReplicas": replicas, "arrivalRate": rate, "history": f'{{"t":{rate}}}', "conditions": [
            {"type": "MetricsAvailable", "status": "True", "reason": reason, "message": message,
             "lastTransitionTime": f"t{rate}"}]}

    old = status(4.0, 3, "newest sample 2s old")
    assert not pool_status.needs_write(old, status(4.4, 3, "newest sample 3s old"))
    assert pool_status.needs_write(old, status(4.0, 4, "newest sample 2s old"))
    assert pool_status.needs_write(old, status(4.0, 3, "newest sample 2s old", reason="MetricsStale"))
    assert pool_status.needs_write(old, status(4.0, 3, "impossible values for waiting"))
    assert pool_status.needs_write({}, status(4.0, 3, "x"))  # a status wiped by hand is written again


# ---------------------------------------------------------------- a bounded History


def test_window_maxima_keep_the_same_highest_as_every_recommendation():
    rng = random.Random(7)
    kept, every = (), []
    for k in range(3000):
        t, r = float(k), rng.randint(0, 30)
        every.append((t, r))
        start = t - 500
        kept = policy.window_maxima(kept, start, (t, r))
        assert max(r for _, r in kept) == max(r for s, r in every if s > start or s == t)
        assert [r for _, r in kept] == sorted({r for _, r in kept}, reverse=True)  # one per count, falling


def test_the_history_stays_small_at_the_crds_longest_scale_down_window():
    """86,400 s (the CRD's maximum) at a 15 s interval is 5,760 decisions per window; two windows of a
    noisy, cycling recommendation. Before: one (time, replicas) per decision, about 130 kB in every status
    patch. decide() keeps its recommendations this way (checked on a shorter run: decide is ~3 ms a call)."""
    rng, window, kept, biggest = random.Random(3), 86400.0, (), 0
    for k in range(2 * 5760):
        t = 1.7e9 + 15.0 * k
        kept = policy.window_maxima(kept, t - window, (t, 5 + 4 * ((k // 400) % 3) + rng.randint(-3, 3)))
        biggest = max(biggest, len(json.dumps(policy.History(recommendations=kept).to_dict(), separators=(",", ":"))))
    assert biggest < 1000

    spec = policy.PoolSpec(slots_per_replica=4, max_replicas=200, scale_down_window_seconds=86400, prediction=False)
    history, current = policy.History(), 1
    for k in range(300):
        obs = policy.Observations(time=15.0 * k, current_replicas=current, ready_replicas=current,
                                  arrival_rate=20 + rng.uniform(-8, 8), service_time=1.0, metrics_age_seconds=1.0)
        decision = policy.decide(spec, obs, history)
        history, current = decision.history, decision.replicas
    counts = [r for _, r in history.recommendations]
    assert counts == sorted(set(counts), reverse=True) and len(counts) < 10  # one per count, falling


# ---------------------------------------------------------------- reads from the watch indexes


DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "llama", "namespace": "serving", "uid": "d-1", "labels": {handlers.workload.POOL_LABEL: "llama"},
                 "annotations": {handlers.workload.TEMPLATE_HASH: "abc", "deployment.kubernetes.io/revision": "3"},
                 "ownerReferences": [{"kind": "InferencePool", "name": "llama", "uid": "uid-1",
                                      "apiVersion": "autoscaling.inferencepool.dev/v1alpha1"}],
                 "managedFields": [
                     {"manager": "inferencepool", "fieldsV1": {"f:spec": {"f:template": {}}}},
                     {"manager": "inferencepool-autoscaler", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
                     {"manager": "kubectl", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
    "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "vllm", "image": "x" * 1000}]}}},
    "status": {"readyReplicas": 2, "replicas": 3},
}
POD = {"metadata": {"name": "llama-a", "namespace": "serving", "labels": {handlers.workload.POOL_LABEL: "llama"},
                    "creationTimestamp": "2025-01-01T10:00:00Z", "annotations": {"other": "y" * 500}},
       "spec": {"containers": [{"name": "vllm"}]},
       "status": {"phase": "Pending", "conditions": [
           {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "no GPU"},
           {"type": "Initialized", "status": "True"}]}}


def index_of(entry_function, *bodies) -> dict:
    """What Kopf's index holds: key -> the values the index function gave for each object."""
    index: dict = {}
    for body in bodies:
        meta = body["metadata"]
        for key, value in entry_function(namespace=meta["namespace"], labels=meta["labels"], body=kopf.Body(body)).items():
            index.setdefault(key, []).append(value)
    return index


class CountingApi:
    def __init__(self):
        self.calls = []

    def read_namespaced_deployment(self, name, namespace):
        self.calls.append(("get", name))
        from kubernetes.client.exceptions import ApiException
        raise ApiException(status=404)

    def list_namespaced_pod(self, namespace, label_selector):
        self.calls.append(("list", label_selector))
        return {"items": []}


def test_kube_reads_the_indexes_and_asks_the_api_only_for_what_they_lack():
    kube = handlers.Kube()
    api = CountingApi()
    kube.apps = kube.core = api
    kube.indexes = (index_of(handlers.deployment_entry, DEPLOYMENT), index_of(handlers.pod_entry, POD))
    deployment = kube.deployment("serving", "llama")
    assert deployment["spec"] == {"replicas": 3} and deployment["status"] == {"readyReplicas": 2}
    assert deployment["metadata"]["annotations"] == {handlers.workload.TEMPLATE_HASH: "abc"}
    assert handlers.replicas_manager(deployment) == "kubectl"  # the last owner of spec.replicas, as from the API
    assert handlers.replicas_managers(deployment) == {"inferencepool-autoscaler", "kubectl"}
    pods = kube.pods("serving", "llama")
    assert observe.unschedulable_pods(pods) == [("llama-a", "no GPU")]
    assert [c["type"] for c in pods[0]["status"]["conditions"]] == ["PodScheduled"] and "annotations" not in pods[0]["metadata"]
    assert kube.pods("serving", "other") == [] and api.calls == []  # no pods in the watch: none
    assert kube.deployment("serving", "other") is None and api.calls == [("get", "other")]  # not watched (yet): asked
    kube.indexes = None  # before the operator runs: the API as before
    kube.pods("serving", "llama")
    assert api.calls[-1] == ("list", f"{handlers.workload.POOL_LABEL}=llama")


def test_the_operator_hands_kopfs_indexes_to_kube():
    kube = handlers.Kube()
    operator = handlers.Operator(handlers.OperatorConfig(), None, kube, None, running=object())
    operator._use_indexes({handlers.DEPLOYMENT_INDEX: "d", handlers.POD_INDEX: "p", "logger": None})  # noqa: SLF001
    assert kube.indexes == ("d", "p")


def test_a_new_pools_deployment_is_made_by_the_create_handler_alone_and_its_watch_event_brings_the_decision(world):
    """With the indexes, a Deployment they lack is not made a second time beside the create handler (at
    1,000 new pools that doubled the writes); its ADDED event kicks the pool's first decision."""
    operator, kube, reader = world
    reader.pools = metrics(rate=12.0, service=1.5)
    kube.indexes = ({}, {})  # Kopf's, holding nothing of this pool yet
    kube.deployment = lambda namespace, name, ask=True: None if not ask else pytest.fail("asked the API")
    pool = Pool()
    assert tick(operator, pool) == {} and kube.applied == [] and kube.scaled == []
    kicked = []
    operator.rounds = type("R", (), {"kick": lambda self, key: kicked.append(key)})()
    body = {**DEPLOYMENT, "metadata": {**DEPLOYMENT["metadata"], "labels": {handlers.workload.POOL_LABEL: "llama"}}}
    assert operator.restore_needed(event={"type": "ADDED"}, body=kopf.Body(body)) is False
    assert kicked == [("serving", "llama")]


# ---------------------------------------------------------------- hand edits seen from the watch


def test_a_deployment_scaled_or_deleted_by_hand_is_put_back_from_its_watch_event(world, events):
    operator, kube, reader = world
    reader.pools = metrics(rate=12.0, service=1.5)
    pool = Pool()
    tick(operator, pool)
    desired = kube.scaled[-1]
    live = kube.deployments[("serving", "llama")]
    body = {**DEPLOYMENT, "metadata": {**DEPLOYMENT["metadata"], "labels": {handlers.workload.POOL_LABEL: "llama"}}}

    operator.restore(event={"type": "MODIFIED"}, body=kopf.Body({**body, "spec": {"replicas": desired}}))
    assert kube.scaled == [desired] and events == [("Normal", "ScaledUp", events[0][2])]  # ours: nothing to do
    edited = {**body, "metadata": {**body["metadata"], "generation": 4}, "spec": {"replicas": 9}}
    # the check Kopf's loop runs for every Deployment event: only a hand edit or a delete goes to a thread
    assert not operator.restore_needed({"type": "MODIFIED"}, kopf.Body({**body, "spec": {"replicas": desired}}))
    assert operator.restore_needed({"type": "MODIFIED"}, kopf.Body(edited))
    assert operator.restore_needed({"type": "DELETED"}, kopf.Body(body))
    operator.restore(event={"type": "MODIFIED"}, body=kopf.Body(edited))  # kubectl's
    assert kube.scaled == [desired, desired] and events[-1][:2] == ("Warning", "ReplicasRestored") and "set to 9" in events[-1][2]
    operator.restore(event={"type": "MODIFIED"}, body=kopf.Body(edited))  # its status moved before ours landed
    assert kube.scaled == [desired, desired] and len(events) == 2

    del kube.deployments[("serving", "llama")]
    kube.pool = lambda namespace, name: pool.raw
    operator.restore(event={"type": "DELETED"}, body=kopf.Body(body))
    assert kube.deployments[("serving", "llama")]["spec"]["replicas"] == desired  # back at the last decision
    assert events[-1][:2] == ("Warning", "DeploymentRestored") and live is not kube.deployments[("serving", "llama")]

    pool.raw["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"  # the pool is going: so is its Deployment
    del kube.deployments[("serving", "llama")]
    operator.restore(event={"type": "DELETED"}, body=kopf.Body(body))
    assert ("serving", "llama") not in kube.deployments
    operator.forget(body=kopf.Body(pool.raw))
    operator.restore(event={"type": "MODIFIED"}, body=kopf.Body({**body, "spec": {"replicas": 9}}))
    assert len(kube.scaled) == 2  # a pool it no longer decides (deleted, or another shard's): left alone


# ---------------------------------------------------------------- a Prometheus read that never blocks


class SlowClient:
    """A Prometheus that answers when told to (`release`), counting the fetches."""

    def __init__(self, results):
        self.results, self.release, self.fetches = results, threading.Event(), 0
        self.first = True

    def custom_query(self, query):
        if query.startswith("min("):  # the scrape spacing: the first query of a fetch
            self.fetches += 1
            if not self.release.wait(10):
                raise TimeoutError("hung")
        name = next((n for n, q in observe.queries(observe.QuerySettings()).items() if q == query), None)
        return self.results.get(name, [])


def canned(rate):
    m = {"namespace": "serving", "pool": "llama"}
    now = time.time()
    return {"completion_rate": [{"metric": m, "value": [now, str(rate)]}],
            "newest_sample": [{"metric": m, "value": [now, str(now - 1)]}],
            "service_mean": [{"metric": m, "value": [now, "1.5"]}]}


def test_a_slow_prometheus_is_refreshed_once_while_every_reader_goes_on_with_the_last_answer():
    client, now = SlowClient(canned(3.0)), [0.0]
    reader = observe.PrometheusReader("http://prom", ttl=5, connect=lambda url: client, clock=lambda: now[0],
                                      wait=0.0, first_wait=5.0)
    client.release.set()
    assert observe.find(reader.read(), "serving", "llama").arrival_rate == 3.0  # no answer yet: waited for the first
    assert reader.age() == 0.0
    client.release.clear()
    client.results = canned(5.0)
    now[0] = 6.0  # expired: one refresh starts, and hangs
    answers = [observe.find(reader.read(), "serving", "llama").arrival_rate for _ in range(20)]
    assert answers == [3.0] * 20 and client.fetches == 2  # nobody waited, one refresh at a time
    assert reader.age() == 6.0  # its age, from the end of the last fetch
    now[0] = 9.0
    client.release.set()
    for _ in range(100):
        if observe.find(reader.read(), "serving", "llama").arrival_rate == 5.0:
            break
        time.sleep(0.01)
    assert observe.find(reader.read(), "serving", "llama").arrival_rate == 5.0 and client.fetches == 2
    assert reader.age() == 0.0  # stamped when the answer came back (at 9), not when it was asked (at 6)


def test_a_hung_prometheus_of_one_pool_does_not_delay_the_pools_of_another():
    hung, fine = SlowClient(canned(3.0)), SlowClient(canned(4.0))
    fine.release.set()
    reader = observe.PrometheusReader("http://fine", ttl=5, connect=lambda url: hung if "hung" in url else fine,
                                      wait=0.0, first_wait=0.2)
    results = {}

    def read(url):
        try:
            results[url] = observe.find(reader.read(url), "serving", "llama").arrival_rate
        except observe.PrometheusUnavailable as error:
            results[url] = str(error)

    waiting = threading.Thread(target=read, args=("http://hung",))
    waiting.start()
    read("http://fine")  # while the hung one's first read waits
    assert results == {"http://fine": 4.0}
    waiting.join()
    assert "has not answered yet" in results["http://hung"]  # after first_wait, not the fetch's own timeouts
    read("http://hung")  # the refresh still hangs: later readers do not wait again
    assert "has not answered yet" in results["http://hung"] and hung.fetches == 1
    hung.release.set()


# ---------------------------------------------------------------- the timer and the selector


def test_every_pool_joins_the_round_and_the_selector_filters_every_pool_handler():
    parser = run.configure_parser(argparse.ArgumentParser())
    args = parser.parse_args(["--selector", "autoscaling.inferencepool.dev/shard=2,!paused", "--interval", "15"])
    def registered(labels):
        registry = kopf.OperatorRegistry()
        operator = handlers.Operator(handlers.OperatorConfig(), None, None, None, running=object())
        handlers.register(registry, operator, args.interval, labels)
        return registry

    registry = registered(args.selector)
    pools = [h for h in registry._spawning.get_all_handlers() + registry._changing.get_all_handlers()  # noqa: SLF001
             if h.selector.any_name == handlers.RESOURCE[2]]
    (member,) = [h for h in pools if h.id == "autoscale"]  # the pool's place in the round (rounds.py)
    assert type(member).__name__ == "DaemonHandler" and member.initial_delay is None  # a new pool: decided at once
    assert {h.id for h in pools} == {"autoscale", "create-workload", "resume-workload", "update-workload/spec", "forget"}
    assert all(h.labels == {"autoscaling.inferencepool.dev/shard": "2", "paused": kopf.ABSENT} for h in pools)
    indexes = {h.id: h for h in registry._indexing.get_all_handlers()}  # noqa: SLF001
    assert set(indexes) == {handlers.DEPLOYMENT_INDEX, handlers.POD_INDEX, handlers.SHARD_INDEX}
    assert indexes[handlers.SHARD_INDEX].labels == pools[0].labels  # the shard's pools, for its Prometheus scope
    everything = registered(parser.parse_args([]).selector)
    assert everything._spawning.get_all_handlers()[0].labels is None  # noqa: SLF001
    assert handlers.SHARD_INDEX not in {h.id for h in everything._indexing.get_all_handlers()}  # noqa: SLF001
    for bad in ("shard in (1,2)", "shard!=1", "=1", "a="):
        with pytest.raises(argparse.ArgumentTypeError, match="--selector"):
            run._selector(bad)  # noqa: SLF001


def test_without_watch_permissions_no_index_is_registered():
    """An older chart's RBAC (no list/watch on Deployments and pods): Kopf would wait for its indexes
    forever, so none is registered and Kube reads the API per tick, as before."""
    registry = kopf.OperatorRegistry()
    operator = handlers.Operator(handlers.OperatorConfig(), None, None, None, running=object())
    handlers.register(registry, operator, 15, watch=False)
    assert registry._indexing.get_all_handlers() == []  # noqa: SLF001
    watching = registry._watching.get_all_handlers()  # noqa: SLF001 - none on Deployments or pods
    assert [(h.id, h.selector.any_name) for h in watching] == [("left-the-selector", handlers.RESOURCE[2])]
    assert [h.id for h in registry._spawning.get_all_handlers()] == ["autoscale"]  # noqa: SLF001


def test_the_apiserver_filters_the_watches_by_the_selector_and_the_pool_label():
    """Kopf's label filters run client-side, after it has parsed and remembered every object it watches;
    these selectors go into the watch requests, so a shard never receives another shard's pools, nor the
    operator the cluster's unrelated pods (the keys resolved as Kopf resolves them for its watches)."""
    from kopf._cogs.structs.references import Resource  # noqa: PLC0415  (what Kopf's watcher looks up)

    def streams(argv):
        args = run.configure_parser(argparse.ArgumentParser()).parse_args(argv)
        settings = kopf.OperatorSettings()
        for resource, labels in run.watch_selectors(args.selector).items():
            settings.watching.label_selectors[resource] = labels
        kinds = {"pools": Resource(*handlers.RESOURCE), "budgets": Resource(*budget.RESOURCE),
                 "deployments": Resource("apps", "v1", "deployments"), "pods": Resource("", "v1", "pods"),
                 "peerings": Resource("kopf.dev", "v1", "kopfpeerings"), "events": Resource("", "v1", "events")}
        return {kind: ",".join(settings.watching.label_selectors.collect(r)) for kind, r in kinds.items()}

    shard = streams(["--selector", "autoscaling.inferencepool.dev/shard=2,!paused,team"])
    assert shard["pools"] == shard["budgets"] == "autoscaling.inferencepool.dev/shard=2,!paused,team"
    assert shard["deployments"] == shard["pods"] == workload.POOL_LABEL == "autoscaling.inferencepool.dev/pool"
    assert shard["peerings"] == shard["events"] == ""
    everything = streams([])
    assert everything["pools"] == everything["budgets"] == "" and everything["pods"] == workload.POOL_LABEL


class RecordingClient:
    """Answers every query with one series per pool it names (the scope's alternation, or `everyone`)."""

    def __init__(self, everyone):
        self.everyone, self.asked = everyone, []

    def custom_query(self, query):
        self.asked.append(query)
        names = re.findall(r'pool=~"([^"]*)"', query)
        pools = names[0].split("|") if names else self.everyone
        now = time.time()
        if query.startswith("min("):
            return []
        return [{"metric": {"namespace": "serving", "pool": p.replace("\\\\.", ".")}, "value": [now, "2.0"]}
                for p in pools]


def test_a_shards_read_asks_for_its_own_pools_and_a_pool_that_joins_is_read_at_the_next_refresh():
    """With a scope (a shard's operator), every pool-labelled query names the scope's pools, so Prometheus
    returns only their series (the count of unlabelled series is not scoped); an answer read before a pool
    joined serves without it while a refresh that covers it starts at once."""
    client, scope, now = RecordingClient(["a", "b", "c", "z"]), [("serving", "a"), ("serving", "b.1")], [0.0]
    reader = observe.PrometheusReader("http://prom", ttl=60, connect=lambda url: client, clock=lambda: now[0],
                                      wait=None, first_wait=5.0, scope=lambda: list(scope))
    pools = reader.read(pool=("serving", "a"))
    assert set(pools) == {("serving", "a"), ("serving", "b.1")} and pools.scope == frozenset(scope)
    scoped = [q for q in client.asked if "pool=~" in q]
    assert len(scoped) == len(client.asked) - 1 and len(scoped) >= 30  # all but the unlabelled count
    assert all('pool=~"a|b\\\\.1"' in q for q in scoped)  # the dot escaped for the regex
    (unlabelled,) = [q for q in client.asked if "pool=~" not in q]
    assert 'pool=""' in unlabelled
    fetches = len(client.asked)

    assert reader.read(pool=("serving", "a")) is pools and len(client.asked) == fetches  # covered: the cache
    scope.append(("serving", "c"))
    first = reader.read(pool=("serving", "c"))  # not covered: a refresh (this reader waits for it: wait=None)
    assert ("serving", "c") in first and len(client.asked) == 2 * fetches
    assert ("serving", "z") not in first  # never in the scope, never read

    everyone = observe.PrometheusReader("http://prom", connect=lambda url: RecordingClient(["a", "z"]), wait=None)
    assert set(everyone.read(pool=("serving", "a"))) == {("serving", "a"), ("serving", "z")}  # no scope: all pools
    nobody = observe.PrometheusReader("http://prom", connect=lambda url: client, wait=None, scope=lambda: [])
    asked = len(client.asked)
    assert nobody.read() == {} and len(client.asked) == asked  # no pool yet: no query
