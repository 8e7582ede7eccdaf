"""Unit tests of docker/schema.py: the schema revision an image's Galaxy expects, read from its
migration scripts, and the wait of every role but migrate until the database is at it."""
import pytest


def test_the_expected_head_is_the_migration_nothing_revises(schema):
    assert schema.revisions()["d4"] == {"b2", "c3"}
    assert schema.expected_head() == "d4"


def database_at(schema, monkeypatch, *answers):
    """The database answers these revision sets in turn (then the last one for ever)."""
    answers = list(answers)
    monkeypatch.setattr(schema, "database_revisions",
                        lambda url: answers.pop(0) if len(answers) > 1 else answers[0])


def test_waits_until_migrate_has_upgraded_the_schema(schema, monkeypatch, capsys):
    database_at(schema, monkeypatch, set(), {"b2", "t9"}, {"d4", "t9"})
    schema.wait_for_schema("postgresql://db")
    assert "waiting for Galaxy's schema d4: the schema is at b2, t9" in capsys.readouterr().err


def test_an_older_schema_that_stays_old_stops_the_role_naming_migrate(schema, monkeypatch, capsys):
    monkeypatch.setenv("GALAXY_START_WAIT", "0")
    database_at(schema, monkeypatch, {"b2", "t9"})
    with pytest.raises(SystemExit) as stopped:
        schema.wait_for_schema("postgresql://db")
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "the schema is at b2, t9; this Galaxy needs schema d4" in err
    assert "docker compose up migrate" in err


def test_a_schema_newer_than_the_image_stops_the_role_at_once(schema, monkeypatch, capsys):
    database_at(schema, monkeypatch, {"e5", "t9"})
    with pytest.raises(SystemExit):
        schema.wait_for_schema("postgresql://db")
    assert "(e5) is newer than this Galaxy's (d4)" in capsys.readouterr().err


def test_a_role_waits_for_what_it_needs_and_then_stops_naming_it(settings, monkeypatch, capsys):
    answers = [False, True]
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    settings.wait_until("slurmctld", lambda: answers.pop(0), "see slurmctld's log")
    assert "waiting for slurmctld" in capsys.readouterr().err
    monkeypatch.setenv("GALAXY_START_WAIT", "0")
    with pytest.raises(SystemExit) as stopped:
        settings.wait_until("slurmctld", lambda: False, "see slurmctld's log")
    assert stopped.value.code == 2
    assert "gave up waiting for slurmctld after 0 s (GALAXY_START_WAIT): see slurmctld's log" \
        in capsys.readouterr().err
