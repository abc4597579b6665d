"""The status page in a real browser: what an admin sees when a radiologist calls.

Headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven
through Selenium) reads the page an in-process adapter serves on its
``[http]`` listener, so the test sees what a person would: the rendered
HTML, the links that work, the form that posts.  One adapter, set up to have
something to show:

* three studies arrive from DCMTK ``storescu`` (two calling AE titles) on
  an AE that forwards them to a destination, a pynetdicom SCP
  (:class:`tests.peers.flaky_scp.FlakyStorageSCP`) that refuses one
  instance of the first study with 0xA900, so that study's export ends
  ``failed`` with the refusal as its reason and the file as undelivered;
* a text file dropped into the AE's spool folder is quarantined.

Then, in one browser, as three readers (a Basic ``Authorization`` header
set on every request through the DevTools protocol, as a browser that had
signed in would send):

* anonymous, from loopback: the AE's counts match the ledger, the failed
  export shows its reason, the quarantined file its name and reason, the
  page says patient data is hidden and no patient identifier is anywhere in
  its source (although ``show_phi = true``: it is for signed-in users only),
  and there is no action to click;
* ``bob``, a plain user: the Patient IDs, and still no action;
* ``alice``, an admin: Retry on the failed export, then the confirmation's
  button; the ledger has the export out of ``failed`` and a ``task_events``
  row naming her; the study's page lists its instances and timeline.

Screenshots of the overview, at 1400x1000 and at a phone's 390x844, are
written to ``$TEST_ARTIFACTS`` (default ``var/test-artifacts/`` in the
repository): ``status-page-1400x1000.png`` and ``status-page-phone.png``
(anonymous, with the failed export), ``status-page-admin-1400x1000.png``
(alice, with the Retry button) and ``status-page-study.png``.

Under ``CI=true`` a missing ``chromium`` or ``chromedriver`` fails the test
(CI installs them); elsewhere it is skipped.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from sqlalchemy import select

from ledger.states import State, TaskKind, TaskState
from ledger.tasks import TASK_EVENTS, Tasks
from tests.conftest import ROOT, RunningAdapter, free_port, wait_for, write_config
from tests.dcmtk import storescu
from tests.dicom import make_study
from tests.peers.flaky_scp import FlakyStorageSCP
from web.auth import hash_password, write_entry

AE = "DICOMADAPTER"
DESTINATION = "PACS"
REFUSED = 0xA900  # Error: Data Set does not match SOP Class: permanent, failed at once
PATIENTS = ("PSP-4711", "PSP-4712", "PSP-4713")  # nothing else on a page reads "PSP-47"
PASSWORDS = {"alice": "alice's long passphrase", "bob": "bob's long passphrase"}
DESKTOP = (1400, 1000)
PHONE = (390, 844)
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS") or ROOT / "var" / "test-artifacts")


# -- the browser --------------------------------------------------------------------


def require_browser() -> tuple[str, str]:
    """Chromium and its driver; skip without them, but fail under CI=true (as
    ``require_tool`` does for DCMTK: CI must install them)."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        message = "chromium or chromedriver is not installed (Debian chromium, chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return chromium, driver


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    chromium, driver = require_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={DESKTOP[0]},{DESKTOP[1]}")
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    chrome.execute_cdp_cmd("Network.enable", {})
    yield chrome
    chrome.quit()


def sign_in(browser: WebDriver, name: str | None) -> None:
    """Send ``name``'s Basic credentials with every request from now on (None: none).

    A browser that signed in at the password prompt resends the header on
    its own; the DevTools protocol does the same without the prompt.
    """
    headers = {}
    if name is not None:
        secret = base64.b64encode(f"{name}:{PASSWORDS[name]}".encode()).decode()
        headers["Authorization"] = f"Basic {secret}"
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": headers})


def viewport(browser: WebDriver, size: tuple[int, int], *, mobile: bool = False) -> None:
    """Render at exactly ``size`` CSS pixels (the window's frame not counted)."""
    width, height = size
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)


