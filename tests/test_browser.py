"""Galaxy's own client, driven through nginx by a real browser (Debian's headless chromium and
chromium-driver, through Selenium): it loads with no error logged and no static file missing, a
stranger registers and logs in through its forms, and a file uploaded through its upload dialog
(the resumable TUS path) turns ok in the history panel and shows its content.

Selectors are those of Galaxy 26.1.1's client and its own Selenium tests (galaxy-navigation's
navigation.yml). A failing test leaves a screenshot in test-reports/browser/<test>.png.
"""
import json
import re
import shutil
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

# Beside the run's other reports; git ignores the folder.
SHOTS = Path(__file__).resolve().parent.parent / "test-reports" / "browser"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
TUS = "/api/upload/resumable_upload/"
# What nginx serves itself: the built client and Galaxy's static files (nginx/nginx.conf).
STATIC = ("/static/", "/images/", "/favicon.ico", "/robots.txt")
# SEVERE browser console entries Galaxy's client makes in normal use: a regular expression each,
# with why it is allowed. Chrome logs every answer >= 400 to the page as SEVERE ("Failed to load
# resource: the server responded with a status of ..."), so a refused API call shows here too.
# Add one only with the reason it is Galaxy's normal behaviour, not the stack's.
ALLOWED_SEVERE = {
    # The client asks for the user's own (unprivileged) tools on every page; Galaxy answers 403
    # "User is not allowed to run unprivileged tools" to users without that role (everyone, by
    # default): the same from Galaxy alone (checked against the web container directly).
    r"/api/unprivileged_tools - Failed to load resource: the server responded with a status of 403":
        "Galaxy's answer to a user without the unprivileged-tools role",
}
LOGGED_IN = ".loggedin-only"  # the masthead's user menu, there only for a logged-in user


class Browser:
    """Headless Chromium, and what its pages logged: console entries and each request's outcome."""

    def __init__(self, url):
        options = Options()
        options.binary_location = CHROMIUM
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--no-proxy-server", "--window-size=1600,1000"):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        # The driver named: Selenium Manager never looks for (or downloads) one.
        self.driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        self.url, self.console, self.requests = url, [], {}

    def get(self, path):
        self.driver.get(self.url + path)

    def wait(self, css, timeout=60, condition=EC.visibility_of_element_located):
        return WebDriverWait(self.driver, timeout).until(condition((By.CSS_SELECTOR, css)),
                                                         f"{css} not there after {timeout}s")

    def click(self, css, timeout=60):
        self.wait(css, timeout, EC.element_to_be_clickable).click()

    def settle(self, timeout=15):
        """Until the page has asked for nothing new for a second (what loads late is checked too)."""
        count = "return performance.getEntriesByType('resource').length"
        seen = [-1]

        def quiet(driver):
            now = driver.execute_script(count)
            done, seen[0] = now == seen[0], now
            return done
        WebDriverWait(self.driver, timeout, poll_frequency=1).until(quiet, "the page still loading")

    def current_user(self):
        """/api/users/current as the page's own session sees it."""
        return self.driver.execute_async_script(
            "fetch('/api/users/current').then(r => r.json()).then(arguments[arguments.length - 1])")

    def logs(self):
        """Adds what Chrome logged since the last call (it hands each entry out once)."""
        self.console += self.driver.get_log("browser")
        for entry in self.driver.get_log("performance"):
            event = json.loads(entry["message"])["message"]
            params = event.get("params", {})
            if "requestId" not in params:
                continue
            request = self.requests.setdefault(params["requestId"], {})
            if event["method"] == "Network.requestWillBeSent":  # again, with the new URL, on a redirect
                request.update(url=params["request"]["url"], method=params["request"]["method"])
            elif event["method"] == "Network.responseReceived":
                request["status"] = params["response"]["status"]
            elif event["method"] == "Network.loadingFailed" and not params.get("canceled"):
                # Not a load the page itself gave up on (a navigation cancels what is under way).
                request["failed"] = params.get("blockedReason") or params["errorText"]
        return self

    def answers(self, method, path):
        """The statuses of the page's `method` requests to paths starting with `path`."""
        return [r.get("status") for r in self.logs().requests.values()
                if r.get("method") == method and urlsplit(r.get("url", "")).path.startswith(path)]

    def problems(self):
        """SEVERE console entries outside ALLOWED_SEVERE, and static files that didn't load."""
        self.logs()
        severe = [e["message"] for e in self.console if e["level"] == "SEVERE"
                  and not any(re.search(pattern, e["message"]) for pattern in ALLOWED_SEVERE)]
        static = [f"{r['url']}: {r.get('failed') or r.get('status')}" for r in self.requests.values()
                  if urlsplit(r.get("url", "")).path.startswith(STATIC)
                  and (r.get("failed") or r.get("status", 0) >= 400)]
        return severe + static

    def failure_report(self, name):
        """What a failing test's report carries (conftest calls it): a screenshot of the page as it
        was, saved as test-reports/browser/<name>.png, its address and the console's warnings."""
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / (re.sub(r"[^\w.-]", "_", name) + ".png")
        self.driver.save_screenshot(str(path))
        console = "\n".join(f"{e['level']} {e['message']}" for e in self.logs().console
                            if e["level"] in ("WARNING", "SEVERE"))
        return f"screenshot: {path}\npage: {self.driver.current_url}\n{console}"


