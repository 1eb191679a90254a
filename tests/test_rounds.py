"""rounds.Rounds (issue 14): every member pool decided at once on joining and once per interval after,
its status patch written in order by other threads, a write that failed written again, one hung pool
holding nobody else."""

from __future__ import annotations

import threading

import kopf

from inferencepool.operator import rounds

WAIT = 10.0  # generous bound on waiting for a round that comes every 0.02 s; no timing is asserted


class FakeOperator:
    def __init__(self):
        self.decided: dict[str, int] = {}
        self.written: list[tuple[str, dict]] = []
        self.unwritten: list[tuple[str, str]] = []
        self.hang = threading.Event()  # the pool "hung" blocks on this
        self.fail_writes = False
        self.fail_decisions = None  # an exception the pool "broken" raises
        self.more = threading.Condition()
        self.kube = self

    def autoscale(self, body, status, patch, **kwargs):
        name = body.metadata.name
        if name == "hung":
            self.hang.wait()
        if name == "broken" and self.fail_decisions is not None:
            with self.more:
                self.decided[name] = self.decided.get(name, 0) + 1
                self.more.notify_all()
            raise self.fail_decisions
        with self.more:
            self.decided[name] = self.decided.get(name, 0) + 1
            self.more.notify_all()
        patch.status["desiredReplicas"] = self.decided[name]
        assert kwargs == {"pool_pods": "the index"}  # only the indexes are passed on

    def patch_status(self, namespace, name, status):
        if self.fail_writes:
            raise RuntimeError("apiserver away")
        with self.more:
            self.written.append((name, status))
            self.more.notify_all()

    def status_not_written(self, key):
        with self.more:
            self.unwritten.append(key)
            self.more.notify_all()

    def until(self, condition):
        with self.more:
            assert self.more.wait_for(condition, WAIT), (self.decided, self.written, self.unwritten)

    def wait_for(self, name, count):
        with self.more:
            assert self.more.wait_for(lambda: self.decided.get(name, 0) >= count, WAIT), self.decided


def body(name):
    return kopf.Body({"metadata": {"name": name, "namespace": "ns"}, "status": {}})


def test_a_member_is_decided_at_once_then_every_round_and_its_status_written():
    operator = FakeOperator()
    r = rounds.Rounds(operator, 0.02, indexes=("pool_pods",))
    try:
        r.join(("ns", "a"), body("a"), {"pool_pods": "the index", "logger": None})
        operator.wait_for("a", 3)
        operator.until(lambda: ("a", {"desiredReplicas": 3}) in operator.written or operator.decided["a"] > 3)
        counts = [status["desiredReplicas"] for name, status in operator.written]
        assert counts == sorted(counts) and counts[0] == 1  # in order; one still queued takes the newer fields
        operator.fail_writes = True
        operator.until(lambda: ("ns", "a") in operator.unwritten)  # the next decision writes whatever changed
        r.leave(("ns", "a"))
        operator.fail_writes = False
        operator.written.clear()
        r.join(("ns", "b"), body("b"), {"pool_pods": "the index"})
        operator.wait_for("b", 3)
        gone = operator.decided["a"]
        operator.wait_for("b", operator.decided["b"] + 2)
        assert operator.decided["a"] <= gone + 1  # at most the one in flight when it left
        assert {name for name, _ in operator.written} == {"a", "b"} or {name for name, _ in operator.written} == {"b"}
    finally:
        r.stop()


def test_a_hung_pool_is_not_queued_again_and_holds_no_other_pool():
    operator = FakeOperator()
    r = rounds.Rounds(operator, 0.02, indexes=("pool_pods",), workers=2)
    try:
        r.join(("ns", "hung"), body("hung"), {"pool_pods": "the index"})
        r.join(("ns", "fine"), body("fine"), {"pool_pods": "the index"})
        operator.wait_for("fine", 20)  # 20 rounds with one worker of two held by the hung pool
        assert "hung" not in operator.decided  # its one decision still runs: never submitted twice
        operator.hang.set()
        operator.wait_for("hung", 2)
    finally:
        operator.hang.set()
        r.stop()


def test_a_pool_that_joins_is_decided_without_waiting_for_the_next_round():
    operator = FakeOperator()
    r = rounds.Rounds(operator, 3600.0, indexes=("pool_pods",))  # the first round is an hour away
    try:
        r.join(("ns", "new"), body("new"), {"pool_pods": "the index"})
        operator.wait_for("new", 1)
        operator.until(lambda: operator.written)
        assert operator.written == [("new", {"desiredReplicas": 1})]
    finally:
        r.stop()


