"""The front door, tried as a stranger would: without a login nothing can be stored or changed
(GALAXY_REQUIRE_LOGIN, on by default), large bodies go only where uploads go, and the admin's
account is the operator's from the first start."""
import base64
import http.client
import io
import json
import subprocess
import uuid
from collections import Counter
from urllib.parse import urlsplit

import pytest
import requests
from bioblend.galaxy import GalaxyInstance

from compose_stack import free_port
from helpers import docker, log_in, upload, wait_for

pytestmark = pytest.mark.timeout(300)
TUS = "/api/upload/resumable_upload/"
# nginx's limit for a request body but a file upload, and for a document Galaxy reads whole
# (a workflow; nginx/nginx.conf).
SMALL_BODY_LIMIT = 1024 * 1024
DOCUMENT_LIMIT = 8 * 1024 * 1024


@pytest.fixture(scope="module", autouse=True)
def one_of_each(stack):
    stack.scale(web=1, runner=1, node=1)


@pytest.fixture
def stranger(stack):
    """A browser that isn't logged in: it holds the anonymous session Galaxy gave it."""
    session = requests.Session()
    session.get(f"{stack.url}/login/start", timeout=30)
    assert session.cookies.get("galaxysession"), "Galaxy gave the stranger no session"
    return session


def test_the_session_cookie_stays_on_galaxys_own_site(stack):
    r = requests.get(f"{stack.url}/login/start", timeout=30)
    cookie = next(c for c in r.raw.headers.getlist("Set-Cookie") if c.startswith("galaxysession="))
    assert "SameSite=Lax" in cookie and "HttpOnly" in cookie, cookie


def stored_files(stack):
    """Every file in the places an upload could land: datasets, uploads, Galaxy's tmp."""
    return set(stack.exec("web", "find /srv/galaxy/objects /srv/galaxy/tus /srv/galaxy/tmp "
                                 "-type f").split())


def test_strangers_upload_nothing_by_any_path(stack, user, stranger):
    history = user.histories.create_history("the stranger's target")["id"]
    dataset = upload(user, history, "chr1\t1\t2\n", file_type="bed")
    files = {"files_0|file_data": ("data.txt", io.BytesIO(b"stranger's data\n"))}
    fetch_targets = json.dumps([{"destination": {"type": "hdas"}, "items": [
        {"src": "files", "ext": "txt"}]}])
    # An upload of a registered user's, for the stranger to resume, read or cancel.
    theirs = requests.post(f"{stack.url}{TUS}", timeout=30, headers={
        "Tus-Resumable": "1.0.0", "Upload-Length": "10", "x-api-key": user.key,
        "Upload-Metadata": ",".join(f"{k} {base64.b64encode(v).decode()}" for k, v in (
            ("filename", b"theirs.txt"), ("filetype", b"text/plain")))})
    assert theirs.status_code == 201, theirs.text
    upload_path = urlsplit(theirs.headers["Location"]).path
    before = stored_files(stack)
    tus = {"Tus-Resumable": "1.0.0"}
    attempts = {
        "fetch (multipart)": stranger.post(f"{stack.url}/api/tools/fetch", files=files, timeout=30,
                                           data={"history_id": history, "targets": fetch_targets}),
        "fetch (JSON, pasted)": stranger.post(f"{stack.url}/api/tools/fetch", timeout=30, json={
            "history_id": history, "targets": [{"destination": {"type": "hdas"}, "items": [
                {"src": "pasted", "paste_content": "stranger's data\n", "ext": "txt"}]}]}),
        "upload1": stranger.post(f"{stack.url}/api/tools", files=files, timeout=30, data={
            "tool_id": "upload1", "history_id": history,
            "inputs": json.dumps({"files_0|type": "upload_dataset"})}),
        "new history": stranger.post(f"{stack.url}/api/histories", json={"name": "mine"},
                                     timeout=30),
        "new history (//api)": stranger.post(f"{stack.url}//api/histories", json={}, timeout=30),
        "fetch (trailing /)": stranger.post(f"{stack.url}/api/tools/fetch/", json={}, timeout=30),
        "rename a history": stranger.put(f"{stack.url}/api/histories/{history}", timeout=30,
                                         json={"name": "renamed"}),
        "copy a dataset in": stranger.post(f"{stack.url}/api/histories/{history}/contents",
                                           json={"source": "hda", "content": dataset["id"]},
                                           timeout=30),
        "conversion (a GET that runs a job)": stranger.get(
            f"{stack.url}/api/datasets/{dataset['id']}/converted/interval", timeout=30),
        "TUS create": stranger.post(f"{stack.url}{TUS}", timeout=30,
                                    headers={**tus, "Upload-Length": "10"}),
        "TUS PATCH": stranger.patch(f"{stack.url}{upload_path}", data=b"0123456789", timeout=30,
                                    headers={**tus, "Upload-Offset": "0",
                                             "Content-Type": "application/offset+octet-stream"}),
        "TUS HEAD": stranger.head(f"{stack.url}{upload_path}", headers=tus, timeout=30),
        "TUS DELETE": stranger.delete(f"{stack.url}{upload_path}", headers=tus, timeout=30),
    }
    answers = {name: r.status_code for name, r in attempts.items()}
    assert answers == {name: 401 for name in attempts}, {n: r.text[:200] for n, r in attempts.items()}
    assert all("Log in" in r.json()["err_msg"] for name, r in attempts.items() if name != "TUS HEAD")
    assert stored_files(stack) - before == set()
    assert user.histories.show_history(history)["name"] == "the stranger's target"
    # The registered user's upload is still there, untouched.
    head = requests.head(f"{stack.url}{upload_path}", timeout=30,
                         headers={**tus, "x-api-key": user.key})
    assert head.status_code == 200 and head.headers["Upload-Offset"] == "0"


