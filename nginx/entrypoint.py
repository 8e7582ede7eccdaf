#!/usr/bin/env python3
"""Entrypoint of the nginx image: turn the stack's settings into nginx directives, then run nginx.

nginx.conf is static and readable; what depends on settings is written to one generated file
(/tmp/nginx/settings.conf) that it includes. A missing or malformed setting stops the container at
once with a message naming it, before nginx starts.

  GALAXY_URL                the address users reach Galaxy at, e.g. https://galaxy.example.org
  GALAXY_MAX_UPLOAD_SIZE    largest upload, e.g. 10g, 512m or bytes (Galaxy gets the same value)
  GALAXY_REQUIRE_LOGIN      false: clients without a login may upload and change what Galaxy
                            lets them (Galaxy's anonymous use); true (default): only read
  /etc/nginx/tls            GALAXY_TLS_DIR: fullchain.pem and privkey.pem there turn HTTPS on
"""
import os
import re
import sys
import time
from urllib.parse import urlsplit

SETTINGS = "/tmp/nginx/settings.conf"
SERVER_NAME = "/tmp/nginx/server_name.conf"
UPLOAD_SIZE = "/tmp/nginx/upload-size.conf"
LISTEN_DEFAULT = "/tmp/nginx/listen-default.conf"
LISTEN_GALAXY = "/tmp/nginx/listen-galaxy.conf"
TLS_DIR = "/etc/nginx/tls"
TLS_FILES = ("fullchain.pem", "privkey.pem")  # certbot's names
UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
# Made by the first-admin service once the admin's account exists (docker/entrypoint.py): nobody
# gets in before, so nobody can register the admin's address first. Compose starts nginx after
# first-admin anyway; under Swarm (no start order) this wait is the order.
# Only where Galaxy's data is mounted (the stack); an nginx run alone in front of it doesn't wait.
DATA_DIR = "/srv/galaxy"
FIRST_ADMIN_DONE = f"{DATA_DIR}/config/first-admin.done"


