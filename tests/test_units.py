import pytest

from inferencepool.core.units import Slo, format_duration, parse_duration, parse_percentile, parse_rate, parse_slo


@pytest.mark.parametrize(
    "text, per_second",
    [
        ("100/min", 100 / 60), ("100/m", 100 / 60), ("2/s", 2.0), ("2/sec", 2.0), ("2.5", 2.5),
        ("3600/h", 1.0), ("3600/hr", 1.0), ("7200/hour", 2.0), ("86400/day", 1.0),
        (" 100 / min ", 100 / 60), ("100 req/min", 100 / 60), ("6000 per hour", 100 / 60),
        ("1e3/s", 1000.0), ("0/s", 0.0), ("100/MIN", 100 / 60), (4, 4.0), (0.5, 0.5),
    ],
)
def test_parse_rate(text, per_second):
    assert parse_rate(text) == pytest.approx(per_second, rel=1e-15)


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("15s", 15.0), ("15", 15.0), ("500ms", 0.5), ("2m", 120.0), ("2min", 120.0), ("1.5h", 5400.0),
        ("1 hr", 3600.0), ("15 sec", 15.0), ("0s", 0.0), (" 250 ms ", 0.25), (12, 12.0),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-15)


@pytest.mark.parametrize(
    "text, p",
    [("p99", 0.99), ("P95", 0.95), ("p99.9", 0.999), ("99%", 0.99), ("99.9%", 0.999), ("0.99", 0.99),
     ("p50", 0.5), (0.9, 0.9)],
)
def test_parse_percentile(text, p):
    assert parse_percentile(text) == p


@pytest.mark.parametrize(
    "text, slo",
    [
        ("p99 wait < 10s", Slo("wait", 0.99, 10.0)),
        ("mean wait < 2s", Slo("wait", None, 2.0)),
        ("p95 ttft < 500ms", Slo("ttft", 0.95, 0.5)),
        ("P99.9 Wait <= 1.5s", Slo("wait", 0.999, 1.5)),
        ("avg wait<3", Slo("wait", None, 3.0)),
        ("99% wait < 10s", Slo("wait", 0.99, 10.0)),
    ],
)
def test_parse_slo(text, slo):
    assert parse_slo(text) == slo


def test_slo_prints_back_as_it_parses():
    for text in ("p99 wait < 10s", "mean wait < 2s", "p95 ttft < 500ms", "p99.9 wait < 1.5min"):
        assert str(parse_slo(text)) == text
        assert parse_slo(str(parse_slo(text))) == parse_slo(text)


def test_format_duration():
    assert format_duration(0.25) == "250ms"
    assert format_duration(9.66) == "9.66s"
    assert format_duration(90) == "1.5min"
    assert format_duration(float("inf")) == "inf"


@pytest.mark.parametrize(
    "parse, text, says",
    [
        (parse_rate, "fast", ["'fast'", "/min"]),
        (parse_rate, "10/fortnight", ["fortnight", "/hour"]),
        (parse_rate, "-5/min", [">= 0"]),
        (parse_rate, "1e999/s", ["finite"]),
        (parse_rate, "inf/s", ["not understood"]),
        (parse_rate, "", ["rate", "/min"]),
        (parse_rate, True, ["not a number"]),
        (parse_duration, "15 parsecs", ["parsecs", "ms"]),
        (parse_duration, "-1s", [">= 0"]),
        (parse_duration, "soon", ["'soon'", "15s"]),
        (parse_percentile, "p100", ["outside (0, 1)"]),
        (parse_percentile, "p0", ["outside (0, 1)"]),
        (parse_percentile, "99", ["outside (0, 1)", "p99"]),
        (parse_percentile, "1.5", ["outside (0, 1)"]),
        (parse_percentile, "high", ["not understood", "p99"]),
        (parse_slo, "p99 latency < 10s", ["latency", "wait", "ttft"]),
        (parse_slo, "fast please", ["not understood", "p99 wait < 10s"]),
        (parse_slo, "median wait < 1s", ["median", "mean"]),
        (parse_slo, "p99 wait < 10 fortnights", ["fortnights", "ms"]),
        (parse_slo, "p120 wait < 1s", ["outside (0, 1)"]),
        (parse_slo, "p99 wait > 1s", ["not understood"]),
    ],
)
def test_errors_say_what_was_wrong_and_what_is_allowed(parse, text, says):
    with pytest.raises(ValueError) as caught:
        parse(text)
    for fragment in says:
        assert fragment in str(caught.value)


def test_slo_validates_its_fields():
    with pytest.raises(ValueError, match="metric"):
        Slo("latency", 0.99, 1.0)
    with pytest.raises(ValueError, match="percentile"):
        Slo("wait", 1.0, 1.0)
    with pytest.raises(ValueError, match="target"):
        Slo("wait", 0.99, -1.0)