def test_registered_users_change_with_a_key_in_header_or_query(stack, user):
    for how in ({"headers": {"x-api-key": user.key}}, {"params": {"key": user.key}}):
        r = requests.post(f"{stack.url}/api/histories", json={"name": "by key"}, timeout=30, **how)
        assert r.status_code == 200 and r.json()["name"] == "by key", (how.keys(), r.text)


def test_resumable_uploads_cannot_be_concatenated(stack, user):
    """Concatenation would copy one finished upload many times over, past the size limit."""
    r = requests.post(f"{stack.url}{TUS}", timeout=30, headers={
        "Tus-Resumable": "1.0.0", "x-api-key": user.key,
        "Upload-Concat": "final;" + " ".join([f"{stack.url}{TUS}0123"] * 50)})
    assert r.status_code == 403 and "Upload-Concat" in r.json()["err_msg"], r.text


def test_strangers_read_only_what_galaxy_leaves_open(stack, stranger):
    assert stranger.get(f"{stack.url}/api/version", timeout=30).json()["version_major"] == "26.1"
    # Galaxy's own require_login: pages and Galaxy's older API routes send a stranger's session
    # to the login page.
    for path in ("/histories/list", "/api/tools?in_panel=false"):
        r = stranger.get(f"{stack.url}{path}", timeout=30, allow_redirects=False)
        assert r.status_code == 302 and "/login" in r.headers["Location"], (path, r.status_code)


def test_remote_runner_file_api_is_not_served(stack, user):
    """/api/job_files serves remote job runners (Pulsar), which this stack has none of; its TUS
    store checks no user. Refused for everyone."""
    key = {"x-api-key": user.key}
    for method, path in (("POST", "/api/job_files/resumable_upload/"),
                         ("POST", "/api/jobs/f2db41e1fa331b3e/files"),
                         ("GET", "/api/jobs/f2db41e1fa331b3e/files?path=x&job_key=y")):
        r = requests.request(method, f"{stack.url}{path}", headers={**key, "Tus-Resumable": "1.0.0",
                                                                     "Upload-Length": "10"},
                             timeout=30)
        assert r.status_code == 404 and "remote job runners" in r.json()["err_msg"], (path, r.text)


