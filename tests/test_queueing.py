"""Erlang B/C against an independent high-precision computation, textbook and seed
figures, Allen-Cunneen scaling, and the inverse (servers-for-target) solves."""

import math
import random

import mpmath
import pytest

from inferencepool.core import queueing
from inferencepool.core.queueing import (
    Queue,
    TargetUnreachable,
    UnstableQueue,
    erlang_b,
    erlang_c,
    offered_load,
    peakedness,
    utilization,
    variability_factor,
)

mpmath.mp.dps = 50


def _mp_erlang_sums(c: int, a: float):
    """(a^c/c!, sum_{k<c} a^k/k!) by the definitional sum in 50-digit arithmetic.

    Terms are built by a running product so c up to 1e5 stays well under a second;
    the partial sums are exact to 50 digits, independent of the code under test.
    """
    a = mpmath.mpf(a)
    term, below = mpmath.mpf(1), mpmath.mpf(0)
    for k in range(c):
        below += term
        term = term * a / (k + 1)
    return term, below


def mp_erlang_b(c: int, a: float):
    top, below = _mp_erlang_sums(c, a)
    return top / (below + top)


def mp_erlang_c(c: int, a: float):
    top, below = _mp_erlang_sums(c, a)
    waiting = top * c / (c - mpmath.mpf(a))
    return waiting / (below + waiting)


def _close(value: float, reference, rel: float) -> bool:
    return abs(mpmath.mpf(value) - reference) <= rel * abs(reference)


GRID = [
    (1, 0.5), (2, 1.0), (3, 2.9), (5, 1.0), (10, 5.0), (10, 9.0), (10, 9.99), (25, 20.0),
    (30, 25.0), (49, 40.0), (50, 45.0), (51, 45.0), (51, 60.0), (60, 30.0), (100, 80.0),
    (100, 99.0), (100, 100.5), (250, 240.5), (1000, 950.0), (1000, 999.9), (1000, 1000.0),
    (1000, 1100.0), (1000, 900.0), (5000, 4900.0), (20000, 19800.0),
]
BIG = [(100_000, 99_000.0), (100_000, 99_700.0), (100_000, 100_000.0), (100_000, 100_400.0)]


@pytest.mark.parametrize("c,a", GRID + BIG)
def test_erlang_b_matches_high_precision_sum(c, a):
    reference = mp_erlang_b(c, a)
    assert _close(erlang_b(c, a), reference, 1e-12), (erlang_b(c, a), reference)


@pytest.mark.parametrize("c,a", [(c, a) for c, a in GRID + BIG if a < c])
def test_erlang_c_matches_high_precision_sum(c, a):
    reference = mp_erlang_c(c, a)
    assert _close(erlang_c(c, a), reference, 1e-11), (erlang_c(c, a), reference)


def test_erlang_b_over_random_grid_matches_mpmath_gammainc():
    """Random c up to 1e5, a within +-30% of c: B = Poisson pmf / cdf via mpmath gammainc."""
    rng = random.Random(7)
    for _ in range(40):
        c = int(10 ** rng.uniform(0, 5))
        a = c * rng.uniform(0.7, 1.3)
        mp_a = mpmath.mpf(a)
        pmf = mpmath.exp(c * mpmath.log(mp_a) - mp_a - mpmath.loggamma(c + 1))
        reference = pmf / mpmath.gammainc(c + 1, mp_a, mpmath.inf, regularized=True)
        if reference < mpmath.mpf("1e-300"):
            assert erlang_b(c, a) < 1e-290
        else:
            assert _close(erlang_b(c, a), reference, 1e-11), (c, a)


def test_tiny_blocking_underflows_to_zero_not_nan():
    assert erlang_b(100_000, 1000.0) == 0.0
    assert erlang_c(100_000, 1000.0) == 0.0
    assert 0.0 <= erlang_b(300, 10.0) < 1e-150


def test_textbook_values():
    assert erlang_b(10, 5) == pytest.approx(0.018385, abs=5e-7)
    assert erlang_b(1, 1.0) == pytest.approx(0.5)
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3, rel=1e-15)
    assert erlang_c(1, 0.7) == pytest.approx(0.7, rel=1e-15)  # M/M/1: P(wait) = rho
    for a in (0.3, 1.0, 1.7):
        assert erlang_c(2, a) == pytest.approx(a * a / (2 + a), rel=1e-14)  # M/M/2 closed form