def fail(msg):
    print(f"nginx-entrypoint: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def size_in_bytes(name, default):
    value = os.environ.get(name) or default
    match = re.fullmatch(r"([1-9]\d*)([kmg]?)", value.strip().lower())
    if not match:
        fail(f"{name}={value!r} is malformed; expected a size like 10g, 512m or 1048576 (bytes)")
    return int(match.group(1)) * UNITS[match.group(2)]


def flag(name, default):
    value = (os.environ.get(name) or default).strip().lower()
    if value not in ("true", "false"):
        fail(f"{name}={value!r} is malformed; expected true or false")
    return value == "true"


def public_url(name, default):
    """(scheme, host, authority) of the URL users reach Galaxy at."""
    value = (os.environ.get(name) or default).strip()
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 (raises on a malformed port)
    except ValueError:
        parts = None
    if (not parts or parts.scheme not in ("http", "https") or not parts.hostname
            or parts.path.strip("/") or parts.query or not re.fullmatch(r"[\w.:\[\]-]+", parts.netloc)):
        fail(f"{name}={value!r} is malformed; expected the address users reach Galaxy at, "
             "e.g. http://localhost:8080 or https://galaxy.example.org (no path)")
    return parts.scheme, parts.hostname, parts.netloc


def tls_files(directory):
    """(certificate, key) in GALAXY_TLS_DIR, checked to belong together; None: no HTTPS."""
    paths = [os.path.join(directory, name) for name in TLS_FILES]
    # lexists: certbot's live/ files are links into archive/; mounted without it, they dangle.
    present = [os.path.lexists(path) for path in paths]
    if not any(present):
        return None
    if not all(present):
        have, lack = (TLS_FILES[0], TLS_FILES[1]) if present[0] else (TLS_FILES[1], TLS_FILES[0])
        fail(f"GALAXY_TLS_DIR holds {have} but not {lack}: put both there (the certificate with "
             "its chain, and its key), or neither for plain HTTP")
    dangling = [path for path in paths if not os.path.exists(path)]
    if dangling:
        fail(f"GALAXY_TLS_DIR: {dangling[0]} is a link to a file this container can't see "
             "(certbot's live/ folder links into archive/): mount the folder above both, or "
             "copy the files")
    import ssl
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(*paths)
    except PermissionError as e:
        fail(f"GALAXY_TLS_DIR: {e.filename} is not readable by nginx's user (uid {os.getuid()}): "
             "make the files readable to it, e.g. chmod 644 fullchain.pem, chgrp "
             f"{os.getgid()} privkey.pem && chmod 640 privkey.pem")
    except (ssl.SSLError, ValueError) as e:
        fail(f"GALAXY_TLS_DIR: {TLS_FILES[0]} and {TLS_FILES[1]} are not a certificate and its "
             f"matching key ({e})")
    return paths


def human(size):
    for unit, scale in (("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.4g} {unit}"
    return f"{size} bytes"


def greater_than(limit):
    """A regex matching exactly the decimal numbers above `limit` (nginx can't compare numbers)."""
    digits = str(limit)
    longer = rf"[1-9]\d{{{len(digits)},}}"
    same_length = [digits[:i] + f"[{int(d) + 1}-9]"
                   + (rf"\d{{{len(digits) - i - 1}}}" if i + 1 < len(digits) else "")
                   for i, d in enumerate(digits) if d != "9"]
    return rf"^0*(?:{'|'.join([longer, *same_length])})$"


def render(url, max_upload, require_login, tls=None):
    scheme, _, authority = url
    message = (f"This upload is larger than the limit of this Galaxy server, {human(max_upload)} "
               "(GALAXY_MAX_UPLOAD_SIZE).")
    misdirected = (f"This server answers only as {scheme}://{authority} (GALAXY_URL); "
                   "use that address, or set GALAXY_URL to the one you use.")
    return f"""# Generated by nginx-entrypoint from the stack's settings; see nginx.conf.
map $host $galaxy_authority {{
    default "{authority}";
}}
map $host $galaxy_scheme {{
    default "{scheme}";
}}
map $host $misdirected_json {{
    default '{{"err_msg": "{misdirected}", "err_code": 421}}';
}}
# A resumable (TUS) upload announces its total size when it is created: refuse it there.
map $http_upload_length $upload_too_large {{
    default 0;
    "~{greater_than(max_upload)}" 1;
}}
map $host $upload_too_large_json {{
    default '{{"err_msg": "{message}", "err_code": 413}}';
}}
# 1: only a registered user may make this request (see the /_auth/ locations).
map $request_method $login_to_change {{
    GET 0;
    HEAD 0;
    OPTIONS 0;
    default {int(require_login)};
}}
map $request_method $login_always {{
    OPTIONS 0;
    default {int(require_login)};
}}
""" + (tls_settings(*tls, authority) if tls else """# No certificate in GALAXY_TLS_DIR: plain HTTP.
map $host $redirect_to_https {
    default 0;
}
map $host $hsts {
    default "";
}
""")


# Mozilla's "intermediate" configuration (forward secrecy, AEAD ciphers only).
CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
           "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
           "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384")


def tls_settings(certificate, key, authority):
    # HSTS makes browsers rewrite http://host:port to https://host:port: right only when HTTPS is
    # on the standard port, where plain HTTP (port 80) is a different port.
    hsts = "max-age=31536000" if ":" not in authority.rsplit("]", 1)[-1] else ""
    return f"""# HTTPS with the certificate in GALAXY_TLS_DIR (Mozilla's "intermediate" settings).
ssl_certificate {certificate};
ssl_certificate_key {key};
ssl_protocols TLSv1.2 TLSv1.3;
ssl_ciphers {CIPHERS};
ssl_prefer_server_ciphers off;
ssl_session_cache shared:TLS:10m;
ssl_session_timeout 1d;
ssl_session_tickets off;
# On HTTPS answers, when GALAXY_URL uses the standard port 443 (response-headers.conf).
map $scheme $hsts {{
    https "{hsts}";
    default "";
}}
# Plain HTTP is sent to HTTPS, but for the health check.
map "$scheme $uri" $redirect_to_https {{
    "http /nginx-health" 0;
    "~^http " 1;
    default 0;
}}
"""


def listen(tls, default=False):
    suffix = " default_server" if default else ""
    return f"listen 8080{suffix};\n" + (f"listen 8443 ssl http2{suffix};\n" if tls else "")


def wait_for_first_admin():
    with open("/proc/self/mountinfo") as f:
        if DATA_DIR not in {line.split()[4] for line in f}:
            return
    value = os.environ.get("GALAXY_START_WAIT") or "600"
    if not value.isdigit():
        fail(f"GALAXY_START_WAIT={value!r} is malformed; expected seconds, a whole number")
    timeout = int(value)
    deadline = time.monotonic() + timeout
    if not os.path.exists(FIRST_ADMIN_DONE):
        print("nginx-entrypoint: waiting for the admin's account (the first-admin service)",
              file=sys.stderr, flush=True)
    while not os.path.exists(FIRST_ADMIN_DONE):
        if time.monotonic() > deadline:
            fail(f"no admin's account after {timeout} s (GALAXY_START_WAIT): see the first-admin "
                 "service's log")
        time.sleep(2)


def main(argv):
    url = public_url("GALAXY_URL", "http://localhost:8080")
    max_upload = size_in_bytes("GALAXY_MAX_UPLOAD_SIZE", "10g")
    require_login = flag("GALAXY_REQUIRE_LOGIN", "true")
    tls = tls_files(TLS_DIR)
    if tls and url[0] != "https":
        fail(f"GALAXY_URL={os.environ.get('GALAXY_URL')!r} is http, but GALAXY_TLS_DIR holds a "
             "certificate: set GALAXY_URL to the https:// address users reach")
    print("nginx-entrypoint: " + (f"HTTPS on, with {tls[0]}" if tls else
                                  "plain HTTP only: no certificate in GALAXY_TLS_DIR"),
          file=sys.stderr, flush=True)
    wait_for_first_admin()
    os.makedirs(os.path.dirname(SETTINGS), exist_ok=True)
    for path, text in ((SETTINGS, render(url, max_upload, require_login, tls)),
                       (UPLOAD_SIZE, f"client_max_body_size {max_upload};\n"),
                       (LISTEN_DEFAULT, listen(tls, default=True)),
                       (LISTEN_GALAXY, listen(tls))):
        with open(path, "w") as f:
            f.write(text)
    with open(SERVER_NAME, "w") as f:
        f.write(f"server_name {url[1]};\n")
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:] or ["nginx", "-g", "daemon off;"])
