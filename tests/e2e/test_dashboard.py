"""The dashboard in real Chromium (Debian's `chromium` and `chromium-driver`, driven by selenium)
against a real `modelport serve`: the page loads with no console error, lists the repository's
models (a stable and a canary side by side, a failed load with its reason, shown as text), its
numbers move while a load generator runs, a firing alert and the canary's automatic rollback
show, and with API keys it asks for one and reads with it.

`MODELPORT_DASHBOARD_SCREENSHOT=PATH` also saves a screenshot of the page under load there
(scripts/dashboard_screenshot.py makes docs/dashboard.png with a longer load)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelport.security.keys import KeyEntry, generate_key, key_digest, write_key_file
from tests.e2e.slo_support import Load, failing_model, python_version, sleeping_model, write_config
from tests.support import Server, run_server, wait_until

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_S = 90
"""Ends a test whose page or server never gets there; nothing passes or fails by it."""
HOSTILE_REASON = '<img src="x" onerror="window.hacked = 1"> broke on purpose'
"""A load failure's message: the page must show it as text, never as markup."""
SCREENSHOT_ENV = "MODELPORT_DASHBOARD_SCREENSHOT"


def write_repository(root: Path, *, window_s: int = 10, hold_s: int = 0) -> Path:
    """`steady` (one version), `scorer` (stable 1 and a canary 2 that fails one run in 5, with
    an error-rate SLO that rolls it back once breached for `hold_s`) and `broken` (its load
    raises)."""
    python_version(root, "steady", 1, sleeping_model(0.001))
    write_config(root, "steady", {})
    python_version(root, "scorer", 1, sleeping_model(0.002))
    python_version(root, "scorer", 2, failing_model(every=5))
    write_config(
        root,
        "scorer",
        {
            "version_policy": "all",
            "labels": {"stable": 1, "canary": 2},
            "traffic": {1: 80, 2: 20},
            "slo": {
                "error_rate": "1%",
                "window": f"{window_s}s",
                "min_requests": 10,
                "for": f"{hold_s}s",
            },
        },
    )
    python_version(
        root,
        "broken",
        1,
        f"""
        class Model:
            def load(self):
                raise RuntimeError({HOSTILE_REASON!r})

            def predict(self, inputs):
                return inputs
        """,
    )
    write_config(root, "broken", {})
    return root


class Browser:
    """Headless Chromium through chromedriver, both started here and stopped by their PIDs."""

    def __init__(self, profile: Path, width: int = 1400, height: int = 1800) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        for binary in (CHROMIUM, CHROMEDRIVER):
            if shutil.which(binary) is None:
                pytest.fail(
                    f"{binary} is missing: run scripts/install_test_deps.sh "
                    "(Debian: chromium chromium-driver)"
                )
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in (
            "--headless=new",
            "--no-sandbox",  # root in a container has no user namespaces for the sandbox
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
        ):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.service = Service(executable_path=CHROMEDRIVER, port=0)
        self.driver = webdriver.Chrome(service=self.service, options=options)
        self.console: list[dict[str, Any]] = []

    def open(self, url: str) -> None:
        self.driver.get(url)

    def read_console(self) -> list[dict[str, Any]]:
        """Console entries since the last read (chromedriver hands each out once)."""
        entries = list(self.driver.get_log("browser"))
        self.console += entries
        return entries

    def errors(self) -> list[dict[str, Any]]:
        """Errors in the console since the last read: script errors, refused loads, CSP."""
        return [
            entry
            for entry in self.read_console()
            if entry["level"] == "SEVERE" or "Content Security Policy" in entry["message"]
        ]

    def texts(self, selector: str) -> list[str]:
        from selenium.webdriver.common.by import By

        return [node.text for node in self.driver.find_elements(By.CSS_SELECTOR, selector)]

    def attribute(self, selector: str, name: str) -> str | None:
        from selenium.webdriver.common.by import By

        nodes = self.driver.find_elements(By.CSS_SELECTOR, selector)
        return nodes[0].get_attribute(name) if nodes else None

    def visible(self, element_id: str) -> bool:
        from selenium.webdriver.common.by import By

        return bool(self.driver.find_element(By.ID, element_id).is_displayed())

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))

    def close(self) -> None:
        process = self.service.process
        try:
            self.driver.quit()
        finally:
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except Exception:
                    process.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    running = Browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("dashboard-repo"))


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("dashboard-logs") / "server.log"
    with run_server(repo, log, "--slo-interval", "1") as running:
        yield running