def announce(stack, method, path, length, headers=(), content_type="application/json"):
    """Send only a request's head, announcing a body of `length` bytes: nginx's answer."""
    url = urlsplit(stack.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        connection.putrequest(method, path)
        for name, value in [("Content-Length", str(length)), ("Content-Type", content_type),
                            *headers]:
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_a_large_body_is_refused_before_it_is_sent_except_where_uploads_go(stack, user):
    """200 MB announced to a URL that takes no upload: 413 at once, no byte stored."""
    key = [("x-api-key", user.key)]
    for path in ("/api/version", "/api/histories/f2db41e1fa331b3e", "/user/login"):
        status, body = announce(stack, "POST", path, 200 * 1024 * 1024, key)
        assert status == 413, (path, status, body)
        assert "upload" in json.loads(body)["err_msg"], body


# Galaxy 26.1's routes that take files (multipart forms), and the method they take them with.
FILE_ROUTES = [("POST", "/api/tools/fetch"), ("POST", "/api/tools"), ("POST", "/api/histories"),
               ("POST", "/api/libraries/datasets"), ("POST", "/api/libraries/f2db41e1fa331b3e/contents"),
               ("POST", "/ga4gh/wes/v1/runs")]
# Where Galaxy reads a whole document, in any form (workflows; archives as JSON or by URL).
DOCUMENT_ROUTES = [("POST", "/api/workflows"), ("POST", "/api/workflows/upload"),
                   ("PUT", "/api/workflows/f2db41e1fa331b3e"), ("POST", "/api/histories/from_store"),
                   ("POST", "/api/histories/from_store_async"),
                   ("POST", "/api/histories/f2db41e1fa331b3e/contents_from_store"),
                   ("POST", "/api/invocations/from_store"), ("POST", "/api/libraries/from_store")]


@pytest.mark.parametrize("method, path", FILE_ROUTES)
def test_file_routes_take_large_files_but_no_large_json(stack, user, method, path):
    """A file over the small limit reaches Galaxy on every route that takes files: Galaxy
    answers (it finds no valid upload in it), not nginx's 413. A JSON document over 1 MB gets
    413 before it is sent, also when it claims to be a form in other letters (Galaxy's older
    routes would parse it as JSON): no web worker parses it."""
    files = {"archive_file": ("junk.bin", b"x" * (SMALL_BODY_LIMIT + 1024))}
    r = requests.request(method, f"{stack.url}{path}", files=files, timeout=60,
                         headers={"x-api-key": user.key})
    # Galaxy's answer (some routes need Celery, which this stack doesn't run yet: 500), not nginx's.
    assert r.status_code != 413 and "over 1 MB" not in r.text, (r.status_code, r.text[:300])
    for content_type in ("application/json", "Multipart/form-data; boundary=x"):
        status, body = announce(stack, method, path, SMALL_BODY_LIMIT + 1024,
                                [("x-api-key", user.key)], content_type)
        assert status == 413 and "over 1 MB" in json.loads(body)["err_msg"], (content_type, body)


@pytest.mark.parametrize("method, path", DOCUMENT_ROUTES)
def test_whole_documents_are_8_mb_at_most_in_any_form(stack, user, method, path):
    for content_type in ("application/json", "multipart/form-data; boundary=x"):
        status, body = announce(stack, method, path, DOCUMENT_LIMIT + 1024,
                                [("x-api-key", user.key)], content_type)
        assert status == 413 and "over 8 MB" in json.loads(body)["err_msg"], (content_type, body)


def test_a_workflow_up_to_its_limit_is_taken_as_json(stack, user):
    """The editor saves a whole workflow as JSON: more than the small limit reaches Galaxy."""
    body = json.dumps({"workflow": {"a_galaxy_workflow": "true", "format-version": "0.1",
                                    "name": "big", "annotation": "", "steps": {},
                                    "report": {"markdown": "x" * (2 * SMALL_BODY_LIMIT)}}})
    r = requests.post(f"{stack.url}/api/workflows", data=body, timeout=60,
                      headers={"x-api-key": user.key, "Content-Type": "application/json"})
    assert r.status_code == 200 and r.json()["name"] == "big", (r.status_code, r.text[:300])


def test_nobody_can_claim_the_admin_account(stack, admin):
    """The stack made the admin's account before nginx let anyone in: registering its address
    fails, and the operator logs in with the generated password."""
    email = stack.exec("web", "printenv GALAXY_ADMIN_EMAIL").strip()
    session = requests.Session()
    session.get(f"{stack.url}/login/start", timeout=30)
    token = session.get(f"{stack.url}/context", timeout=30).json()["session_csrf_token"]
    password = uuid.uuid4().hex
    r = session.post(f"{stack.url}/user/create", timeout=30, json={
        "email": email, "username": f"x{uuid.uuid4().hex[:8]}", "password": password,
        "confirm": password, "session_csrf_token": token})
    assert r.status_code == 400 and "exists" in r.json()["err_msg"], r.text
    password = stack.exec("web", "cat /var/lib/galaxy-secrets/admin_password").strip()
    operator = log_in(stack.url, email, password)
    me = operator.get(f"{stack.url}/api/users/current", timeout=30).json()
    assert me["email"] == email and me["is_admin"] is True


def test_password_guessing_is_slowed_down(stack):
    """40 password attempts at once from one address, 20 logins and 20 API-key requests
    (baseauth): about 20 (the burst) reach Galaxy, the rest get 429. Sent from a container of
    their own on the front network, so the suite's own logins keep their allowance."""
    host = urlsplit(stack.url).netloc
    each = ["-s", "-o", "/dev/null", "-w", "%{http_code}\n", "-H", f"Host: {host}"]
    out = docker(["run", "--rm", "--network", front_network(stack), "--entrypoint", "curl",
                  stack.compose("images -q nginx").split()[0], "--parallel", "--parallel-max", "10",
                  *each, "-X", "POST", "-H", "Content-Type: application/json",
                  "-d", '{"login": "nobody@example.org", "password": "guess"}',
                  "http://nginx:8080/user/login?attempt=[1-20]", "--next",
                  *each, "-u", "nobody@example.org:guess",
                  "http://nginx:8080/api/authenticate/baseauth?attempt=[1-20]"])
    statuses = Counter(out.split())
    # Galaxy's own refusals of a wrong password, or ours: 20 or so of Galaxy's in all.
    assert len(out.split()) == 40 and 20 <= 40 - statuses["429"] <= 24, statuses


STANDARD_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}


