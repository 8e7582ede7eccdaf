"""What nginx takes off Galaxy: the static client, authorised downloads (X-Accel-Redirect),
upload bodies (buffered on disk, resumable, size-limited), compression and caching."""
import base64
import gzip
import os
import re
import socket
import time
import uuid
from urllib.parse import urlsplit

import pytest
import requests
from tusclient.exceptions import TusCommunicationError

from helpers import JOB_WAIT, UPLOAD_LIMIT, log_in, nginx_upstreams, upload, wait_for

LIMIT_BYTES = int(UPLOAD_LIMIT.rstrip("m")) * 1024 * 1024
TUS = "/api/upload/resumable_upload/"

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module", autouse=True)
def one_of_each(stack):
    stack.scale(web=1, runner=1, node=1)


def test_static_client_is_served_by_nginx_from_galaxys_own_build(stack):
    page = requests.get(f"{stack.url}/", timeout=30).text
    assets = re.findall(r'(?:src|href)="(/static/[^"?]+)\?v=\w+"', page)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    marker = f"static-{uuid.uuid4().hex[:8]}"
    for asset in assets + ["/favicon.ico", "/static/style/jquery-ui/smoothness/jquery-ui.css"]:
        r = requests.get(f"{stack.url}{asset}?{marker}", headers={"Accept-Encoding": "gzip"},
                         timeout=30)
        assert r.status_code == 200, asset
        assert int(re.search(r"max-age=(\d+)", r.headers["Cache-Control"]).group(1)) >= 86400
        if asset.endswith((".js", ".css")):
            assert r.headers.get("Content-Encoding") == "gzip", asset
    # None of them reached a web replica: nginx logs no upstream for them.
    assert set(nginx_upstreams(stack, marker)) == {"-"}
    # The copy in nginx is the client of the Galaxy version the web image runs, byte for byte.
    bundle = next(a for a in assets if a.endswith(".bundled.js"))
    from_galaxy = stack.exec("web", f"sh -c 'curl -s http://localhost:8080{bundle} | md5sum'")
    from_nginx = stack.exec("nginx", f"md5sum /usr/share/galaxy{bundle}")
    assert from_galaxy.split()[0] == from_nginx.split()[0]


@pytest.fixture(scope="module")
def dataset(user):
    """A dataset of about 200 KB owned by `user`, made private to them, and its bytes."""
    history = user.histories.create_history("downloads")
    content = "".join(f"line {i}\t{i * i}\n" for i in range(12000))
    ds = upload(user, history["id"], content)
    r = requests.put(f"{user.url}/datasets/{ds['id']}/permissions", timeout=30,
                     json={"action": "make_private"}, headers={"x-api-key": user.key})
    assert r.status_code == 200, r.text
    return ds, content.encode()


def display_url(stack, ds, **params):
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{stack.url}/api/datasets/{ds['id']}/display" + (f"?{query}" if query else "")


def test_download_is_authorised_by_galaxy_and_sent_by_nginx(stack, user, dataset):
    ds, data = dataset
    key = {"x-api-key": user.key}
    # Galaxy itself answers with no bytes, only where the file is...
    direct = stack.exec("web", f"curl -s -D - -o /dev/null -H 'x-api-key: {user.key}' "
                               f"http://localhost:8080/api/datasets/{ds['id']}/display")
    assert re.search(r"(?im)^x-accel-redirect: /_x_accel_redirect/srv/galaxy/objects/\S+", direct)
    assert re.search(r"(?im)^content-length: 0\s*$", direct)
    # ...and through nginx the owner gets the bytes, whole or a range, with the right headers.
    r = requests.get(display_url(stack, ds), headers=key, timeout=60)
    assert r.status_code == 200 and r.content == data
    assert r.headers["Content-Length"] == str(len(data))
    assert r.headers["Content-Type"].startswith("text/plain")
    assert "X-Accel-Redirect" not in r.headers
    # One Accept-Ranges header, as from Galaxy alone (requests joins repeated ones with ", ").
    assert r.headers["Accept-Ranges"] == "bytes"
    r = requests.get(display_url(stack, ds), headers={**key, "Range": "bytes=1000-1999"}, timeout=60)
    assert r.status_code == 206 and r.content == data[1000:2000]
    assert r.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    assert r.headers["Accept-Ranges"] == "bytes"
    r = requests.get(display_url(stack, ds, to_ext="txt"), headers=key, timeout=60)
    assert r.content == data
    assert r.headers["Content-Disposition"].startswith("attachment;")


