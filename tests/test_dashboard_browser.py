"""The dashboard in a real browser: Debian's chromium, driven by selenium through Debian's
chromium-driver, against the real master and real minions running in this process.

It checks what a person would see, and that changes arrive without a reload. Outside CI
the test is skipped when chromium is missing; in CI (CI=true) that is a failure, since
`make test` installs it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import zmq
from archives import make_asset
from inprocess_fleet import DEADLINE_S, RunningMaster, fleet_settings, live_minions

from daybook import wire
from daybook.model.names import AssetRef
from daybook.model.results import Report, ServiceResult
from daybook.registry.base import open_registry
from daybook.stopping import StopFlag
from daybook.store.local import LocalStore
from minion.process import run_minion

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# The flags that work on a machine with no network but loopback (see the README).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)
BROWSER_WAIT_S = 20.0
HOSTILE_REASON = '<img src=x onerror="window.__pwned = 1"> & <b>bold</b>'


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package")
    if missing:
        message = (
            f"the browser test needs {', '.join(missing)}: `make test` installs Debian's "
            "chromium and chromium-driver (as root), `pip install -e '.[test]'` selenium"
        )
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    # Selenium must use Debian's driver and browser, never fetch its own.
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    with tempfile.TemporaryDirectory(prefix="daybook-chromium-") as profile:
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(
            service=Service(executable_path=str(CHROMEDRIVER)), options=options
        )
        driver.set_page_load_timeout(BROWSER_WAIT_S)
        try:
            yield driver
        finally:
            driver.quit()


class InProcessMinion:
    """A real minion (`run_minion`) on a thread, stopped through its stop flag."""

    def __init__(self, master: RunningMaster, root: Path, host: str) -> None:
        self.settings = replace(
            master.settings,
            hostname=host,
            data_dir=root / host,
            install_dir=root / host / "install",
            port=master.port("publish"),
            results_port=master.port("results"),
            control_port=master.port("control"),
        )
        if "key" in master.endpoints:  # where a minion learns the master's public key
            self.settings = replace(self.settings, key_port=master.port("key"))
        self.stop = StopFlag()
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self._run, name=f"minion-{host}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.exit_code = run_minion(self.settings, stop=self.stop, drain_timeout_s=2.0)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(DEADLINE_S)
        assert not self.thread.is_alive()
        assert self.exit_code == 0


def push(root: Path, service: str, version: str) -> None:
    path = make_asset(root, service, version)
    LocalStore(root / "store").upload(
        path, AssetRef(service, version), sha256=hashlib.sha256(path.read_bytes()).hexdigest()
    )


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[RunningMaster, dict[str, InProcessMinion]]]:
    push(tmp_path, "web", "1")
    open_registry(f"file://{tmp_path / 'mappings.json'}").update("web-*", lambda _: ("web",))
    master = RunningMaster(fleet_settings(tmp_path))
    minions = {host: InProcessMinion(master, tmp_path, host) for host in ("web-1", "web-2")}
    try:
        yield master, minions
    finally:
        for minion in minions.values():
            if minion.thread.is_alive():
                minion.close()
        master.shutdown()


def see(driver: WebDriver, condition: Callable[[], Any], what: str) -> Any:
    """Wait until `condition` (reading the page) is truthy; the page redraws every second,
    so an element found a moment ago may be gone: that is a retry, not a failure."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(
            driver,
            BROWSER_WAIT_S,
            poll_frequency=0.1,
            ignored_exceptions=(StaleElementReferenceException,),
        ).until(lambda _: condition())
    except Exception as exc:
        screenshot = Path(tempfile.gettempdir()) / "daybook-dashboard-failure.png"
        driver.save_screenshot(str(screenshot))
        raise AssertionError(
            f"the page never showed {what} (screenshot: {screenshot}):\n"
            + driver.find_element("tag name", "body").text
        ) from exc


def text_of(driver: WebDriver, selector: str) -> str | None:
    """The visible text of the first element matching `selector`, or None."""
    found = driver.find_elements("css selector", selector)
    return found[0].text if found else None


def host_cell(driver: WebDriver, host: str, column: str) -> str | None:
    return text_of(driver, f'#hosts tr[data-host="{host}"] td[data-col="{column}"]')


def see_both_hosts_up_with_web_1(browser: WebDriver) -> None:
    """Both hosts up, with the version the store holds installed, and the page live."""
    for host in ("web-1", "web-2"):
        see(browser, lambda h=host: host_cell(browser, h, "status") == "up", f"{host} up")
        see(
            browser,
            lambda h=host: host_cell(browser, h, "installed") == "web 1",
            f"web 1 installed on {host}",
        )
    assert host_cell(browser, "web-1", "pattern") == "web-*"
    see(browser, lambda: (host_cell(browser, "web-1", "last-sync") or "").startswith("ok"), "ok")
    assert text_of(browser, "#count-up") == "2"
    assert text_of(browser, "#count-down") == "0"
    assert (text_of(browser, "#connection-text") or "").startswith("live")
    see(
        browser,
        lambda: text_of(browser, '#services tr[data-service="web"] td[data-col="newest"]') == "1",
        "web's newest version",
    )


