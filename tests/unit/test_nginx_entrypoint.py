"""Unit tests of the nginx image's entrypoint: settings into nginx directives."""
import random
import re

import pytest


@pytest.mark.parametrize("limit", [1, 9, 10, 999, 1000, 67108864, 10 << 30])
def test_greater_than_matches_exactly_the_larger_numbers(nginx_entrypoint, limit):
    pattern = re.compile(nginx_entrypoint.greater_than(limit))
    rng = random.Random(limit)
    numbers = [*range(0, 2000), limit - 1, limit, limit + 1, 10 * limit,
               *(rng.randrange(0, 100 * limit + 10) for _ in range(5000))]
    for n in numbers:
        assert bool(pattern.match(str(n))) == (n > limit), n
    assert pattern.match(f"000{limit + 1}") and not pattern.match(f"00{limit}")


URL = ("https", "galaxy.example.org", "galaxy.example.org:8443")


def test_settings_file_carries_the_limit_and_the_upload_policy(nginx_entrypoint):
    conf = nginx_entrypoint.render(URL, 64 << 20, anonymous_uploads=False)
    assert "client_max_body_size 67108864;" in conf
    assert "64 MiB (GALAXY_MAX_UPLOAD_SIZE)" in conf
    assert re.search(r"\$anonymous_uploads \{\s+default 0;", conf)
    assert re.search(r"default 1;", nginx_entrypoint.render(URL, 1 << 30, anonymous_uploads=True))


def test_galaxy_url_sets_the_host_galaxy_sees(nginx_entrypoint, monkeypatch):
    monkeypatch.setenv("GALAXY_URL", "https://galaxy.example.org:8443/")
    assert nginx_entrypoint.public_url("GALAXY_URL", "") == URL
    conf = nginx_entrypoint.render(URL, 1 << 30, anonymous_uploads=False)
    assert re.search(r'\$galaxy_authority \{\s+default "galaxy.example.org:8443";', conf)
    assert re.search(r'\$galaxy_scheme \{\s+default "https";', conf)


@pytest.mark.parametrize("name, value", [("GALAXY_MAX_UPLOAD_SIZE", "ten gigs"),
                                         ("GALAXY_ANONYMOUS_UPLOADS", "yes"),
                                         ("GALAXY_URL", "galaxy.example.org"),
                                         ("GALAXY_URL", "ftp://galaxy.example.org"),
                                         ("GALAXY_URL", "http://galaxy.example.org/galaxy"),
                                         ("GALAXY_URL", "http://galaxy.example.org:80x")])
def test_malformed_settings_stop_nginx_with_their_name(nginx_entrypoint, monkeypatch, capsys,
                                                       tmp_path, name, value):
    monkeypatch.setattr(nginx_entrypoint, "SETTINGS", str(tmp_path / "settings.conf"))
    monkeypatch.setattr(nginx_entrypoint, "SERVER_NAME", str(tmp_path / "server_name.conf"))
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit:
        nginx_entrypoint.main(["true"])
    assert exit.value.code == 2 and name in capsys.readouterr().err