def test_a_slow_status_write_delays_no_decision_and_sends_the_newest_fields():
    operator = FakeOperator()
    release = threading.Event()
    write = operator.patch_status
    operator.patch_status = lambda namespace, name, status: (release.wait(), write(namespace, name, status))
    r = rounds.Rounds(operator, 0.02, indexes=("pool_pods",))
    try:
        r.join(("ns", "a"), body("a"), {"pool_pods": "the index"})
        operator.wait_for("a", 6)  # decided on while its first write hangs
        assert operator.written == []
        release.set()
        operator.until(lambda: len(operator.written) >= 2)
        first, second = operator.written[:2]
        assert first == ("a", {"desiredReplicas": 1}) and second[1]["desiredReplicas"] >= 5  # the queued ones merged
    finally:
        release.set()
        r.stop()


def test_a_failing_decision_posts_one_warning_event_per_message_and_the_pool_stays_in_the_round():
    operator = FakeOperator()
    operator.fail_decisions = ValueError("bad query")
    events = []
    r = rounds.Rounds(operator, 0.02, indexes=("pool_pods",), warn=lambda body, **kw: events.append((body, kw)),
                      quiet=3600.0)
    try:
        pool = body("broken")
        r.join(("ns", "broken"), pool, {"pool_pods": "the index"})
        operator.wait_for("broken", 5)  # failed five times, decided again each round
        assert events == [(pool, {"reason": "HandlerFailed", "message": "decision failed: ValueError('bad query')"})]
        operator.fail_decisions = KeyError("status")  # a new failure is a new Event
        operator.wait_for("broken", operator.decided["broken"] + 2)
        assert [kw["message"] for _, kw in events][1:] == ["decision failed: KeyError('status')"]
        operator.fail_decisions = None  # mended: decided and written again
        operator.until(lambda: any(name == "broken" for name, _ in operator.written))
    finally:
        r.stop()


class _FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, option, value):
        self.calls.append((option, value))
        return 1


def test_the_allocator_gets_two_arenas_and_a_fixed_mmap_threshold_unless_the_environment_sets_them(monkeypatch):
    libc = _FakeLibc()
    monkeypatch.setattr(rounds, "_libc", libc)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert rounds.tune_allocator() is True
    assert libc.calls == [(rounds.M_ARENA_MAX, 2), (rounds.M_MMAP_THRESHOLD, 128 * 1024)]
    assert (rounds.M_ARENA_MAX, rounds.M_MMAP_THRESHOLD) == (-8, -3)  # glibc's malloc.h
    libc.calls.clear()
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert rounds.tune_allocator() is True
    assert libc.calls == [(rounds.M_MMAP_THRESHOLD, 128 * 1024)]  # the environment wins
    monkeypatch.setattr(rounds, "_libc", None)
    assert rounds.tune_allocator() is False


def test_a_pool_that_leaves_the_selector_leaves_the_round_and_an_older_daemon_never_evicts_a_newer():
    """A pool relabelled out of a server-side selector gets no deletion Kopf would stop its daemon for
    (handlers.left_the_selector evicts it); a daemon ending late must not take out the one that joined after."""
    import asyncio

    class Flag:  # Kopf's DaemonStoppingFlag, as far as member() uses it
        def __init__(self):
            self.event = asyncio.Event()

        async def wait(self):
            await self.event.wait()

    async def scenario():
        operator = FakeOperator()
        r = rounds.Rounds(operator, interval=0.02)
        key = ("ns", "moved")
        old = asyncio.ensure_future(r.member(body("moved"), Flag(), pool_pods="the index"))
        await asyncio.sleep(0.05)
        assert key in r._members  # noqa: SLF001
        assert r.evict(key) is True
        await asyncio.wait_for(old, WAIT)
        assert key not in r._members and r.evict(key) is False  # noqa: SLF001

        first, second = Flag(), Flag()
        older = asyncio.ensure_future(r.member(body("moved"), first, pool_pods="the index"))
        await asyncio.sleep(0.05)
        newer = asyncio.ensure_future(r.member(body("moved"), second, pool_pods="the index"))  # back, a new daemon
        await asyncio.sleep(0.05)
        first.event.set()
        await asyncio.wait_for(older, WAIT)
        assert key in r._members  # noqa: SLF001 - the newer daemon's membership stands
        assert r.evict(key) is True  # and eviction reaches the newer daemon
        await asyncio.wait_for(newer, WAIT)
        assert key not in r._members  # noqa: SLF001
        r.stop()

    asyncio.run(scenario())
