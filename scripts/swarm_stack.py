"""The stack file for Docker Swarm (`docker stack deploy`), made from the Compose files.

One source: `compose config` (compose.yml and the cluster file COMPOSE_FILE names, with .env's
settings) gives every service, image, command, setting, network and volume; this module changes
only what Swarm does differently:

- no start order (`depends_on`): every role waits in its entrypoint for what it needs (the same
  code as under Compose); the one-shots (init, migrate, first-admin) are services that Swarm
  restarts until they succeed once;
- no `restart`, `mem_limit`, `pids_limit`, `shm_size`, `tmpfs`, `network_mode`:
  `deploy.restart_policy`, `deploy.resources`, tmpfs mounts; init (no network under Compose)
  joins an internal network of its own, which nothing else joins;
- any other key this module doesn't know stops it (StackError): nothing a site's override file
  sets, hardening included, is dropped silently;
- secrets: the secret volumes become Swarm secrets (made by scripts/swarm-deploy), each mounted
  at the same path, owner and mode as init gives it under Compose. Swarm sends a secret only to
  the nodes that run a task that needs it, and keeps it in memory there;
- volumes are local to each node: the shared ones (SHARED_VOLUMES) are NFS or a path every node
  mounts; the rest stay on the node their service is pinned to (STATEFUL, by node label);
- replica names come from Swarm's task slot (GALAXY_REPLICA_NAME);
- a service's name resolves to its tasks' addresses (dnsrr), as under Compose, not to a virtual
  IP: nginx spreads requests over every web replica itself, and no IPVS sits between Galaxy and
  PostgreSQL (IPVS drops connections idle for 15 minutes: a connection pool's; and some kernels,
  this project's test machine's among them, have no IPVS at all);
- nginx publishes on its node's own ports (mode host), so it sees client addresses, and Galaxy
  trusts forwarded headers from the front network (FRONT_SUBNET). Swarm publishes on every
  address of the node: a port bound to one address (GALAXY_PORT=127.0.0.1:8080) is refused;
- the overlay networks are encrypted (IPsec between hosts) unless asked not to (a kernel
  without ESP, as on this project's test machine): what Galaxy, PostgreSQL, RabbitMQ, Redis and
  Slurm say to each other crosses the hosts' network, in clear under Compose's bridges, and
  VXLAN takes packets from anyone who can reach its port.
"""
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docker"))
from settings import SECRET_OWNERS, secret_paths  # noqa: E402

ONE_SHOTS = ("init", "migrate", "first-admin")
# Where state lives, or a port and the site's certificate: on the node labelled galaxy.state=true.
STATEFUL = ("postgres", "rabbitmq", "redis", "mariadb", "slurmdbd", "slurmctld", "celery-beat",
            "nginx")
STATE_LABEL = "node.labels.galaxy.state == true"
# Every node that runs Galaxy or a job mounts these at the same path.
SHARED_VOLUMES = ("galaxy-data", "galaxy-jobs")
# Replica names (settings.replica_name) by role, from the task's slot.
REPLICA_NAMES = {"web": "web", "runner": "handler", "node": "node"}
# The front network's addresses: Galaxy trusts X-Forwarded-* from there (nginx).
FRONT_SUBNET = "10.201.0.0/24"
# Numeric owners of the secrets (Dockerfile: GALAXY_UID, MUNGE_UID; root).
UIDS = {"galaxy": 1450, "munge": 1452, "root": 0}
UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
# Keys of `compose config`'s services this module carries over (or, for Compose's own, drops).
KEPT = ("image", "command", "environment", "user", "hostname", "init", "healthcheck",
        "stop_grace_period")
HANDLED = ("mem_limit", "pids_limit", "shm_size", "tmpfs", "network_mode", "networks", "ports",
           "volumes", "profiles")
COMPOSE_ONLY = ("build", "depends_on", "restart", "container_name")
# init's network: internal, and nothing else joins it.
ISOLATED = "isolated"


class StackError(ValueError):
    pass


def secrets_in(directory):
    """The secret files (name, path) of a secret folder."""
    return [(os.path.basename(path), path) for path in secret_paths()
            if os.path.dirname(path) == directory]


def mounts(service):
    """(type, source, target, read_only) of a service's mounts, from Compose v1's short or v2's
    long syntax."""
    for mount in service.get("volumes", []):
        if isinstance(mount, str):
            parts = mount.split(":")
            source, target = parts[0], parts[1]
            kind = "bind" if source.startswith(("/", ".")) else "volume"
            yield kind, source, target, len(parts) > 2 and "ro" in parts[2].split(",")
        else:
            yield mount["type"], mount.get("source"), mount["target"], bool(mount.get("read_only"))


def size_in_bytes(value):
    match = re.fullmatch(r"(\d+)([bkmg]?)", str(value).strip().lower())
    if not match:
        raise ValueError(f"not a size: {value!r}")
    return int(match.group(1)) * UNITS[match.group(2)]