def headers_once(response, expected):
    return {name: response.raw.headers.getlist(name) for name in expected} == \
        {name: [value] for name, value in expected.items()}


def test_standard_headers_come_once_on_every_kind_of_answer(stack, admin):
    name = f"h{uuid.uuid4().hex[:8]}"
    account = admin.users.create_local_user(name, f"{name}@example.org", "headers-password")
    browser = log_in(stack.url, f"{name}@example.org", "headers-password")
    owner = GalaxyInstance(stack.url, key=admin.users.get_or_create_user_apikey(account["id"]))
    history = owner.histories.create_history("headers")["id"]
    dataset = upload(owner, history, "a dataset\n")
    answers = {
        "page": requests.get(f"{stack.url}/login/start", timeout=30),
        "static": requests.get(f"{stack.url}/static/favicon.svg", timeout=30),
        "api": requests.get(f"{stack.url}/api/version", timeout=30),
        "cached api": requests.get(f"{stack.url}/api/licenses", timeout=30),
        "download (X-Accel)": browser.get(f"{stack.url}/api/datasets/{dataset['id']}/display",
                                          timeout=30),
        "display (Galaxy's nosniff)": browser.get(
            f"{stack.url}/datasets/{dataset['id']}/display?preview=True", timeout=30,
            allow_redirects=False),
        "refused": requests.post(f"{stack.url}/api/histories", json={}, timeout=30),
    }
    assert {name: r.status_code for name, r in answers.items()} == {
        name: 401 if name == "refused" else 200 for name in answers}
    assert "a dataset" in answers["display (Galaxy's nosniff)"].text
    assert [name for name, r in answers.items() if not headers_once(r, STANDARD_HEADERS)] == []
    # Plain HTTP: no HSTS.
    assert [name for name, r in answers.items() if "Strict-Transport-Security" in r.headers] == []


def make_certificate(directory, host="localhost"):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={host}", "-addext", f"subjectAltName=DNS:{host}",
                    "-keyout", str(directory / "privkey.pem"), "-out", str(directory / "fullchain.pem")],
                   check=True, capture_output=True)
    # nginx runs as uid 1450.
    directory.chmod(0o755)
    for name in ("privkey.pem", "fullchain.pem"):
        (directory / name).chmod(0o644)


