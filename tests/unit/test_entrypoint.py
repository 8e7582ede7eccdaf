"""Unit tests of the Galaxy images' entrypoint modules: settings checks, secrets, replica names,
the upload limit, the external cluster's files."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_setting_returns_a_valid_value(settings, monkeypatch):
    monkeypatch.setenv("GALAXY_WEB_WORKERS", "4")
    assert settings.setting("GALAXY_WEB_WORKERS", "1", r"[1-9]\d*", "a number") == "4"


def test_setting_default_when_unset(settings, monkeypatch):
    monkeypatch.delenv("GALAXY_WEB_WORKERS", raising=False)
    assert settings.setting("GALAXY_WEB_WORKERS", "1", r"[1-9]\d*", "a number") == "1"


@pytest.mark.parametrize("value", ["0", "four", "4 ", "-1"])
def test_malformed_setting_names_variable_and_form(settings, monkeypatch, capsys, value):
    monkeypatch.setenv("GALAXY_WEB_WORKERS", value)
    with pytest.raises(SystemExit) as exit:
        settings.setting("GALAXY_WEB_WORKERS", "1", r"[1-9]\d*", "a positive whole number")
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "GALAXY_WEB_WORKERS" in err and "a positive whole number" in err


def test_missing_required_setting(settings, monkeypatch, capsys):
    monkeypatch.delenv("POSTGRES_HOST", raising=False)
    with pytest.raises(SystemExit):
        settings.setting("POSTGRES_HOST", form="a host name")
    assert "POSTGRES_HOST is not set; expected a host name" in capsys.readouterr().err


def test_write_once_never_overwrites(settings, tmp_path):
    path = tmp_path / "id_secret"
    assert settings.write_once(str(path), "first", 0o440)
    assert not settings.write_once(str(path), "second", 0o440)
    assert path.read_text() == "first"
    assert oct(path.stat().st_mode & 0o777) == "0o440"


def test_missing_secret_says_which_and_why(settings, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(settings.SECRET_FILES, "db_password", (str(tmp_path), None))
    with pytest.raises(SystemExit):
        settings.read_secret("db_password")
    assert f"{tmp_path}/db_password is missing" in capsys.readouterr().err


def test_secret_generators_are_random_and_fit_galaxy(settings):
    first = {name: make() for name, (_, make) in settings.SECRET_FILES.items()}
    second = {name: make() for name, (_, make) in settings.SECRET_FILES.items()}
    assert all(first[n] != second[n] for n in first)
    assert len(first["id_secret"]) <= 56  # Galaxy's Blowfish key limit


@pytest.mark.parametrize("ptr, expected", [
    ("sgtest_web_3.sgtest_default.", "web_3"),   # Compose v1 container name
    ("sgtest-web-12.sgtest_default.", "web_12"),  # Compose v2
    ("my_project-web-2.net.", "web_2"),
])
def test_replica_name_from_docker_dns(settings, monkeypatch, ptr, expected):
    monkeypatch.delenv("GALAXY_REPLICA_NAME", raising=False)
    monkeypatch.setattr(settings, "reverse_dns_name", lambda: ptr)
    assert settings.replica_name("web") == expected


def test_replica_name_without_index_fails_clearly(settings, monkeypatch, capsys):
    monkeypatch.delenv("GALAXY_REPLICA_NAME", raising=False)
    monkeypatch.setattr(settings, "reverse_dns_name", lambda: "a3dcb0b25149")
    with pytest.raises(SystemExit):
        settings.replica_name("web")
    assert "GALAXY_REPLICA_NAME" in capsys.readouterr().err


def test_explicit_replica_name_wins(settings, monkeypatch):
    monkeypatch.setenv("GALAXY_REPLICA_NAME", "handler_main")
    assert settings.replica_name("handler") == "handler_main"


def test_unknown_command_is_executed(entrypoint, monkeypatch):
    ran = []
    monkeypatch.setattr(os, "execvp", lambda f, a: ran.append(a))
    entrypoint.main(["bash", "-c", "true"])
    assert ran == [["bash", "-c", "true"]]


@pytest.mark.parametrize("value, expected", [("10g", 10 << 30), ("512M", 512 << 20),
                                             ("1048576", 1048576), ("64k", 64 << 10)])
def test_upload_limit_in_bytes(entrypoint, monkeypatch, value, expected):
    monkeypatch.setenv("GALAXY_MAX_UPLOAD_SIZE", value)
    assert entrypoint.upload_limit() == expected


@pytest.mark.parametrize("value", ["10 GB", "0", "-1g", "1.5g", "g"])
def test_malformed_upload_limit_is_refused(entrypoint, monkeypatch, capsys, value):
    monkeypatch.setenv("GALAXY_MAX_UPLOAD_SIZE", value)
    with pytest.raises(SystemExit):
        entrypoint.upload_limit()
    assert "GALAXY_MAX_UPLOAD_SIZE" in capsys.readouterr().err


def test_site_files_created_once(settings, monkeypatch, tmp_path):
    monkeypatch.setattr(settings, "DATA_DIR", str(tmp_path))
    builds = tmp_path / "image-builds.txt"
    builds.write_text("hg38\tHuman Dec. 2013 (GRCh38/hg38) (hg38)\n")
    monkeypatch.setattr(settings, "BUILDS_LIST", str(builds))
    (tmp_path / "config").mkdir()
    made = settings.ensure_site_files()
    local, shed = tmp_path / "config" / "local_tool_conf.xml", tmp_path / "config" / "shed_tool_conf.xml"
    assert f'tool_path="{tmp_path}/config/local_tools" is_shed_conf="false"' in local.read_text()
    assert f'tool_path="{tmp_path}/shed_tools"' in shed.read_text()
    site_builds = tmp_path / "tool-data" / "shared" / "ucsc" / "builds.txt"
    assert site_builds.read_text() == builds.read_text()
    assert {str(local), str(shed), str(site_builds), str(tmp_path / "shed_tools")} <= set(made)
    local.write_text("<toolbox/>")  # an admin's edits are kept
    site_builds.write_text("mine\tMy genome (mine)\n")
    settings.ensure_site_files()
    assert local.read_text() == "<toolbox/>"
    assert site_builds.read_text() == "mine\tMy genome (mine)\n"


def test_site_files_never_follow_a_link_out_of_the_data(settings, monkeypatch, tmp_path, capsys):
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    (data / "config").mkdir(parents=True)
    elsewhere.mkdir()
    (data / "tool-data").symlink_to(elsewhere)
    monkeypatch.setattr(settings, "DATA_DIR", str(data))
    with pytest.raises(SystemExit):
        settings.ensure_site_files()
    assert "leads out of" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == []


def test_tool_sheds_are_the_main_one_unless_set(entrypoint, monkeypatch):
    monkeypatch.delenv("GALAXY_TOOL_SHEDS", raising=False)
    with open(entrypoint.tool_sheds_config()) as f:
        assert '<tool_shed name="Galaxy Main Tool Shed" url="https://toolshed.g2.bx.psu.edu/"/>' in f.read()
    monkeypatch.setenv("GALAXY_TOOL_SHEDS", " https://toolshed.g2.bx.psu.edu/  http://shed.example.org:9009 ")
    with open(entrypoint.tool_sheds_config()) as f:
        sheds = f.read()
    assert sheds.count("<tool_shed ") == 2
    assert '<tool_shed name="shed.example.org:9009" url="http://shed.example.org:9009/"/>' in sheds


@pytest.mark.parametrize("value", ["toolshed.example.org", "ftp://shed.example.org/",
                                   'https://shed.example.org/"><x', "https://a,https://b/"])
def test_a_malformed_tool_shed_url_is_refused(entrypoint, monkeypatch, capsys, value):
    monkeypatch.setenv("GALAXY_TOOL_SHEDS", value)
    with pytest.raises(SystemExit):
        entrypoint.tool_sheds_config()
    assert "GALAXY_TOOL_SHEDS" in capsys.readouterr().err


def test_site_cluster_needs_its_files(cluster, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    monkeypatch.setenv("MUNGE_KEY_FILE", str(tmp_path / "munge.key"))
    with pytest.raises(SystemExit):
        cluster.connect_to_cluster()
    err = capsys.readouterr().err
    assert "slurm.conf is missing or not readable" in err and "external cluster" in err


def test_site_cluster_needs_a_munge_key_setting(cluster, monkeypatch, tmp_path, capsys):
    (tmp_path / "slurm.conf").write_text("ClusterName=site\n")
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    monkeypatch.delenv("MUNGE_KEY_FILE", raising=False)
    with pytest.raises(SystemExit):
        cluster.connect_to_cluster()
    assert "MUNGE_KEY_FILE is not set" in capsys.readouterr().err


# A web replica's routes in the stack: eth0 on the internal backend network (no gateway), eth1 on
# the public network, which has the default route.
ROUTES = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth1\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00F0FFFF\t0\t0\t0
eth1\t0010A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""


def test_trusted_proxies_are_the_public_network(entrypoint, tmp_path):
    routes = tmp_path / "route"
    routes.write_text(ROUTES)
    assert entrypoint.public_subnet(str(routes)) == "192.168.16.0/24"


def test_no_default_route_means_no_trusted_network(entrypoint, tmp_path, capsys):
    routes = tmp_path / "route"
    routes.write_text("\n".join(ROUTES.splitlines()[::2]))  # header and the backend network only
    with pytest.raises(SystemExit):
        entrypoint.public_subnet(str(routes))
    assert "GALAXY_TRUSTED_PROXIES" in capsys.readouterr().err


@pytest.fixture
def job_conf(entrypoint, monkeypatch, tmp_path):
    """job_config_with_limits() on the repository's job conf, writing into tmp_path; its
    result read back."""
    import yaml
    monkeypatch.setattr(entrypoint, "STACK_JOB_CONF", str(ROOT / "config" / "job_conf.yml"))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.delenv("GALAXY_CONFIG_OVERRIDE_JOB_CONFIG_FILE", raising=False)

    def render():
        path = entrypoint.job_config_with_limits()
        assert os.stat(path).st_mode & 0o777 == 0o644
        with open(path) as f:
            return yaml.safe_load(f)
    return render


def test_job_limits_join_the_stacks_job_conf(job_conf, monkeypatch):
    monkeypatch.setenv("GALAXY_USER_CONCURRENT_JOBS", "3")
    monkeypatch.setenv("GALAXY_ANONYMOUS_CONCURRENT_JOBS", "0")
    conf = job_conf()
    # 0 is no limit: left out.
    assert conf["limits"] == [{"type": "registered_user_concurrent_jobs", "value": 3}]
    assert conf["execution"]["default"] == "tpv_dispatcher"


@pytest.mark.parametrize("value", ["", "many", "-1", "2.5"])
def test_malformed_job_limit_is_refused(job_conf, monkeypatch, capsys, value):
    monkeypatch.setenv("GALAXY_USER_CONCURRENT_JOBS", value)
    with pytest.raises(SystemExit):
        job_conf()
    assert "GALAXY_USER_CONCURRENT_JOBS" in capsys.readouterr().err


def test_a_sites_own_job_conf_gets_the_limits_it_lacks(job_conf, monkeypatch, tmp_path):
    site = tmp_path / "site_job_conf.yml"
    site.write_text("runners: {local: {load: galaxy.jobs.runners.local:LocalJobRunner}}\n"
                    "limits: [{type: registered_user_concurrent_jobs, value: 20}]\n")
    monkeypatch.setenv("GALAXY_CONFIG_OVERRIDE_JOB_CONFIG_FILE", str(site))
    monkeypatch.setenv("GALAXY_USER_CONCURRENT_JOBS", "3")
    monkeypatch.setenv("GALAXY_ANONYMOUS_CONCURRENT_JOBS", "1")
    conf = job_conf()
    assert conf["limits"] == [{"type": "registered_user_concurrent_jobs", "value": 20},
                              {"type": "anonymous_user_concurrent_jobs", "value": 1}]
    assert "local" in conf["runners"]


def test_celery_config_is_a_mapping_in_a_private_copy_of_galaxy_yml(entrypoint, monkeypatch, tmp_path):
    """celery_conf can't travel as a GALAXY_CONFIG_OVERRIDE_* string: it goes into a copy of
    galaxy.yml only Galaxy's user reads (it holds Redis's password), which Galaxy is pointed at."""
    import yaml
    monkeypatch.setattr(entrypoint, "GALAXY_CONFIG", str(ROOT / "config" / "galaxy.yml"))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setattr(entrypoint, "read_secret", lambda name: f"<{name}>")
    monkeypatch.setattr("os.getuid", lambda: 1450)  # as Galaxy's user (the handler's root chowns)
    entrypoint.celery_environment()
    path = os.environ["GALAXY_CONFIG_FILE"]
    assert os.stat(path).st_mode & 0o777 == 0o600
    with open(path) as f:
        galaxy = yaml.safe_load(f)["galaxy"]
    conf = galaxy["celery_conf"]
    assert conf["result_backend"] == "redis://:<results_password>@redis:6379/0"
    assert conf["task_acks_late"] is True and conf["task_reject_on_worker_lost"] is True
    # Galaxy's own routes, restated (celery_conf replaces Galaxy's default mapping whole).
    assert conf["task_routes"] == {"galaxy.fetch_data": "disabled",
                                   "galaxy.set_job_metadata": "galaxy.external"}
    assert galaxy["enable_celery_tasks"] is True
    # Relative paths still resolve where the image's galaxy.yml is; the rest of it is kept.
    assert galaxy["config_dir"] == str(ROOT / "config")
    assert galaxy["file_path"] == "/srv/galaxy/objects"
    assert "<broker_password>" in os.environ["GALAXY_CONFIG_OVERRIDE_AMQP_INTERNAL_CONNECTION"]
    entrypoint.celery_environment(results=False)  # beat: no result backend, no password for it
    with open(os.environ["GALAXY_CONFIG_FILE"]) as f:
        assert yaml.safe_load(f)["galaxy"]["celery_conf"]["result_backend"] == "disabled"