def swarm_service(name, service, replicas):
    unknown = sorted(set(service) - set(KEPT) - set(HANDLED) - set(COMPOSE_ONLY))
    if unknown:
        raise StackError(f"service {name}: {', '.join(unknown)} not carried over to Swarm "
                         "(scripts/swarm_stack.py); take it out of the Compose files or teach "
                         "swarm_stack.py what it means there")
    out = {key: service[key] for key in KEPT if key in service}
    env = out["environment"] = dict(out.get("environment") or {})
    deploy = out["deploy"] = {"endpoint_mode": "dnsrr", "restart_policy": {
        "condition": "on-failure" if name in ONE_SHOTS else "any", "delay": "5s"}}
    if name not in ONE_SHOTS:
        deploy["replicas"] = replicas.get(name, 1)
    if name in STATEFUL:
        deploy["placement"] = {"constraints": [STATE_LABEL]}
    limits = {}
    if "mem_limit" in service:
        limits["memory"] = str(service["mem_limit"])
    if "pids_limit" in service:
        limits["pids"] = int(service["pids_limit"])
    if limits:
        deploy["resources"] = {"limits": limits}
    if name in REPLICA_NAMES:
        env["GALAXY_REPLICA_NAME"] = f"{REPLICA_NAMES[name]}_{{{{.Task.Slot}}}}"
    if name == "web":
        env["GALAXY_TRUSTED_PROXIES"] = FRONT_SUBNET
    if service.get("network_mode") == "none":
        out["networks"] = [ISOLATED]
    else:
        out["networks"] = sorted(service.get("networks") or [])  # a list, or v2's {name: options}
    if "ports" in service:
        out["ports"] = [published(port) for port in service["ports"]]
    volumes, secrets = [], []
    for kind, source, target, read_only in mounts(service):
        if target in SECRET_OWNERS:
            if name == "init":  # it makes them under Compose; here scripts/swarm-deploy does
                continue
            uid = UIDS[SECRET_OWNERS[target]]
            secrets += [{"source": secret, "target": path, "uid": str(uid), "gid": str(uid),
                         "mode": 0o400} for secret, path in secrets_in(target)]
        else:
            volumes.append({"type": kind, "source": source, "target": target, "read_only": read_only})
    if "shm_size" in service:
        volumes.append({"type": "tmpfs", "target": "/dev/shm",
                        "tmpfs": {"size": size_in_bytes(service["shm_size"])}})
    tmpfs = service.get("tmpfs") or []
    for target in [tmpfs] if isinstance(tmpfs, str) else tmpfs:
        volumes.append({"type": "tmpfs", "target": target.split(":")[0]})
    if volumes:
        out["volumes"] = volumes
    if secrets:
        out["secrets"] = secrets
    return out


def published(port):
    """A published port on the node's own address (mode host): nginx sees the client's address,
    where Swarm's routing mesh would hide it."""
    if isinstance(port, str):
        host, _, target = port.partition("/")[0].rpartition(":")
        address, _, published_port = host.rpartition(":")
    else:
        target, published_port, address = port["target"], port["published"], port.get("host_ip")
    if address and address != "0.0.0.0":
        raise StackError(f"port {published_port} is bound to {address}: Swarm publishes on every "
                         f"address of nginx's node; set it without an address (GALAXY_PORT=8080, "
                         "GALAXY_HTTPS_PORT=8443) and keep strangers out with the host's firewall")
    return {"target": int(target), "published": int(published_port), "protocol": "tcp",
            "mode": "host"}


def stack_file(config, stack, shared, replicas=None, encrypted=True):
    """The stack file (a dict) for `docker stack deploy`, from `compose config`'s dict.

    shared: the driver options of the shared volumes, given the volume name (nfs_volume or
    shared_directory). replicas: {service: count}. encrypted: IPsec on the overlay networks."""
    services = {name: swarm_service(name, service, replicas or {})
                for name, service in config["services"].items()
                if not service.get("profiles")}
    used = {m["source"] for s in services.values() for m in s.get("volumes", [])
            if m["type"] == "volume"}
    volumes = {name: ({"driver": "local", "driver_opts": shared(name)} if name in SHARED_VOLUMES else {})
               for name in sorted(used)}
    secrets = {ref["source"]: {"external": True, "name": f"{stack}_{ref['source']}"}
               for s in services.values() for ref in s.get("secrets", [])}
    networks = {}
    used_networks = {n for s in services.values() for n in s["networks"]}
    for name, network in [*config.get("networks", {}).items(), (ISOLATED, {"internal": True})]:
        if name not in used_networks:
            continue
        networks[name] = {"driver": "overlay", "internal": bool((network or {}).get("internal"))}
        if encrypted:
            networks[name]["driver_opts"] = {"encrypted": ""}
        if name == "front":
            networks[name]["ipam"] = {"config": [{"subnet": FRONT_SUBNET}]}
    return {"version": "3.9", "services": services, "networks": networks, "volumes": volumes,
            "secrets": dict(sorted(secrets.items()))}


def nfs_volume(address, export):
    """Shared volumes on an NFS server: each is a folder of the export, named after the volume."""
    return lambda name: {"type": "nfs", "o": f"addr={address},rw,nfsvers=4.2,hard",
                         "device": f":{export.rstrip('/')}/{name}"}


def shared_directory(path):
    """Shared volumes in a folder every node mounts at the same path (a cluster file system, or
    one host's folder when every node is on that host, as in scripts/test-swarm)."""
    return lambda name: {"type": "none", "o": "bind", "device": f"{path.rstrip('/')}/{name}"}


def secret_names():
    """Every Swarm secret of a deployment (file names, as scripts/swarm-deploy creates them)."""
    return [os.path.basename(path) for path in secret_paths()]