def test_mm1_and_mm2_mean_waits():
    lam, mu = 0.7, 1.0
    assert Queue(lam, 1 / mu).mean_wait(1) == pytest.approx(lam / mu / (mu - lam), rel=1e-14)
    lam = 1.5  # M/M/2: Wq = C(2,a) / (2 mu - lambda)
    a = lam / mu
    assert Queue(lam, 1 / mu).mean_wait(2) == pytest.approx(a * a / (2 + a) / (2 * mu - lam), rel=1e-14)


def test_seed_figures_from_erlang_c_for_llm_serving():
    assert offered_load(100 / 60, 15) == pytest.approx(25.0)
    # c = 10 at rho = 0.9 (a = 9 Erlangs, S = 15 s): mean wait 10.03 s
    assert round(Queue(0.6, 15).mean_wait(10), 2) == 10.03
    seed = Queue(100 / 60, 15)
    # rho <= 0.8 at 25 Erlangs: 25 / 0.8 = 31.25, so 32 servers (the essay rounds to 31)
    assert seed.servers_for_utilization(0.8) == 32
    # P(wait <= 10 s) >= 99% at 25 Erlangs, S = 15 s
    assert seed.servers_for_wait_quantile(10, 0.99) == 30
    assert seed.prob_wait_exceeds(30, 10) <= 0.01 < seed.prob_wait_exceeds(29, 10)


def test_helpers():
    assert utilization(10, 9) == 0.9
    assert utilization(0, 0) == 0.0
    assert utilization(0, 1) == math.inf
    assert variability_factor() == 1.0
    assert variability_factor(0, 1) == 0.5
    assert variability_factor(2, 0) == 2.0
    q = Queue(2, 3, 0.5, 1.5)
    assert q.load == 6 and q.variability == pytest.approx(1.25)


def test_mm_c_tail_is_exponential_in_drain_rate():
    q = Queue(9, 1)
    c, t = 12, 0.4
    assert q.prob_wait_exceeds(c, t) == pytest.approx(erlang_c(c, 9) * math.exp(-(c - 9) * t), rel=1e-14)
    assert q.prob_wait_exceeds(c, 0) == erlang_c(c, 9)


# ---------------------------------------------------------------- Allen-Cunneen


def test_allen_cunneen_with_unit_cvs_is_exactly_mmc():
    mmc, gg = Queue(3.3, 2.0), Queue(3.3, 2.0, 1.0, 1.0)
    for c in (7, 8, 12):
        assert gg.mean_wait(c) == mmc.mean_wait(c) == erlang_c(c, 6.6) * 2.0 / (c - 6.6)
        assert gg.prob_wait_exceeds(c, 1.5) == mmc.prob_wait_exceeds(c, 1.5)


def test_allen_cunneen_scales_waits_by_v():
    ac = dict(approximation="allen-cunneen")
    base, bursty = Queue(3.3, 2.0, **ac), Queue(3.3, 2.0, arrival_cv=2.0, service_cv=1.0, **ac)  # v = 2.5
    for c in (7, 9, 15):
        assert bursty.mean_wait(c) == pytest.approx(2.5 * base.mean_wait(c), rel=1e-14)
        assert bursty.wait_quantile(c, 0.99) == pytest.approx(2.5 * base.wait_quantile(c, 0.99), rel=1e-14)
        assert bursty.prob_wait_exceeds(c, 2.5 * 0.8) == pytest.approx(base.prob_wait_exceeds(c, 0.8), rel=1e-14)


def test_md1_mean_wait_is_pollaczek_khinchine():
    for rho in (0.1, 0.5, 0.9, 0.99):
        service = 4.0
        q = Queue(rho / service, service, arrival_cv=1.0, service_cv=0.0)
        assert q.mean_wait(1) == pytest.approx(rho * service / (2 * (1 - rho)), rel=1e-13)