def screenshot(browser: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    assert browser.save_screenshot(str(path)), path
    return path


def text(browser: WebDriver, css: str) -> str:
    return browser.find_element(By.CSS_SELECTOR, css).text


def exists(browser: WebDriver, css: str) -> bool:
    return bool(browser.find_elements(By.CSS_SELECTOR, css))


# -- the adapter and what it has to show ----------------------------------------------


@pytest.fixture
def flaky() -> Iterator[FlakyStorageSCP]:
    with FlakyStorageSCP(failure_status=REFUSED) as scp:
        yield scp


def status_page_config(folder: Path, destination_port: int) -> tuple[Path, int]:
    """A forwarding AE, a destination, an HTTP listener with alice (admin) and bob (user)."""
    users = folder / "users"
    write_entry(users, "alice", "admin", hash_password(PASSWORDS["alice"]))
    write_entry(users, "bob", "user", hash_password(PASSWORDS["bob"]))
    http_port = free_port()
    sections = (
        f"[destination:{DESTINATION}]\nae_title = FLAKYSCP\nhost = 127.0.0.1\n"
        f"port = {destination_port}\nretries = 0\n"
        f"[http]\nport = {http_port}\nusers = {users}\nshow_phi = true\n"
    )
    # A study's group closes after 1.5 s without arrivals: three times the watcher's
    # settle time, so each study (one storescu run) becomes one job and one export.
    forward = f"[ae:{AE}]\nprocessor = forward\ndestinations = {DESTINATION}\ntimeout = 1.5\n"
    return write_config(folder, free_port(), sections, aes=forward), http_port


def make_studies(folder: Path) -> list[list[Path]]:
    """Three studies of 3, 2 and 1 instances, one patient each."""
    return [
        make_study(folder / f"study-{n}", count, patient_id=patient)
        for n, (count, patient) in enumerate(zip((3, 2, 1), PATIENTS, strict=True))
    ]


def send_studies(running: RunningAdapter, studies: list[list[Path]]) -> None:
    """From two modalities' AE titles, with DCMTK storescu."""
    for calling, files in (("CT_SCANNER", studies[0] + studies[1]), ("MR_SCANNER", studies[2])):
        result = storescu(running.port, files, calling=calling)
        assert result.returncode == 0, result.stderr


def uid(path: Path, keyword: str) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True)[keyword].value)


def settled(running: RunningAdapter, instances: int) -> bool:
    """``instances`` recorded, each taken by a job, and every job and export ended: the
    page holds still while the browser reads it."""
    rows = [r for r in running.rows() if r.state != State.REJECTED]
    tasks = Tasks(running.ledger).listing()
    return (
        len(rows) == instances
        and not any(r.state in (State.RECEIVED, State.CLAIMED) for r in rows)
        and bool(tasks)
        and all(t.state in (TaskState.SUCCEEDED, TaskState.FAILED) for t in tasks)
    )


# -- the test ------------------------------------------------------------------------


def test_status_page_in_a_browser_anonymous_user_and_admin_retry(
    start_adapter: Callable[[Path], RunningAdapter],
    flaky: FlakyStorageSCP,
    browser: WebDriver,
    tmp_path: Path,
) -> None:
    config, http_port = status_page_config(tmp_path, flaky.port)
    running = start_adapter(config)
    base = f"http://127.0.0.1:{http_port}"
    studies = make_studies(tmp_path / "sent")
    flaky.set_phase("refuse", fail={uid(studies[0][1], "SOPInstanceUID")})
    send_studies(running, studies)
    (running.spool / AE / "notes.txt").write_text("not an image\n")
    running.wait_rows(1, "rejected")
    wait_for(lambda: settled(running, 6), timeout=20)
    [failed] = Tasks(running.ledger).listing(TaskKind.EXPORT, TaskState.FAILED)
    assert failed.last_error and f"0x{REFUSED:04X}" in failed.last_error, failed

    check_anonymous_overview(browser, base, running, failed.id)
    check_anonymous_study(browser, base, uid(studies[0][0], "StudyInstanceUID"))
    check_plain_user(browser, base, failed.id)
    retry_as_alice(browser, base, running, flaky, failed.id)
    check_study_page(browser, base, studies[0], failed.id)


def check_anonymous_overview(
    browser: WebDriver, base: str, running: RunningAdapter, failed_id: int
) -> None:
    """Counts, the failed export and the quarantined file; no patient data, no actions."""
    sign_in(browser, None)
    viewport(browser, DESKTOP)
    browser.get(f"{base}/")
    assert text(browser, "#viewer") == "anonymous, read-only"
    assert text(browser, "#phi") == "Patient data: hidden"

    counts = Counter(row.state for row in running.rows() if row.called_ae == AE)
    assert counts["rejected"] == 1 and sum(counts.values()) == 7, counts
    row = f'#counts tr[data-ae="{AE}"]'
    cells = browser.find_elements(By.CSS_SELECTOR, f"{row} td[data-state]")
    shown = {cell.get_attribute("data-state"): int(cell.text) for cell in cells}
    assert shown == {state: counts.get(state, 0) for state in shown}, shown
    # Nothing sends now (the count is read before the page's own C-ECHO health check).
    assert text(browser, "#associations") == "0"

    task = Tasks(running.ledger).get(failed_id)
    failed_row = f'#failed tr[data-task="{failed_id}"]'
    assert text(browser, f"{failed_row} td.reason") == task.last_error
    assert DESTINATION in text(browser, failed_row)
    [item] = [i for i in running.adapter.exports.items(failed_id) if i.state == "failed"]
    undelivered = text(browser, f'#undelivered tr[data-item="{item.id}"]')
    assert item.path in undelivered and f"0x{REFUSED:04X}" in undelivered, undelivered

    [quarantined] = running.rows("rejected")
    quarantine_text = text(browser, "#quarantined")
    assert Path(quarantined.path).name in quarantine_text
    assert Path(quarantined.path).name.endswith("-notes.txt")
    assert quarantined.reason and quarantined.reason in quarantine_text

    source = browser.page_source
    assert "PSP-47" not in source and "Test^" not in source  # Patient IDs and names
    assert "/actions/" not in source and not exists(browser, "a.button")
    bars = browser.find_elements(By.CSS_SELECTOR, "#arrivals svg rect")
    assert len(bars) == 60
    instances = [row for row in running.rows() if row.state != "rejected"]
    assert f"({len(instances)} in all" in text(browser, "#arrivals h2")  # files are no instances

    screenshot(browser, "status-page-1400x1000.png")
    viewport(browser, PHONE, mobile=True)
    browser.get(f"{base}/")
    width = browser.execute_script("return document.documentElement.scrollWidth")
    assert width <= PHONE[0], f"the page is {width} px wide on a {PHONE[0]} px phone"
    screenshot(browser, "status-page-phone.png")
    viewport(browser, DESKTOP)


