"""Debian's Chromium, headless, driven by Playwright (from PyPI, with no browser of its own): a
fresh profile per test, a page that keeps what a test needs to see when it fails (the console,
uncaught errors), screenshots kept where a run leaves its artefacts, and no network beyond 127.0.0.1.
"""
import importlib.util
import re
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = "/usr/bin/chromium"
# As /work/.library/env/machines/python.md gives them: without the background networking flags
# Chromium reaches for Google's hosts at every start. Playwright adds --headless and --no-sandbox.
FLAGS = ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 15_000  # for every Playwright wait: a locator, a navigation, a function
ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "build" / "test-artifacts" / "browser"
LOCAL_HOSTS = {"127.0.0.1"}


def need_chromium():
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("playwright is not installed: pip install -e '.[dev]' (make test does)")
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (make browser-tools, which make test runs)")


def need_library(name):
    """Skip unless cra-cloud finds the web page's library `name` (novnc, xterm) where Debian installs it."""
    from cra.cloud.webapp import Libraries
    status = Libraries().status()[name]
    if not status["available"]:
        pytest.skip(f"{status['problem']} (make browser-tools, which make test runs, installs it)")


class Browser:
    """One Chromium with an empty profile of its own; every request outside 127.0.0.1 is refused and kept
    in `strays`, every console message in `console`, every uncaught error in `errors`."""

    def __init__(self, name):
        from playwright.sync_api import sync_playwright
        self.name = name
        self.strays, self.console, self.errors = [], [], []
        self._profile = tempfile.mkdtemp(prefix="cra-chromium-")
        self._playwright = sync_playwright().start()
        try:
            self.context = self._playwright.chromium.launch_persistent_context(
                self._profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
                viewport={"width": 1024, "height": 720}, ignore_https_errors=False)
        except BaseException:
            self._playwright.stop()
            raise
        self.context.set_default_timeout(TIMEOUT_MS)
        self.context.route(re.compile(".*"), self._only_local)
        self.page = self.context.pages[0] if self.context.pages else self.context.new_page()
        self.watch(self.page)

    def _only_local(self, route):
        url = urlsplit(route.request.url)
        if url.scheme in ("http", "https") and url.hostname not in LOCAL_HOSTS:
            self.strays.append(route.request.url)
            return route.abort()
        return route.continue_()

    def watch(self, page):
        page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def screenshot(self, label, element=None):
        """A PNG of the page (or one element of it), kept as build/test-artifacts/browser/<test>/<label>.png; its bytes."""
        path = ARTIFACTS / self.name / f"{label}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        return (element or self.page).screenshot(path=str(path))

    def diagnosis(self):
        """What the page said, for an assertion's message."""
        return "console:\n  " + "\n  ".join(self.console[-40:]) + "\nerrors:\n  " + "\n  ".join(self.errors)

    def close(self):
        try:
            self.context.close()
        finally:
            self._playwright.stop()
            shutil.rmtree(self._profile, ignore_errors=True)


def sign_in(browser, cloud_url, user="admin", password="admin-pw"):
    """The start page, signed in through its form; the device list once shown."""
    page = browser.page
    page.goto(f"{cloud_url}/apps/remote-access/")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_selector("#devices-status:not(:text('Loading…'))")
    return page