def test_deterministic_queue_never_waits_past_zero():
    q = Queue(0.9, 1.0, 0.0, 0.0)
    assert q.mean_wait(1) == 0.0
    assert q.prob_wait_exceeds(1, 0.1) == 0.0
    assert q.wait_quantile(1, 0.99) == 0.0


# ---------------------------------------------------------------- tail and quantile


def test_quantile_inverts_tail():
    q = Queue(40, 0.5, 1.3, 0.8)
    for c in (21, 23, 30):
        for p in (0.5, 0.9, 0.99, 0.999):
            t = q.wait_quantile(c, p)
            if erlang_c(c, q.load) <= 1 - p:
                assert t == 0.0
            else:
                assert q.prob_wait_exceeds(c, t) == pytest.approx(1 - p, rel=1e-12)


# ---------------------------------------------------------------- unstable


@pytest.mark.parametrize("c,a", [(10, 10.0), (10, 12.5), (1, 5.0), (0, 3.0), (1000, 1000.0)])
def test_unstable_queue_is_reported_not_nan(c, a):
    assert erlang_c(c, a) == 1.0
    assert 0.0 <= erlang_b(c, a) <= 1.0
    q = Queue(a, 1.0)
    assert q.mean_wait(c) == math.inf
    assert q.prob_wait_exceeds(c, 5.0) == 1.0
    assert q.wait_quantile(c, 0.99) == math.inf
    assert not q.is_stable(c)


def test_zero_load():
    q = Queue(0.0, 15)
    assert erlang_c(0, 0.0) == 0.0 and erlang_b(5, 0.0) == 0.0
    assert q.mean_wait(0) == 0.0 and q.prob_wait_exceeds(3, 1) == 0.0 and q.wait_quantile(1, 0.99) == 0.0
    assert q.servers_for_mean_wait(1) == 0
    assert q.servers_for_wait_quantile(1, 0.99) == 0
    assert q.servers_for_utilization(0.8) == 0


# ---------------------------------------------------------------- inverse solves


def _random_queues(seed: int, count: int):
    rng = random.Random(seed)
    for _ in range(count):
        load = 10 ** rng.uniform(-1, 4.5)
        service = 10 ** rng.uniform(-1, 1.5)
        yield Queue(load / service, service, rng.choice([1.0, 0.5, 2.0]), rng.choice([1.0, 0.0, 1.5])), rng


def test_mean_wait_solve_is_the_smallest_count_meeting_target():
    for q, rng in _random_queues(1, 150):
        target = q.service_time * 10 ** rng.uniform(-4, 1)
        c = q.servers_for_mean_wait(target)
        assert c > q.load
        assert q.mean_wait(c) <= target
        assert c - 1 <= q.load or q.mean_wait(c - 1) > target


def test_wait_quantile_solve_is_the_smallest_count_meeting_target():
    for q, rng in _random_queues(2, 150):
        target = q.service_time * 10 ** rng.uniform(-3, 1)
        p = rng.choice([0.5, 0.9, 0.95, 0.99, 0.999])
        c = q.servers_for_wait_quantile(target, p)
        assert c > q.load
        assert q.prob_wait_exceeds(c, target) <= 1 - p
        assert c - 1 <= q.load or q.prob_wait_exceeds(c - 1, target) > 1 - p


def test_utilization_solve_is_the_smallest_stable_count_under_cap():
    for q, rng in _random_queues(3, 150):
        u = rng.choice([0.3, 0.5, 0.8, 0.95, 1.0])
        c = q.servers_for_utilization(u)
        assert c > q.load and q.load / c <= u
        assert c - 1 <= q.load or q.load / (c - 1) > u
    assert Queue(10, 1).servers_for_utilization(1.0) == 11  # stable, so strictly more than the load


def test_solves_are_monotone():
    targets = [0.01, 0.1, 1, 5, 10, 60]
    counts = [Queue(5, 15).servers_for_wait_quantile(t, 0.99) for t in targets]
    assert counts == sorted(counts, reverse=True)
    rates = [0.1, 1, 5, 20, 100, 1000]
    for solve in (
        lambda q: q.servers_for_mean_wait(2.0),
        lambda q: q.servers_for_wait_quantile(10, 0.99),
        lambda q: q.servers_for_utilization(0.8),
    ):
        counts = [solve(Queue(r, 15)) for r in rates]
        assert counts == sorted(counts)
    ps = [0.5, 0.9, 0.99, 0.999, 0.9999]
    counts = [Queue(5, 15).servers_for_wait_quantile(2, p) for p in ps]
    assert counts == sorted(counts)