def front_network(stack):
    nginx = stack.compose("ps -q nginx").split()[0]
    return next(name for name in json.loads(docker(["inspect", nginx]))[0]["NetworkSettings"]["Networks"]
                if name.endswith("_front"))


def run_nginx(stack, tls_dir, *extra):
    """The stack's nginx image with GALAXY_TLS_DIR, in front of the same web replicas, as
    https://localhost (the standard port, as a site would have it)."""
    image = stack.compose("images -q nginx").split()[0]
    return ["run", "--network", front_network(stack), "-e", "GALAXY_URL=https://localhost",
            "-e", "GALAXY_MAX_UPLOAD_SIZE=64m", "-v", f"{tls_dir}:/etc/nginx/tls:ro", *extra, image]


@pytest.fixture(scope="module")
def https_site(stack, tmp_path_factory):
    """A second nginx of the stack's image, serving HTTPS with a certificate made here."""
    tls_dir = tmp_path_factory.mktemp("tls")
    make_certificate(tls_dir)
    http_port, https_port = free_port(), free_port()
    name = f"sgtls{uuid.uuid4().hex[:8]}"
    docker(run_nginx(stack, tls_dir, "-d", "--name", name,
                     "-p", f"127.0.0.1:{http_port}:8080", "-p", f"127.0.0.1:{https_port}:8443"))
    url = f"https://localhost:{https_port}"
    verify = str(tls_dir / "fullchain.pem")
    try:
        wait_for(lambda: requests.get(f"{url}/api/version", verify=verify, timeout=5).ok, 60,
                 "nginx with HTTPS")
        yield {"url": url, "verify": verify, "http": f"http://localhost:{http_port}",
               "public": "https://localhost"}
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_https_serves_galaxy_with_hsts_and_secure_cookies(https_site):
    url, verify = https_site["url"], https_site["verify"]
    r = requests.get(f"{url}/api/version", verify=verify, timeout=30)
    assert r.json()["version_major"] == "26.1"
    assert headers_once(r, {**STANDARD_HEADERS, "Strict-Transport-Security": "max-age=31536000"})
    page = requests.get(f"{url}/login/start", verify=verify, timeout=30)
    cookie = next(c for c in page.raw.headers.getlist("Set-Cookie") if c.startswith("galaxysession="))
    assert "Secure" in cookie and "SameSite=Lax" in cookie, cookie
    # Plain HTTP goes to HTTPS, but for the health check.
    r = requests.get(f"{https_site['http']}/api/version?x=1", timeout=30, allow_redirects=False)
    assert r.status_code == 301 and r.headers["Location"] == f"{https_site['public']}/api/version?x=1"
    assert requests.get(f"{https_site['http']}/nginx-health", timeout=30).status_code == 200


def test_only_nginx_publishes_and_only_its_two_ports(stack):
    nginx = json.loads(docker(["inspect", stack.compose("ps -q nginx").split()[0]]))[0]
    assert set(nginx["HostConfig"]["PortBindings"]) == {"8080/tcp", "8443/tcp"}
    assert stack.published_services() == {"nginx"}


@pytest.mark.parametrize("case", ["key of another certificate", "key missing", "http URL"])
def test_a_bad_certificate_folder_stops_nginx_with_a_clear_message(stack, tmp_path, case):
    make_certificate(tmp_path)
    extra = []
    if case == "key of another certificate":
        other = tmp_path / "other"
        other.mkdir()
        make_certificate(other)
        (other / "privkey.pem").replace(tmp_path / "privkey.pem")
    elif case == "key missing":
        (tmp_path / "privkey.pem").unlink()
    else:
        extra = ["-e", "GALAXY_URL=http://localhost:8080"]
    # Stops at once: a container that started nginx would run until the timeout.
    run = subprocess.run(["docker", *run_nginx(stack, tmp_path, "--rm", *extra)],
                         capture_output=True, text=True, timeout=60)
    setting = "GALAXY_URL" if case == "http URL" else "GALAXY_TLS_DIR"
    assert run.returncode == 2 and setting in run.stderr, (run.returncode, run.stderr)