def live(browser: Browser) -> bool:
    return any(text.startswith("live") for text in browser.texts("#status"))


def version_cell(browser: Browser, model: str, version: str, cell: str) -> str:
    texts = browser.texts(f'article[data-model="{model}"] tr[data-version="{version}"] td.{cell}')
    return texts[0] if texts else ""


def number(text: str) -> float | None:
    return float(text) if re.fullmatch(r"[0-9.]+", text) else None


def test_the_page_lists_the_repository_with_no_console_error(
    server: Server, browser: Browser
) -> None:
    reply = httpx.get(f"{server.base}/dashboard", timeout=10)
    assert reply.status_code == 200
    policy = reply.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in reply.text  # no inline script: the policy would refuse it

    browser.open(f"{server.base}/dashboard")
    wait_until(lambda: live(browser), "the page's first read", WAIT_S)
    wait_until(lambda: len(browser.texts("article.model")) == 3, "three models", WAIT_S)
    assert sorted(browser.texts("article.model h2 .name")) == ["broken", "scorer", "steady"]
    # the canary next to stable: one row each, with their labels and shares
    assert version_cell(browser, "scorer", "1", "labels") == "stable"
    assert version_cell(browser, "scorer", "2", "labels") == "canary"
    assert version_cell(browser, "scorer", "1", "traffic") == "80%"
    assert version_cell(browser, "scorer", "2", "traffic") == "20%"
    assert version_cell(browser, "broken", "1", "state") == "FAILED"
    # the failed load with its reason, as text
    [failure] = browser.texts("#failures li")
    assert failure.startswith("broken version 1: ") and HOSTILE_REASON in failure
    assert browser.driver.execute_script("return document.querySelectorAll('main img').length") == 0
    assert browser.driver.execute_script("return window.hacked === undefined")
    charts = browser.driver.execute_script(
        "return document.querySelectorAll('article[data-model=\"scorer\"] figure.chart').length"
    )
    assert charts == 6
    assert browser.errors() == []


def test_its_numbers_move_while_load_runs(server: Server, browser: Browser) -> None:
    browser.open(f"{server.base}/dashboard")
    wait_until(lambda: live(browser), "the page's first read", WAIT_S)
    chart = 'article[data-model="steady"] figure[data-metric="requests_per_second"] path.line'
    before = browser.attribute(chart, "d")
    seen: list[float] = []
    load = Load(server.base, ["/v2/models/steady/infer"]).start(per_path=2)
    try:

        def moving() -> bool:
            value = number(version_cell(browser, "steady", "1", "rps"))
            if value is not None:
                seen.append(value)
            return value is not None and value > 0

        wait_until(moving, "steady's requests/s above 0", WAIT_S)
        wait_until(lambda: browser.attribute(chart, "d") != before, "the chart to move", WAIT_S)
        p99 = number(version_cell(browser, "steady", "1", "p99"))
        queue = number(version_cell(browser, "steady", "1", "queue"))
    finally:
        load.finish()
    assert len(load.results) >= 1 and {status for _, _, status, _ in load.results} == {200}
    assert seen[-1] > 0 and p99 is not None and p99 > 0 and queue is not None and queue >= 1
    assert browser.errors() == []