def test_large_solves_use_few_evaluations(monkeypatch):
    calls = []
    real = queueing.erlang_c
    monkeypatch.setattr(queueing, "erlang_c", lambda c, a: calls.append(c) or real(c, a))
    q = Queue(99_000 / 15, 15)
    c = q.servers_for_wait_quantile(10, 0.99)
    assert 99_000 < c < 100_000
    assert len(calls) < 60  # bracket + bisection, never a scan
    calls.clear()
    assert q.servers_for_mean_wait(0.01) > 99_000 and len(calls) < 60


def test_unreachable_target_raises_with_reason():
    q = Queue(100 / 60, 15)
    assert q.servers_for_wait_quantile(10, 0.99, max_servers=30) == 30
    with pytest.raises(TargetUnreachable) as caught:
        q.servers_for_wait_quantile(10, 0.99, max_servers=29)
    assert caught.value.servers_needed == 30 and caught.value.max_servers == 29
    assert "30" in str(caught.value) and "29" in str(caught.value)
    assert isinstance(caught.value, UnstableQueue) and isinstance(caught.value, ValueError)
    with pytest.raises(TargetUnreachable):  # 20 servers cannot even carry 25 Erlangs
        q.servers_for_mean_wait(1.0, max_servers=20)
    with pytest.raises(TargetUnreachable):
        q.servers_for_utilization(0.8, max_servers=31)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: Queue(-1, 1), "arrival_rate"),
        (lambda: Queue(1, -1), "service_time"),
        (lambda: Queue(1, 1, arrival_cv=-0.1), "arrival_cv"),
        (lambda: Queue(1, float("nan")), "service_time"),
        (lambda: offered_load(-1, 1), "arrival_rate"),
        (lambda: erlang_b(-1, 1), "servers"),
        (lambda: erlang_b(2.5, 1), "servers"),
        (lambda: erlang_c(3, -1), "load"),
        (lambda: Queue(1, 1).wait_quantile(3, 1.0), "p"),
        (lambda: Queue(1, 1).servers_for_wait_quantile(1, 0.0), "p"),
        (lambda: Queue(1, 1).servers_for_wait_quantile(-1, 0.9), "target"),
        (lambda: Queue(1, 1).servers_for_mean_wait(0), "target"),
        (lambda: Queue(1, 1).servers_for_utilization(1.5), "max_utilization"),
        (lambda: Queue(1, 1).prob_wait_exceeds(3, -1), "t"),
    ],
)
def test_bad_inputs_name_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


# ---------------------------------------------------------------- the corrected model's parts


@pytest.mark.parametrize("x,a", [(0.4, 0.1), (0.8, 0.5), (2.5, 1.0), (6.4, 4.48), (17.3, 15.0), (120.6, 110.0), (640.5, 600.0), (5000.25, 4990.0)])
def test_erlang_b_for_real_server_counts_matches_the_incomplete_gamma(x, a):
    """B(x, a) = a^x e^-a / Gamma(x + 1, a), the analytic extension Hayward's scaling needs."""
    reference = mpmath.power(a, x) * mpmath.exp(-a) / mpmath.gammainc(x + 1, a)
    assert _close(queueing._erlang_b_real(x, a), reference, 3e-3)
    assert queueing._erlang_b_real(float(int(x)), a) == erlang_b(int(x), a)


def test_erlang_c_for_real_server_counts_is_monotone_and_unstable_at_load():
    values = [queueing._erlang_c_real(x, 4.48) for x in (4.6, 5.0, 5.5, 6.4, 7.0, 9.9)]
    assert values == sorted(values, reverse=True)
    assert queueing._erlang_c_real(4.0, 4.48) == 1.0 and queueing._erlang_c_real(3.0, 0.0) == 0.0


