"""scripts/swarm_stack.py: what it changes of `compose config` for Swarm (scripts/test-swarm
deploys the result on a real two-engine swarm)."""
import re

import pytest

from conftest import ROOT, load

# `compose config` as Compose v1 prints it (short syntax) for a few services of the stack.
V1 = {
    "services": {
        "init": {"image": "web", "command": ["init"], "user": "root", "network_mode": "none",
                 "mem_limit": "512m", "pids_limit": 256, "build": {"context": "."},
                 "volumes": ["secrets:/var/lib/galaxy-secrets", "munge-key:/etc/munge",
                             "galaxy-data:/srv/galaxy"]},
        "postgres": {"image": "postgres", "shm_size": "256m", "restart": "unless-stopped",
                     "networks": {"backend": None},
                     "depends_on": {"init": {"condition": "service_completed_successfully"}},
                     "volumes": ["pgdata:/var/lib/postgresql/data",
                                 "db-secret:/var/lib/galaxy-db-secret:ro"]},
        "web": {"image": "web", "command": ["web"], "environment": {"POSTGRES_HOST": "postgres"},
                "networks": {"front": None, "backend": None}, "mem_limit": "3g",
                "volumes": ["secrets:/var/lib/galaxy-secrets:ro", "galaxy-data:/srv/galaxy"]},
        "node": {"image": "runner", "command": ["node"], "user": "root",
                 "networks": {"cluster": None},
                 "volumes": ["munge-key:/etc/munge:ro", "galaxy-data:/srv/galaxy:ro",
                             "galaxy-jobs:/srv/galaxy/jobs"]},
        "nginx": {"image": "nginx", "ports": [{"published": 8080, "target": 8080}],
                  "networks": {"front": None},
                  "volumes": ["/site/tls:/etc/nginx/tls:ro", "galaxy-data:/srv/galaxy:ro"]},
        "toolshed": {"image": "toolshed", "profiles": ["toolshed"]},
    },
    "networks": {"front": {}, "backend": {"internal": True}, "cluster": {"internal": True}},
}


@pytest.fixture
def swarm_stack():
    return load(ROOT / "scripts" / "swarm_stack.py", "swarm_stack")


@pytest.fixture
def stack(swarm_stack):
    return swarm_stack.stack_file(V1, "g", swarm_stack.nfs_volume("nfs.example.org", "/export/"),
                                  {"web": 3})


def test_nothing_swarm_refuses_or_ignores_is_left(stack):
    for name, service in stack["services"].items():
        assert not {"build", "depends_on", "restart", "mem_limit", "pids_limit", "shm_size",
                    "network_mode", "profiles"} & set(service), name
    assert stack["services"]["init"]["deploy"]["resources"]["limits"] == {"memory": "512m", "pids": 256}


def test_one_shots_run_until_they_succeed_once_and_the_rest_always(stack):
    assert stack["services"]["init"]["deploy"]["restart_policy"]["condition"] == "on-failure"
    assert "replicas" not in stack["services"]["init"]["deploy"]
    assert stack["services"]["web"]["deploy"]["restart_policy"]["condition"] == "any"
    assert stack["services"]["web"]["deploy"]["replicas"] == 3
    assert stack["services"]["node"]["deploy"]["replicas"] == 1
    assert "toolshed" not in stack["services"]


def test_limits_and_shared_memory_move_where_swarm_reads_them(stack):
    assert stack["services"]["web"]["deploy"]["resources"]["limits"]["memory"] == "3g"
    assert {"type": "tmpfs", "target": "/dev/shm", "tmpfs": {"size": 256 << 20}} in \
        stack["services"]["postgres"]["volumes"]


def test_secret_volumes_become_swarm_secrets_at_the_same_paths(stack):
    node = stack["services"]["node"]
    # The node had the munge key's volume only: it gets that secret and no other.
    assert node["secrets"] == [{"source": "munge.key", "target": "/etc/munge/munge.key",
                                "uid": "1452", "gid": "1452", "mode": 0o400}]
    web = {s["target"]: s["uid"] for s in stack["services"]["web"]["secrets"]}
    assert web == {f"/var/lib/galaxy-secrets/{n}": "1450"
                   for n in ("id_secret", "admin_api_key", "admin_password")}
    # PostgreSQL reads its password as root before it drops to its user, as under Compose.
    assert stack["services"]["postgres"]["secrets"][0]["target"] == "/var/lib/galaxy-db-secret/db_password"
    assert all(not v["target"].startswith(("/var/lib/galaxy-", "/etc/munge"))
               for s in stack["services"].values() for v in s.get("volumes", []))
    assert stack["secrets"]["db_password"] == {"external": True, "name": "g_db_password"}
    # init makes no secret under Swarm (scripts/swarm-deploy does): it mounts none.
    assert "secrets" not in stack["services"]["init"]


