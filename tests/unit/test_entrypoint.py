"""Unit tests of the images' entrypoint: settings checks, secrets, replica names."""
import os

import pytest


def test_setting_returns_a_valid_value(entrypoint, monkeypatch):
    monkeypatch.setenv("GALAXY_WEB_WORKERS", "4")
    assert entrypoint.setting("GALAXY_WEB_WORKERS", "1", r"[1-9]\d*", "a number") == "4"


def test_setting_default_when_unset(entrypoint, monkeypatch):
    monkeypatch.delenv("GALAXY_WEB_WORKERS", raising=False)
    assert entrypoint.setting("GALAXY_WEB_WORKERS", "1", r"[1-9]\d*", "a number") == "1"


@pytest.mark.parametrize("value", ["0", "four", "4 ", "-1"])
def test_malformed_setting_names_variable_and_form(entrypoint, monkeypatch, capsys, value):
    monkeypatch.setenv("GALAXY_WEB_WORKERS", value)
    with pytest.raises(SystemExit) as exit:
        entrypoint.setting("GALAXY_WEB_WORKERS", "1", r"[1-9]\d*", "a positive whole number")
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "GALAXY_WEB_WORKERS" in err and "a positive whole number" in err


def test_missing_required_setting(entrypoint, monkeypatch, capsys):
    monkeypatch.delenv("POSTGRES_HOST", raising=False)
    with pytest.raises(SystemExit):
        entrypoint.setting("POSTGRES_HOST", form="a host name")
    assert "POSTGRES_HOST is not set; expected a host name" in capsys.readouterr().err


def test_write_once_never_overwrites(entrypoint, tmp_path):
    path = tmp_path / "id_secret"
    assert entrypoint.write_once(str(path), "first", 0o440)
    assert not entrypoint.write_once(str(path), "second", 0o440)
    assert path.read_text() == "first"
    assert oct(path.stat().st_mode & 0o777) == "0o440"


def test_missing_secret_says_which_and_why(entrypoint, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(entrypoint, "SECRETS_DIR", str(tmp_path))
    with pytest.raises(SystemExit):
        entrypoint.read_secret("db_password")
    assert f"{tmp_path}/db_password is missing" in capsys.readouterr().err


def test_secret_generators_are_random_and_fit_galaxy(entrypoint):
    first = {name: make() for name, make in entrypoint.SECRET_FILES.items()}
    second = {name: make() for name, make in entrypoint.SECRET_FILES.items()}
    assert all(first[n] != second[n] for n in first)
    assert len(first["id_secret"]) <= 56  # Galaxy's Blowfish key limit


@pytest.mark.parametrize("ptr, expected", [
    ("sgtest_web_3.sgtest_default.", "web_3"),   # Compose v1 container name
    ("sgtest-web-12.sgtest_default.", "web_12"),  # Compose v2
    ("my_project-web-2.net.", "web_2"),
])
def test_replica_name_from_docker_dns(entrypoint, monkeypatch, ptr, expected):
    monkeypatch.delenv("GALAXY_REPLICA_NAME", raising=False)
    monkeypatch.setattr(entrypoint, "reverse_dns_name", lambda: ptr)
    assert entrypoint.replica_name("web") == expected


def test_replica_name_without_index_fails_clearly(entrypoint, monkeypatch, capsys):
    monkeypatch.delenv("GALAXY_REPLICA_NAME", raising=False)
    monkeypatch.setattr(entrypoint, "reverse_dns_name", lambda: "a3dcb0b25149")
    with pytest.raises(SystemExit):
        entrypoint.replica_name("web")
    assert "GALAXY_REPLICA_NAME" in capsys.readouterr().err


def test_explicit_replica_name_wins(entrypoint, monkeypatch):
    monkeypatch.setenv("GALAXY_REPLICA_NAME", "handler_main")
    assert entrypoint.replica_name("handler") == "handler_main"


def test_unknown_command_is_executed(entrypoint, monkeypatch):
    ran = []
    monkeypatch.setattr(os, "execvp", lambda f, a: ran.append(a))
    entrypoint.main(["bash", "-c", "true"])
    assert ran == [["bash", "-c", "true"]]
