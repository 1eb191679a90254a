"""Scheduled warm floors: core/schedule.py, its use in decide(), and the spec's errors."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from inferencepool.core import schedule
from inferencepool.core.policy import Observations, PoolSpec, decide
from inferencepool.operator.spec import SpecError, parse
from test_handlers import SPEC, Pool, events, metrics, world  # noqa: F401 - fixtures
from test_spec import MINIMAL

PARIS = ZoneInfo("Europe/Paris")
BUSINESS = {"timeZone": "Europe/Paris", "windows": [
    {"name": "business-hours", "days": ["Mon", "Tue", "Wed", "Thu", "Fri"], "start": "08:00", "end": "18:00", "minReplicas": 4},
    {"name": "batch", "days": ["Sat"], "start": "00:00", "end": "24:00", "minReplicas": 2},
]}


def at(text: str, zone=PARIS) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


@pytest.mark.parametrize("local, expected", [
    ("2026-12-01T07:59", (1, None)),  # Tuesday, before the window
    ("2026-12-01T08:00", (4, "business-hours")),  # start is inclusive
    ("2026-12-01T17:59", (4, "business-hours")),
    ("2026-12-01T18:00", (1, None)),  # end is exclusive
    ("2026-12-05T23:59", (2, "batch")),  # Saturday, to 24:00
    ("2026-12-06T10:00", (1, None)),  # Sunday
])
def test_the_floor_is_the_active_windows_in_local_time(local, expected):
    s = schedule.parse(BUSINESS, max_replicas=8)
    replicas, window = schedule.floor(1, s, at(local))
    assert (replicas, window.name if window else None) == expected


def test_windows_follow_the_wall_clock_across_daylight_saving():
    s = schedule.parse(BUSINESS, max_replicas=8)
    # 08:00 in Paris is 07:00 UTC in winter and 06:00 UTC in summer
    assert schedule.floor(1, s, at("2026-12-01T07:00", ZoneInfo("UTC")))[0] == 4
    assert schedule.floor(1, s, at("2026-07-01T06:00", ZoneInfo("UTC")))[0] == 4
    assert schedule.floor(1, s, at("2026-07-01T05:59", ZoneInfo("UTC")))[0] == 1
    assert schedule.floor(1, None, at("2026-12-01T10:00")) == (1, None)
    assert schedule.floor(1, s, float("nan")) == (1, None)  # an unusable clock: the spec's floor


def test_decide_uses_the_scheduled_floor_and_says_which_window():
    spec = PoolSpec(min_replicas=1, max_replicas=8, slots_per_replica=4, prediction=False,
                    scale_down_window_seconds=0, scale_down_max_step=8, schedule=schedule.parse(BUSINESS, 8))
    quiet = Observations(time=at("2026-12-01T10:00"), current_replicas=1, arrival_rate=0.1, service_time=1.0)
    d = decide(spec, quiet)
    assert (d.replicas, d.constraint, d.floor, d.floor_window) == (4, "warm_floor", 4, "business-hours")
    assert d.reason.startswith("scale up 1 -> 4: the SLO needs 1, the warm floor is 4 (schedule window business-hours)")
    # without metrics the pool may still rise to the scheduled floor, never below what it has
    missing = Observations(time=quiet.time, current_replicas=2)
    d = decide(spec, missing)
    assert (d.replicas, d.constraint, d.floor) == (4, "metrics_missing", 4)
    # after the window the floor falls back to minReplicas and the pool may scale down
    evening = Observations(time=at("2026-12-01T19:00"), current_replicas=4, arrival_rate=0.1, service_time=1.0)
    d = decide(spec, evening)
    assert (d.replicas, d.floor, d.floor_window) == (1, 1, None)


@pytest.mark.parametrize("change, field, words", [
    ({"timeZone": "Mars/Olympus"}, "spec.schedule.timeZone", "is not an IANA time zone"),
    ({"timeZone": None}, "spec.schedule.timeZone", "is required"),
    ({"windows": [{"start": "22:00", "end": "06:00", "minReplicas": 2}]}, "spec.schedule.windows[0].end",
     "split one that crosses midnight in two"),
    ({"windows": [{"start": "9:00", "end": "17:00", "minReplicas": 2}]}, "spec.schedule.windows[0].start", "HH:MM"),
    ({"windows": [{"days": ["Monday"], "start": "09:00", "end": "17:00", "minReplicas": 2}]},
     "spec.schedule.windows[0].days", "must list days from Mon"),
    ({"windows": [{"start": "09:00", "end": "17:00", "minReplicas": 9}]}, "spec.schedule.windows[0].minReplicas",
     "between 0 and maxReplicas (8)"),
    ({"windows": [{"days": ["Mon"], "start": "09:00", "end": "17:00", "minReplicas": 2},
                  {"start": "16:00", "end": "18:00", "minReplicas": 3}]},
     "spec.schedule.windows[1]", "overlaps windows[0] on Mon 16:00-17:00 with a different minReplicas (3 vs 2)"),
    ({"windows": [{"start": "00:00", "end": "06:00", "minReplicas": 0}]}, "spec.schedule.windows[0].minReplicas",
     "0 needs spec.metrics.arrivalRateQuery"),
    ({"windows": []}, "spec.schedule.windows", "1 to 16 windows"),
])
def test_bad_schedules_name_the_field_and_the_fix(change, field, words):
    bad = {**BUSINESS, **change}
    with pytest.raises(SpecError) as error:
        parse({**MINIMAL, "maxReplicas": 8, "schedule": bad})
    assert str(error.value).startswith(f"{field}: ") and words in str(error.value)


def test_windows_that_meet_or_agree_may_touch():
    s = schedule.parse({"timeZone": "UTC", "windows": [
        {"start": "09:00", "end": "17:00", "minReplicas": 2}, {"start": "17:00", "end": "24:00", "minReplicas": 3},
        {"days": ["Mon"], "start": "10:00", "end": "11:00", "minReplicas": 2}]}, max_replicas=8)
    assert [w.min_replicas for w in s.windows] == [2, 3, 2]
    config = parse({**MINIMAL, "maxReplicas": 8, "schedule": BUSINESS})
    assert config.policy.schedule.time_zone == "Europe/Paris" and config.policy.schedule.windows[1].days == (5,)
    with pytest.raises(SpecError, match=r"spec.schedule.windows\[0\].minReplicas: x gpu.perReplica \(8\) must fit maxGPUs"):
        parse({**MINIMAL, "maxReplicas": 8, "maxGPUs": 4, "gpu": {"perReplica": 2}, "schedule": BUSINESS})


def test_status_shows_the_floor_and_the_window_that_set_it(world, events):
    operator, kube, reader = world
    reader.pools = metrics(rate=0.5, service=1.0)
    always = {"timeZone": "UTC", "windows": [{"name": "all-day", "start": "00:00", "end": "24:00", "minReplicas": 3}]}
    status = Pool({**SPEC, "schedule": always}).tick(operator)
    assert kube.scaled == [3] and (status["floorReplicas"], status["scheduleWindow"]) == (3, "all-day")
    assert status["constraint"] == "warm_floor" and "(schedule window all-day)" in status["reason"]
    status = Pool(SPEC).tick(operator)
    assert (status["floorReplicas"], status.get("scheduleWindow")) == (1, None)


def test_the_simulator_replays_a_trace_under_the_same_floors(tmp_path, capsys):
    import json

    from inferencepool.simulate import cli

    path = tmp_path / "schedule.yaml"
    path.write_text('timeZone: Europe/Paris\nwindows:\n  - {name: rush, days: [Mon], start: "08:00", end: "08:30", minReplicas: 20}\n')
    runs = {}
    for name, flags in (("plain", []), ("scheduled", ["--schedule", str(path), "--start", "2026-12-07T07:50+01:00"]),
                        ("sunday", ["--schedule", str(path), "--start", "2026-12-06T07:50+01:00"])):
        out = tmp_path / name
        assert cli.main(["--json", "--out", str(out), "--quiet", "--policies", "predictive", *flags]) == 0
        document = json.loads(capsys.readouterr().out)
        runs[name], described = document["policies"][0], runs.get("described", []) + document["description"]
        runs["described"] = described
    assert runs["scheduled"]["gpu_hours"] > runs["plain"]["gpu_hours"] + 30 * 5 / 60  # >= 5 more replicas for 30 min
    assert runs["sunday"]["gpu_hours"] == runs["plain"]["gpu_hours"]  # the window is Mondays only
    assert "Schedule: 1 window(s) in Europe/Paris (rush floor 20), the trace starting 2026-12-07T07:50:00+01:00" in \
        "\n".join(runs["described"])
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--out", str(tmp_path), "--quiet", "--schedule", str(path)])
    assert exit_.value.code == 2 and "--schedule needs --start" in capsys.readouterr().err
