"""Unit tests of docker/health.py's watchdog: when a handler's Galaxy counts as wedged (its
heartbeat stopped while the database answered), and when not (starting, a database outage)."""
from datetime import datetime, timedelta

T0 = datetime(2026, 12, 4, 12, 0, 0)


def beat(minutes):
    return T0 + timedelta(minutes=minutes)


def readings(health, judge, sequence, start=0, every=30):
    """Feed (beat or None for a database outage) readings every `every` s; the verdicts."""
    return [judge.wedged(health.DATABASE_AWAY if at is None else at, start + i * every)
            for i, at in enumerate(sequence, 1)]


def test_a_beat_that_stops_moving_is_wedged_after_restart_after_seconds(health):
    judge = health.Watchdog(now=0)
    # Beats every minute while the process is older than its start grace, then none.
    moving = [beat(m // 2) for m in range(40)]
    stuck = [moving[-1]] * 8
    verdicts = readings(health, judge, moving + stuck)
    assert not any(verdicts[:len(moving)])
    first = verdicts.index(True)
    # Wedged at the first reading more than RESTART_AFTER (150 s) after the beat was first seen.
    assert (first - (len(moving) - 2)) * 30 > health.RESTART_AFTER
    assert (first - 1 - (len(moving) - 2)) * 30 <= health.RESTART_AFTER


def test_a_starting_galaxy_keeps_its_previous_runs_beat_for_the_start_grace(health):
    judge = health.Watchdog(now=0)
    old = beat(-30)  # the beat the container's previous run left
    verdicts = readings(health, judge, [old] * (health.START_GRACE // 30 - 1))
    assert not any(verdicts)


def test_a_galaxy_that_never_beats_is_wedged_after_the_grace(health):
    judge = health.Watchdog(now=0)
    verdicts = readings(health, judge, [beat(-30)] * 40)
    assert True in verdicts
    assert verdicts.index(True) * 30 > health.START_GRACE


def test_a_database_outage_restarts_nothing(health):
    judge = health.Watchdog(now=0)
    moving = [beat(m // 2) for m in range(40)]
    # Ten minutes away, then back: Galaxy writes its next beat within a minute.
    outage = [None] * 20
    back = [moving[-1], moving[-1], beat(25)]
    assert not any(readings(health, judge, moving + outage + back))