def test_a_firing_alert_and_the_canary_rollback_show(server: Server, browser: Browser) -> None:
    if httpx.get(f"{server.base}/v2/alerts", timeout=10).status_code == 404:
        pytest.skip("this server has no GET /v2/alerts (the SLO alerts are not built)")
    browser.open(f"{server.base}/dashboard")
    wait_until(lambda: browser.visible("alerts-panel"), "the alerts panel", WAIT_S)
    assert browser.texts("#alerts-none") == ["No alert is firing."]
    load = Load(
        server.base, ["/v2/models/scorer/infer", "/v2/models/scorer/versions/stable/infer"]
    ).start(per_path=2)
    try:

        def firing() -> bool:
            return any(
                text.startswith("firing: ") and "scorer version 2" in text
                for text in browser.texts("#alerts li.alert.firing")
            )

        wait_until(firing, "a firing alert for scorer's canary", WAIT_S)
        wait_until(
            lambda: any(
                "scorer rolled back from version 2 to 1: rolled back: error_rate" in text
                for text in browser.texts("#rollbacks li")
            ),
            "the rollback on the page",
            WAIT_S,
        )
        wait_until(
            lambda: version_cell(browser, "scorer", "2", "traffic") == "0%",
            "the canary's share at 0",
            WAIT_S,
        )
        screenshot = os.environ.get(SCREENSHOT_ENV)
        if screenshot:
            browser.screenshot(Path(screenshot))
    finally:
        load.finish()
    assert version_cell(browser, "scorer", "1", "traffic") == "100%"
    assert version_cell(browser, "scorer", "2", "reason").startswith("rolled back: error_rate")
    assert browser.texts('article[data-model="scorer"] .model-alerts li')  # shown by the model
    assert "alerting" in (browser.attribute('article[data-model="scorer"]', "class") or "")
    assert browser.errors() == []


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    folder = tmp_path_factory.mktemp("dashboard-keys")
    root = folder / "repo"
    python_version(root, "steady", 1, sleeping_model(0.001))
    write_config(root, "steady", {})
    keys = {"scraper": generate_key(), "caller": generate_key()}
    scopes = {"scraper": ("metrics",), "caller": ("inference",)}
    entries = [
        KeyEntry.model_validate({"name": name, "sha256": key_digest(key), "scopes": scopes[name]})
        for name, key in keys.items()
    ]
    key_file = folder / "keys.yaml"
    write_key_file(key_file, entries)
    with run_server(root, folder / "server.log", "--api-keys", str(key_file)) as running:
        yield running, keys


def test_with_keys_the_data_needs_the_metrics_scope(
    keyed: tuple[Server, dict[str, str]],
) -> None:
    server, keys = keyed

    def get(path: str, key: str | None = None) -> int:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.get(f"{server.base}{path}", headers=headers, timeout=10).status_code

    # the page and its files hold no data: a browser navigating sends no key
    assert get("/dashboard") == 200
    assert get("/dashboard/static/dashboard.js") == 200
    assert get("/dashboard/static/chart.js") == 200
    assert get("/dashboard/static/nothing.js") == 401  # no probing for files without a key
    assert get("/dashboard/api/series") == 401
    assert get("/dashboard/api/series", keys["caller"]) == 403
    assert get("/dashboard/api/series", keys["scraper"]) == 200
    assert get("/v2/alerts", keys["scraper"]) in (200, 404)


def test_with_keys_the_page_asks_for_one(
    keyed: tuple[Server, dict[str, str]], browser: Browser
) -> None:
    from selenium.webdriver.common.by import By

    server, keys = keyed
    browser.errors()  # what earlier tests' pages left in the console
    browser.open(f"{server.base}/dashboard")
    wait_until(lambda: browser.visible("key-panel"), "the key prompt", WAIT_S)
    assert not browser.visible("content")
    assert browser.errors() == []  # it asked before reading: no 401 in the console

    def enter(key: str) -> None:
        field = browser.driver.find_element(By.ID, "key-input")
        field.clear()
        field.send_keys(key)
        browser.driver.find_element(By.CSS_SELECTOR, "#key-form button").click()

    enter(keys["caller"])  # a key without the metrics scope
    wait_until(
        lambda: "may not read metrics" in " ".join(browser.texts("#key-note")),
        "the scope refusal",
        WAIT_S,
    )
    refused = browser.errors()
    assert refused and all("403" in entry["message"] for entry in refused), refused

    enter(keys["scraper"])
    wait_until(lambda: live(browser), "the page's read with the key", WAIT_S)
    assert browser.texts("article.model h2 .name") == ["steady"]
    stored = browser.driver.execute_script(
        "return sessionStorage.getItem('modelport.dashboard.key')"
    )
    assert stored == keys["scraper"]
    browser.driver.refresh()  # the key is kept for the tab's session
    wait_until(lambda: live(browser), "the read after a reload", WAIT_S)
    assert not browser.visible("key-panel")
    assert browser.errors() == []
    with contextlib.suppress(Exception):
        browser.driver.execute_script("sessionStorage.clear()")