def check_anonymous_study(browser: WebDriver, base: str, study_uid: str) -> None:
    """A study's own page, where the Patient ID column would be, hides it as well."""
    browser.get(f"{base}/studies/{study_uid}")
    assert study_uid in text(browser, "main h2")
    assert "PSP-47" not in browser.page_source and "Test^" not in browser.page_source
    assert "/actions/" not in browser.page_source


def check_plain_user(browser: WebDriver, base: str, failed_id: int) -> None:
    """A signed-in user sees Patient IDs (show_phi = true) but no actions, nor may act."""
    sign_in(browser, "bob")
    browser.get(f"{base}/")
    assert text(browser, "#viewer") == "signed in as bob (user)"
    assert text(browser, "#phi") == "Patient data: shown"
    studies = text(browser, "#studies")
    assert all(patient in studies for patient in PATIENTS), studies
    assert "/actions/" not in browser.page_source
    browser.get(f"{base}/actions/tasks/{failed_id}/retry")
    assert browser.find_element(By.TAG_NAME, "body").text == "bob is not an admin"


def retry_as_alice(
    browser: WebDriver,
    base: str,
    running: RunningAdapter,
    flaky: FlakyStorageSCP,
    failed_id: int,
) -> None:
    """Retry, confirm, and the ledger says alice asked; the destination, fixed meanwhile
    (as a person would before retrying), takes the refused file this time."""
    sign_in(browser, "alice")
    browser.get(f"{base}/")
    assert text(browser, "#viewer") == "signed in as alice (admin)"
    screenshot(browser, "status-page-admin-1400x1000.png")
    flaky.set_phase("accept", fail=())
    retry = browser.find_element(By.CSS_SELECTOR, f'#failed tr[data-task="{failed_id}"] a.button')
    assert retry.text == "Retry"
    retry.click()
    assert browser.current_url == f"{base}/actions/tasks/{failed_id}/retry"
    assert text(browser, "#confirm h2").startswith(f"Retry export {failed_id} ({DESTINATION}")
    browser.find_element(By.ID, "confirm-button").click()
    wait_for(lambda: browser.current_url == f"{base}/", timeout=10)
    assert text(browser, "#viewer") == "signed in as alice (admin)"

    tasks = Tasks(running.ledger)
    assert tasks.get(failed_id).state != "failed"
    query = select(TASK_EVENTS).where(TASK_EVENTS.c.task_id == failed_id)
    moves = [(e.from_state, e.to_state, e.reason) for e in running.ledger.read(query)]
    assert ("failed", "pending", "retry requested by alice on the status page") in moves, moves
    wait_for(lambda: tasks.get(failed_id).state == "succeeded", timeout=20)
    browser.get(f"{base}/")
    assert not exists(browser, "#failed") and not exists(browser, "#undelivered")


def check_study_page(browser: WebDriver, base: str, files: list[Path], export_id: int) -> None:
    """From the overview's link: the study's instances (with Patient ID) and its timeline."""
    study_uid = uid(files[0], "StudyInstanceUID")
    browser.find_element(By.CSS_SELECTOR, f'#studies a[href="/studies/{study_uid}"]').click()
    assert browser.current_url == f"{base}/studies/{study_uid}"
    rows = browser.find_elements(By.CSS_SELECTOR, "#instances tr td.uid[title]")
    titles = {cell.get_attribute("title") for cell in rows}
    assert {uid(path, "SOPInstanceUID") for path in files} <= titles, titles
    assert text(browser, "#instances").count(PATIENTS[0]) == len(files)
    assert "succeeded" in text(browser, f'#tasks tr[data-task="{export_id}"]')
    timeline = text(browser, "#timeline")
    assert "retry requested by alice on the status page" in timeline, timeline
    assert len(browser.find_elements(By.CSS_SELECTOR, "#timeline tr")) > len(files)
    screenshot(browser, "status-page-study.png")