def see_a_pushed_version_reach_both_hosts(browser: WebDriver, tmp_path: Path) -> None:
    """A new version pushed to the store reaches both hosts, and the page, by itself."""
    push(tmp_path, "web", "2")
    for host in ("web-1", "web-2"):
        see(
            browser,
            lambda h=host: host_cell(browser, h, "installed") == "web 1, 2",
            f"web 2 installed on {host}",
        )
    service = '#services tr[data-service="web"]'
    assert text_of(browser, f'{service} td[data-col="newest"]') == "2"
    see(
        browser,
        lambda: text_of(browser, f'{service} td[data-col="lagging"]') == "none",
        "no host lagging behind web 2",
    )


def see_an_operator_sync_answered_by_both(browser: WebDriver, master: RunningMaster) -> None:
    """An operator sync shows up in the recent syncs, answered by both."""
    with master.client() as client:
        sync_id = client.run_sync(None, wait=True, timeout_s=DEADLINE_S).sync_id
    row = f'#syncs tr[data-sync="{sync_id}"]'
    see(browser, lambda: text_of(browser, f'{row} td[data-col="answers"]') == "2/2", "2/2")
    assert text_of(browser, f'{row} td[data-col="result"]') == "ok"
    assert text_of(browser, f'{row} td[data-col="origin"]') == "operator"
    assert text_of(browser, f'{row} td[data-col="sync"]') == sync_id[:8]


def see_a_failure_shown_as_text(
    browser: WebDriver, master: RunningMaster, context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """A failure, with its reason shown as text even when it looks like markup."""
    (evil,) = live_minions(context, master, "web-evil")
    event = evil.next_event()
    evil.push.send_multipart(
        wire.encode(
            Report(
                report_id="evil-1",
                host="web-evil",
                sync_id=event.sync_id,
                epoch=event.epoch,
                seq=event.seq,
                state_digest=event.state_digest,
                pattern="web-*",
                services={"web": ServiceResult(present=("1",), failed={"2": HOSTILE_REASON})},
                installed={"web": ("1",)},
                started_at=event.issued_at,
                finished_at=event.issued_at + 0.1,
            )
        )
    )
    failure = '#failures li[data-host="web-evil"]'
    see(browser, lambda: HOSTILE_REASON in (text_of(browser, failure) or ""), "the reason")
    assert "web-evil · web 2" in (text_of(browser, failure) or "")
    assert browser.find_elements("css selector", "#failures img, #failures b") == []
    assert browser.execute_script("return window.__pwned === undefined;") is True
    assert text_of(browser, "#count-failing") == "1"
    assert (host_cell(browser, "web-evil", "last-sync") or "").startswith("failed")
    evil.close()


def see_a_sync_to_a_silent_host_end_at_its_deadline(
    browser: WebDriver, master: RunningMaster, context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """A host that never answers: its sync ends at the deadline and says so, instead of waiting."""
    (quiet,) = live_minions(context, master, "web-quiet")
    with master.client() as client:
        unanswered = client.start_sync("web-quiet", deadline_s=1.0).sync_id
    result = f'#syncs tr[data-sync="{unanswered}"] td[data-col="result"]'
    see(browser, lambda: text_of(browser, result) == "1 did not answer", "1 did not answer")
    hover = browser.find_element("css selector", f"{result} .pill").get_attribute("title")
    assert hover == "no answer from web-quiet"
    quiet.close()


def see_a_stopped_minion_shown_down(
    browser: WebDriver, minions: dict[str, InProcessMinion]
) -> None:
    """A minion that stops is shown down once its heartbeats are overdue; the other stays up."""
    minions["web-2"].close()
    see(browser, lambda: host_cell(browser, "web-2", "status") == "down", "web-2 down")
    assert host_cell(browser, "web-1", "status") == "up"


def test_a_person_watches_the_fleet_sync_in_the_browser(
    browser: WebDriver,
    fleet: tuple[RunningMaster, dict[str, InProcessMinion]],
    tmp_path: Path,
) -> None:
    master, minions = fleet
    browser.get(master.endpoints["http"] + "/")
    assert browser.title == "Daybook · fleet"
    see_both_hosts_up_with_web_1(browser)
    # Every later change must arrive in this same page, without a reload.
    browser.execute_script("window.__noReload = 'still the same page';")

    see_a_pushed_version_reach_both_hosts(browser, tmp_path)
    see_an_operator_sync_answered_by_both(browser, master)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        see_a_failure_shown_as_text(browser, master, context)
        see_a_sync_to_a_silent_host_end_at_its_deadline(browser, master, context)
    finally:
        context.destroy(linger=0)
    see_a_stopped_minion_shown_down(browser, minions)

    assert browser.execute_script("return window.__noReload;") == "still the same page"
    browser.save_screenshot(str(tmp_path / "dashboard.png"))
    if os.environ.get("DAYBOOK_KEEP_SCREENSHOT"):
        browser.save_screenshot(os.environ["DAYBOOK_KEEP_SCREENSHOT"])
