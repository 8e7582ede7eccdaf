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


def test_settings_file_carries_the_limit_and_the_login_policy(nginx_entrypoint):
    conf = nginx_entrypoint.render(URL, 64 << 20, require_login=True)
    assert "64 MiB (GALAXY_MAX_UPLOAD_SIZE)" in conf
    assert re.search(r"\$login_to_change \{\s+GET 0;\s+HEAD 0;\s+OPTIONS 0;\s+default 1;", conf)
    assert re.search(r"\$login_always \{\s+OPTIONS 0;\s+default 1;", conf)
    anonymous = nginx_entrypoint.render(URL, 1 << 30, require_login=False)
    assert "default 1;" not in anonymous and "default 0;" in anonymous


def test_uploads_get_the_upload_limit(nginx_entrypoint, monkeypatch, tmp_path):
    for name in ("SETTINGS", "SERVER_NAME", "UPLOAD_SIZE", "LISTEN_DEFAULT", "LISTEN_GALAXY",
                 "TLS_DIR"):
        monkeypatch.setattr(nginx_entrypoint, name, str(tmp_path / name))
    monkeypatch.setenv("GALAXY_MAX_UPLOAD_SIZE", "64m")
    monkeypatch.setattr(nginx_entrypoint.os, "execvp", lambda *command: None)
    nginx_entrypoint.main(["nginx"])
    assert (tmp_path / "UPLOAD_SIZE").read_text() == "client_max_body_size 67108864;\n"
    # No certificate: plain HTTP only.
    assert (tmp_path / "LISTEN_GALAXY").read_text() == "listen 8080;\n"


def test_galaxy_url_sets_the_host_galaxy_sees(nginx_entrypoint, monkeypatch):
    monkeypatch.setenv("GALAXY_URL", "https://galaxy.example.org:8443/")
    assert nginx_entrypoint.public_url("GALAXY_URL", "") == URL
    conf = nginx_entrypoint.render(URL, 1 << 30, require_login=True)
    assert re.search(r'\$galaxy_authority \{\s+default "galaxy.example.org:8443";', conf)
    assert re.search(r'\$galaxy_scheme \{\s+default "https";', conf)


@pytest.mark.parametrize("name, value", [("GALAXY_MAX_UPLOAD_SIZE", "ten gigs"),
                                         ("GALAXY_REQUIRE_LOGIN", "yes"),
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


@pytest.mark.parametrize("authority, hsts", [("galaxy.example.org", "max-age=31536000"),
                                             ("galaxy.example.org:8443", "")])
def test_https_settings_send_hsts_only_on_the_standard_port(nginx_entrypoint, authority, hsts):
    conf = nginx_entrypoint.render(("https", "galaxy.example.org", authority), 1 << 30, True,
                                   ("/tls/fullchain.pem", "/tls/privkey.pem"))
    assert "ssl_certificate /tls/fullchain.pem;" in conf and "ssl_protocols TLSv1.2 TLSv1.3;" in conf
    assert re.search(rf'\$hsts \{{\s+https "{hsts}";', conf)
    assert nginx_entrypoint.listen(True) == "listen 8080;\nlisten 8443 ssl http2;\n"