@pytest.fixture(scope="module", autouse=True)
def one_of_each(stack):
    stack.scale(web=1, runner=1, node=1)


@pytest.fixture
def browser(stack):
    assert CHROMIUM and CHROMEDRIVER, "the browser tests need Debian's chromium and chromium-driver"
    b = Browser(stack.url)
    yield b
    b.driver.quit()


def log_in_through_form(browser, email, password):
    """Through the login form, where Galaxy sends a stranger (GALAXY_REQUIRE_LOGIN)."""
    browser.wait("form#login")
    browser.driver.find_element(By.ID, "login-form-name").send_keys(email)
    browser.driver.find_element(By.ID, "login-form-password").send_keys(password)
    browser.click("form#login button[name=login]")
    browser.wait(LOGGED_IN)


# 300 s: run alone, the first test's time includes starting the stack (conftest).
@pytest.mark.timeout(300)
def test_the_client_loads_through_nginx_with_nothing_failing(browser):
    """A stranger's first page is the client's login form; its bundles came from nginx, no static
    file failed and nothing was logged as an error."""
    browser.get("/")
    browser.wait("form#login")
    browser.settle()
    assert urlsplit(browser.driver.current_url).path == "/login/start"
    assert set(browser.answers("GET", "/static/dist/analysis.bundled.js")) == {200}
    assert set(browser.answers("GET", "/static/dist/libs.bundled.js")) == {200}
    assert browser.problems() == []


@pytest.mark.timeout(120)
def test_a_stranger_registers_and_logs_in_through_the_forms(browser):
    """Register here → the register form makes the account and logs its owner in; in a new
    session the login form logs them in again."""
    name = f"b{uuid.uuid4().hex[:10]}"
    email, password = f"{name}@example.org", uuid.uuid4().hex
    browser.get("/")
    browser.click("#register-toggle")
    browser.wait("form#registration")
    for field, value in (("email", email), ("password", password), ("confirm", password),
                         ("username", name)):
        browser.driver.find_element(By.ID, f"register-form-{field}").send_keys(value)
    browser.click("form#registration button[name=create]")
    browser.wait(LOGGED_IN)
    assert browser.current_user()["email"] == email
    browser.driver.delete_all_cookies()  # a new session: nobody logged in
    browser.get("/")
    browser.wait("form#login")
    assert "email" not in browser.current_user()
    log_in_through_form(browser, email, password)
    assert browser.current_user()["username"] == name
    assert browser.problems() == []


@pytest.mark.timeout(240)
def test_an_upload_through_the_dialog_turns_ok_and_shows_its_content(admin, browser, tmp_path):
    """Upload → Choose local file → Start: the client sends the file by the resumable (TUS) path
    through nginx, the dataset turns ok in the history panel, and its eye icon shows the text."""
    name, password = f"b{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    admin.users.create_local_user(name, f"{name}@example.org", password)
    content = f"uploaded through the browser {uuid.uuid4().hex}"
    upload = tmp_path / "browser-upload.txt"
    upload.write_text(content + "\n")
    browser.get("/")
    log_in_through_form(browser, f"{name}@example.org", password)
    browser.click("#activity-upload")
    browser.click("#regular #btn-local")
    browser.driver.find_element(By.CSS_SELECTOR, "#regular input#upload-file").send_keys(str(upload))
    browser.click("#regular #btn-start:not(.g-disabled)")  # enabled once the file is queued
    browser.click("#regular #btn-close")  # the upload goes on without the dialog
    # The new user's first history: the upload is its item 1.
    item = '#current-history-panel .content-item[data-hid="1"]'
    assert upload.name in browser.wait(f'{item}[data-state="ok"]', 180).text
    # Created (201), its bytes sent (204), then handed to Galaxy's upload tool.
    assert 201 in (created := browser.answers("POST", TUS)), created
    assert 204 in (sent := browser.answers("PATCH", TUS)), sent
    assert 200 in (fetched := browser.answers("POST", "/api/tools/fetch")), fetched
    browser.click(f"{item} .display-btn")  # the eye icon
    WebDriverWait(browser.driver, 60).until(EC.frame_to_be_available_and_switch_to_it(
        (By.CSS_SELECTOR, ".dataset-view .dataset-display iframe")), "the dataset's preview")
    WebDriverWait(browser.driver, 30).until(
        lambda d: content in d.find_element(By.TAG_NAME, "body").text, "the file's content")
    browser.driver.switch_to.default_content()
    assert browser.problems() == []