def test_peakedness():
    assert peakedness(1.0, 1.0) == 1.0  # Poisson
    assert peakedness(4.0, 1.0) == pytest.approx(2.5)  # (I + 1) / 2 for exponential service
    assert peakedness(4.0, 0.0) == pytest.approx(4.0)  # I for deterministic service
    assert peakedness(0.25, 1.0) == 1.0  # smoother than Poisson is never credited
    assert peakedness(4.0, 2.5) == pytest.approx(1 + 3 / 7.25)


def test_batches_set_the_dispersion():
    q = Queue(2.0, 1.0, arrival_cv=1.0, batch_size=3.0, batch_cv=0.5)
    assert q.dispersion == pytest.approx(3.0 * 1.25) and q.variability == pytest.approx((3.75 + 1) / 2)
    assert Queue(2.0, 1.0, arrival_cv=1.5).dispersion == pytest.approx(2.25)
    # more dispersion: more waiting, at every count
    calm, bursty = Queue(8.0, 1.0), Queue(8.0, 1.0, batch_size=4.0)
    for c in (9, 12, 20):
        assert bursty.prob_wait(c) > calm.prob_wait(c) and bursty.wait_quantile(c, 0.99) > calm.wait_quantile(c, 0.99)


def test_heavy_tailed_service_widens_only_small_fleets():
    new, old = Queue(0.7, 1.0, service_cv=2.5), Queue(0.7, 1.0, service_cv=2.5, approximation="allen-cunneen")
    assert new.wait_quantile(1, 0.99) > 1.5 * old.wait_quantile(1, 0.99)
    big_new, big_old = Queue(54.4, 1.0, service_cv=2.5), Queue(54.4, 1.0, service_cv=2.5, approximation="allen-cunneen")
    assert big_new.wait_quantile(64, 0.99) == pytest.approx(big_old.wait_quantile(64, 0.99), rel=1e-3)  # diluted by 1/c^2
    for c in (1, 2, 4, 16):  # never below Allen-Cunneen with Poisson arrivals
        q, ac = Queue(0.7 * c, 1.0, service_cv=1.6), Queue(0.7 * c, 1.0, service_cv=1.6, approximation="allen-cunneen")
        assert q.wait_quantile(c, 0.99) >= ac.wait_quantile(c, 0.99) and q.mean_wait(c) == ac.mean_wait(c)


def test_corrected_quantile_inverts_its_tail_and_tail_falls_with_servers():
    for q in (Queue(0.6, 1.0, service_cv=2.5), Queue(5.0, 1.0, arrival_cv=2.0, service_cv=1.6), Queue(30.0, 2.0, batch_size=3.0)):
        for c in range(q.min_stable_servers, q.min_stable_servers + 30):
            for p in (0.9, 0.99, 0.999):
                t = q.wait_quantile(c, p)
                if t > 0:
                    assert q.prob_wait_exceeds(c, t) == pytest.approx(1 - p, rel=1e-9)
            assert q.prob_wait_exceeds(c + 1, 1.0) <= q.prob_wait_exceeds(c, 1.0)


def test_bad_queue_options_name_the_field():
    with pytest.raises(ValueError, match="batch_size"):
        Queue(1, 1, batch_size=0.5)
    with pytest.raises(ValueError, match="batch_cv"):
        Queue(1, 1, batch_cv=-1)
    with pytest.raises(ValueError, match="approximation"):
        Queue(1, 1, approximation="whitt")


def test_corrected_model_never_reports_less_waiting_than_allen_cunneen():
    rng = random.Random(11)
    for _ in range(300):
        c = rng.choice([1, 2, 3, 4, 8, 16, 64, 300])
        a = c * rng.uniform(0.05, 0.99)
        kw = dict(arrival_cv=rng.choice([0.5, 1.0, 1.5, 2.0, 4.0]), service_cv=rng.choice([0.0, 0.5, 1.0, 1.6, 2.5, 4.0]))
        new, old = Queue(a, 2.0, **kw), Queue(a, 2.0, approximation="allen-cunneen", **kw)
        assert new.prob_wait(c) >= old.prob_wait(c) * (1 - 1e-9)
        assert new.mean_wait(c) >= old.mean_wait(c) * (1 - 1e-9)
        for p in (0.9, 0.99):
            assert new.wait_quantile(c, p) >= old.wait_quantile(c, p) * (1 - 1e-9), (c, a, kw, p)