def test_download_refused_to_other_users_and_to_anonymous(stack, other_user, dataset):
    ds, data = dataset
    for headers in ({"x-api-key": other_user.key}, {}):
        r = requests.get(display_url(stack, ds), headers=headers, timeout=60)
        assert r.status_code == 403
        assert data[:100] not in r.content


def test_clients_cannot_use_the_internal_download_path(stack, user, other_user, dataset):
    ds, data = dataset
    direct = stack.exec("web", f"curl -s -D - -o /dev/null -H 'x-api-key: {user.key}' "
                               f"http://localhost:8080/api/datasets/{ds['id']}/display")
    internal = re.search(r"(?im)^x-accel-redirect: (\S+)", direct).group(1)
    # Asking nginx for the internal path directly, or telling it to use it, gets nothing.
    for path in (internal, "/_x_accel_redirect/srv/galaxy/objects/",
                 "/_x_accel_redirect/etc/passwd",
                 "/_x_accel_redirect/srv/galaxy/objects/../../../etc/passwd",
                 "/_x_accel_redirect/srv/galaxy/objects/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                 # Where Celery tasks leave prepared downloads (Galaxy's short-term storage).
                 "/_x_accel_redirect/srv/galaxy/cache/short_term_web_storage/",
                 "/_x_accel_redirect/srv/galaxy/cache/short_term_web_storage/../../../../etc/passwd",
                 "/_x_accel_redirect/srv/galaxy/cache/short_term_web_storage/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                 "/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd"):
        r = raw_get(stack.url, path)
        assert r.split(b" ", 2)[1] in (b"400", b"403", b"404"), (path, r[:200])
        assert data[:100] not in r and b"root:" not in r, path
    r = requests.get(display_url(stack, ds), timeout=60,
                     headers={"x-api-key": other_user.key, "X-Accel-Redirect": internal})
    assert r.status_code == 403 and data[:100] not in r.content


def raw_get(url, path):
    """GET `path` exactly as written (HTTP libraries normalise `..` away before sending)."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def tus_create(stack, length, headers=None):
    # Galaxy's TUS server wants a file name and type (tus metadata: key, space, base64 value).
    metadata = ",".join(f"{k} {base64.b64encode(v).decode()}" for k, v in
                        (("filename", b"test.bin"), ("filetype", b"application/octet-stream")))
    return requests.post(f"{stack.url}{TUS}", timeout=30, headers={
        "Tus-Resumable": "1.0.0", "Upload-Length": str(length), "Upload-Metadata": metadata,
        **(headers or {})})


def tus_patch(location, offset, body, headers):
    return requests.patch(location, data=body, timeout=120, headers={
        "Tus-Resumable": "1.0.0", "Upload-Offset": str(offset),
        "Content-Type": "application/offset+octet-stream", **headers})


def test_only_registered_users_may_start_an_upload(stack, admin, user):
    r = tus_create(stack, 10)
    assert r.status_code == 401 and "Log in" in r.json()["err_msg"]
    assert tus_create(stack, 10, {"x-api-key": "not-a-key"}).status_code == 401
    assert tus_create(stack, 10, {"x-api-key": user.key}).status_code == 201
    # A browser's login session (Galaxy's cookie, no API key) is a registered user too.
    name = f"c{uuid.uuid4().hex[:8]}"
    admin.users.create_local_user(name, f"{name}@example.org", "cookie-password")
    session = log_in(stack.url, f"{name}@example.org", "cookie-password")
    r = session.post(f"{stack.url}{TUS}", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "10"},
                     timeout=30)
    assert r.status_code == 201, r.text


def test_interrupted_upload_resumes_where_it_stopped(stack, user):
    data = os.urandom(3 * 256 * 1024 + 1234)
    key = {"x-api-key": user.key}
    created = tus_create(stack, len(data), key)
    location = created.headers["Location"]
    chunk = 256 * 1024
    assert tus_patch(location, 0, data[:chunk], key).status_code == 204
    # The connection drops in the middle of the second chunk: nginx never passes the partial body
    # on, so Galaxy still holds exactly the first chunk.
    path = urlsplit(location).path
    host, port = urlsplit(stack.url).hostname, urlsplit(stack.url).port
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall((f"PATCH {path} HTTP/1.1\r\nHost: {host}\r\nTus-Resumable: 1.0.0\r\n"
                   f"Upload-Offset: {chunk}\r\nContent-Type: application/offset+octet-stream\r\n"
                   f"x-api-key: {user.key}\r\nContent-Length: {chunk}\r\n\r\n").encode())
        s.sendall(data[chunk:chunk + chunk // 2])
    offset = int(requests.head(location, headers={"Tus-Resumable": "1.0.0", **key},
                               timeout=30).headers["Upload-Offset"])
    assert offset == chunk
    while offset < len(data):
        assert tus_patch(location, offset, data[offset:offset + chunk], key).status_code == 204
        offset = min(offset + chunk, len(data))
    history = user.histories.create_history("resumed")
    out = user.tools.post_to_fetch("resumed.bin", history["id"], location.rsplit("/", 1)[1],
                                   file_type="binary")
    ds = user.datasets.wait_for_dataset(out["outputs"][0]["id"], maxwait=JOB_WAIT)
    assert user.datasets.download_dataset(ds["id"]) == data


def test_oversize_uploads_get_413_and_leave_nothing_behind(stack, user, tmp_path):
    history = user.histories.create_history("too big")
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(LIMIT_BYTES + 1)
    # The Galaxy client's way (TUS, as BioBlend does it): refused when the upload is created.
    with pytest.raises(TusCommunicationError) as refused:
        user.tools.upload_file(str(big), history["id"])
    assert refused.value.status_code == 413
    r = tus_create(stack, LIMIT_BYTES + 1, {"x-api-key": user.key})
    assert r.status_code == 413 and "GALAXY_MAX_UPLOAD_SIZE" in r.json()["err_msg"]
    # An old-style form upload, the whole file in one body: refused by nginx before Galaxy.
    with open(big, "rb") as f:
        r = requests.post(f"{stack.url}/api/tools", timeout=120, headers={"x-api-key": user.key},
                          data={"tool_id": "upload1", "history_id": history["id"]},
                          files={"files_0|file_data": ("big.bin", f)})
    assert r.status_code == 413 and "GALAXY_MAX_UPLOAD_SIZE" in r.json()["err_msg"]
    # A TUS upload that doesn't announce its size is stopped by Galaxy at the same limit.
    r = requests.post(f"{stack.url}{TUS}", timeout=30, headers={
        "Tus-Resumable": "1.0.0", "Upload-Defer-Length": "1", "x-api-key": user.key})
    location, offset, chunk = r.headers["Location"], 0, 16 * 1024 * 1024
    statuses = []
    while offset <= LIMIT_BYTES and not statuses[-1:] == [413]:
        statuses.append(tus_patch(location, offset, b"\0" * chunk, {"x-api-key": user.key}).status_code)
        offset += chunk
    assert statuses[-1] == 413 and set(statuses[:-1]) == {204}
    assert user.histories.show_history(history["id"], contents=True) == []


def connections_from_nginx(stack):
    """Per web replica: how many TCP connections nginx has open to its port 8080 right now."""
    nginx_ips = stack.addresses("nginx", "front")
    counts = []
    for index in range(1, stack.replicas("web") + 1):
        table = stack.exec("web", "cat /proc/net/tcp", index=index).splitlines()[1:]
        # local address (hex ip:port), remote address, state (01: established)
        rows = [line.split()[1:4] for line in table]
        counts.append(sum(1 for local, remote, state in rows
                          if local.endswith(":1F90") and state == "01"
                          and hex_ip(remote) in nginx_ips))
    return counts


def hex_ip(address):
    return socket.inet_ntoa(bytes.fromhex(address.split(":")[0])[::-1])


def test_request_body_reaches_galaxy_only_once_whole(stack, user):
    """A slow client's upload is buffered by nginx (on its volume); no replica's worker is held."""
    key = {"x-api-key": user.key}
    body = os.urandom(1024 * 1024)
    location = tus_create(stack, len(body), key).headers["Location"]
    path = urlsplit(location).path
    host, port = urlsplit(stack.url).hostname, urlsplit(stack.url).port
    with socket.create_connection((host, port), timeout=60) as s:
        s.sendall((f"PATCH {path} HTTP/1.1\r\nHost: {host}:{port}\r\nTus-Resumable: 1.0.0\r\n"
                   f"Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
                   f"x-api-key: {user.key}\r\nContent-Length: {len(body)}\r\n"
                   f"Connection: close\r\n\r\n").encode())
        s.sendall(body[:len(body) // 2])
        # Half the body is in: nginx holds it in a file on its volume, and no replica has the
        # request yet (were it streamed, nginx would have connected to a replica at once).
        seen = {}

        def buffered_or_passed_on():
            # nginx's temporary body file is unlinked at once; its open descriptor shows it.
            seen["buffered"] = int(stack.exec("nginx", "sh -c 'ls -l /proc/[0-9]*/fd 2>/dev/null "
                                                       "| grep -c /var/cache/nginx/client_body/ "
                                                       "|| true'"))
            seen["replicas"] = connections_from_nginx(stack)
            return seen["buffered"] or any(seen["replicas"])
        wait_for(buffered_or_passed_on, 30, "nginx taking the body", pause=0.5)
        assert not any(seen["replicas"]), \
            f"web replica(s) {seen['replicas']} got the request before its body was whole"
        s.sendall(body[len(body) // 2:])
        answer = s.makefile("rb").readline()
    assert answer.split()[1] == b"204", answer
    head = requests.head(location, headers={"Tus-Resumable": "1.0.0", **key}, timeout=30)
    assert head.headers["Upload-Offset"] == str(len(body))


def test_api_json_is_compressed_and_shared_answers_cached(stack, user):
    url = f"{stack.url}/api/datatypes/types_and_mapping"
    first = requests.get(url, headers={"Accept-Encoding": "gzip"}, stream=True, timeout=30)
    body = first.raw.read()
    assert first.headers["Content-Encoding"] == "gzip"
    assert len(body) * 4 < len(gzip.decompress(body))
    second = requests.get(url, timeout=30)
    assert second.headers["X-Cache-Status"] == "HIT"
    # A user's own data is never cached.
    r = requests.get(f"{stack.url}/api/users/current", headers={"x-api-key": user.key}, timeout=30)
    assert "X-Cache-Status" not in r.headers


def test_event_stream_is_passed_through_unbuffered(stack, user):
    # Galaxy's stream never ends; it sends a keepalive comment after 30 s without events. That
    # first event must reach the client while the stream is open: nginx neither buffers nor
    # compresses it (gzip would hold back a few bytes until the end).
    started = time.monotonic()
    with requests.get(f"{stack.url}/api/events/stream", headers={"x-api-key": user.key,
                      "Accept-Encoding": "gzip"}, stream=True, timeout=45) as r:
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert "Content-Encoding" not in r.headers
        first = next(r.iter_lines())
    assert first.startswith(b":") or first.startswith(b"event:"), first
    assert time.monotonic() - started < 45