def test_shared_volumes_are_nfs_and_the_rest_local(stack):
    assert stack["volumes"]["galaxy-data"] == {"driver": "local", "driver_opts": {
        "type": "nfs", "o": "addr=nfs.example.org,rw,nfsvers=4.2,hard",
        "device": ":/export/galaxy-data"}}
    assert stack["volumes"]["pgdata"] == {}
    assert "secrets" not in stack["volumes"]


def test_state_is_pinned_and_replicas_are_named_by_slot(stack, swarm_stack):
    for name in ("postgres", "nginx"):
        assert stack["services"][name]["deploy"]["placement"]["constraints"] == [swarm_stack.STATE_LABEL]
    assert "placement" not in stack["services"]["web"]["deploy"]
    assert stack["services"]["web"]["environment"]["GALAXY_REPLICA_NAME"] == "web_{{.Task.Slot}}"
    assert stack["services"]["node"]["environment"]["GALAXY_REPLICA_NAME"] == "node_{{.Task.Slot}}"


def test_nginx_sees_every_web_replica_and_client_addresses(stack):
    web = stack["services"]["web"]
    assert all(s["deploy"]["endpoint_mode"] == "dnsrr" for s in stack["services"].values())
    assert web["environment"]["GALAXY_TRUSTED_PROXIES"] == \
        stack["networks"]["front"]["ipam"]["config"][0]["subnet"]
    assert stack["services"]["nginx"]["ports"] == [
        {"target": 8080, "published": 8080, "protocol": "tcp", "mode": "host"}]
    assert stack["networks"]["backend"] == {"driver": "overlay", "internal": True,
                                            "driver_opts": {"encrypted": ""}}


def test_compose_v2_long_syntax_reads_the_same(swarm_stack):
    service = {"image": "nginx", "ports": [{"target": 8080, "published": "18080"}],
               "volumes": [{"type": "volume", "source": "db-secret", "target": "/var/lib/galaxy-db-secret",
                            "read_only": True},
                           {"type": "bind", "source": "/site/tls", "target": "/etc/nginx/tls"}]}
    out = swarm_stack.swarm_service("nginx", service, {})
    assert out["ports"][0]["published"] == 18080
    assert out["secrets"][0]["source"] == "db_password"
    assert out["volumes"] == [{"type": "bind", "source": "/site/tls", "target": "/etc/nginx/tls",
                               "read_only": False}]
    assert swarm_stack.swarm_service("nginx", {"ports": ["18080:8080/tcp"]}, {})["ports"] \
        == [{"target": 8080, "published": 18080, "protocol": "tcp", "mode": "host"}]


@pytest.mark.parametrize("port", ["127.0.0.1:18080:8080",
                                  {"target": 8080, "published": "18080", "host_ip": "127.0.0.1"}])
def test_a_port_kept_to_one_address_is_refused_not_opened_to_all(swarm_stack, port):
    with pytest.raises(swarm_stack.StackError, match="bound to 127.0.0.1: Swarm publishes on every"):
        swarm_stack.swarm_service("nginx", {"ports": [port]}, {})


def test_a_key_it_does_not_know_stops_it(swarm_stack):
    with pytest.raises(swarm_stack.StackError, match="service node: cap_drop, security_opt not carried"):
        swarm_stack.swarm_service("node", {"image": "runner", "cap_drop": ["ALL"],
                                           "security_opt": ["no-new-privileges"]}, {})


def test_process_limits_and_tmpfs_are_kept(swarm_stack):
    out = swarm_stack.swarm_service("runner", {"pids_limit": 2048, "mem_limit": "4g",
                                               "tmpfs": ["/etc/slurm"]}, {})
    assert out["deploy"]["resources"]["limits"] == {"memory": "4g", "pids": 2048}
    assert {"type": "tmpfs", "target": "/etc/slurm"} in out["volumes"]


def test_init_joins_a_network_of_its_own_with_no_way_out(stack, swarm_stack):
    assert stack["services"]["init"]["networks"] == [swarm_stack.ISOLATED]
    assert stack["networks"][swarm_stack.ISOLATED]["internal"] is True
    assert [name for name, s in stack["services"].items()
            if swarm_stack.ISOLATED in s["networks"]] == ["init"]


def test_secret_owners_are_the_images_users(swarm_stack):
    dockerfile = (ROOT / "Dockerfile").read_text()
    for user, arg in (("galaxy", "GALAXY_UID"), ("munge", "MUNGE_UID")):
        assert {int(n) for n in re.findall(rf"ARG {arg}=(\d+)", dockerfile)} == {swarm_stack.UIDS[user]}


def test_every_secret_of_a_deployment_is_made(swarm_stack):
    assert sorted(swarm_stack.secret_names()) == sorted(
        ["id_secret", "admin_api_key", "admin_password", "db_password", "slurmdb_password",
         "broker_password", "results_password", "munge.key"])
