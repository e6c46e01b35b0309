"""The dashboard in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium) loads the page of ``segmenter api`` after a replay,
and the numbers it shows equal the API's; a customer search shows the why; screenshots are
saved (to ``DASHBOARD_SCREENSHOTS`` too when set: the docs' screenshot comes from there)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.cli.replay import publish
from tests.conftest import settings_from, wait_for
from tests.integration.test_insights_api import TOKEN, api_get, get, half_year
from tests.integration.test_insights_api import stack as stack  # the fixture

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.fail("install Debian's chromium and chromium-driver (.ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1440,1800", "--disable-gpu"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def shoot(driver: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000  # a drawn page, not a blank one
    keep = os.environ.get("DASHBOARD_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)


async def test_the_dashboard_shows_the_api_s_numbers_and_finds_a_customer(
    stack: tuple[dict[str, str], str], browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    overrides, base = stack
    events = half_year()
    records = [(e["customer_id"].encode(), orjson.dumps(e)) for e in events]
    assert await publish(settings_from(overrides), iter(records)) == len(records)
    placed = sum(1 for e in events if e["type"] == "order_placed")
    shop = f"{base}/api/shops/shop-a"
    everything = "start=2024-12-01&end=2026-12-31"
    await wait_for(
        lambda: api_get(f"{shop}/performance?{everything}"),
        lambda p: p is not None and sum(s["orders"] for s in p["segments"]) == placed,
        120,
        "the insights to count every order",
    )
    version = get(f"{shop}/version")["version"]
    # the totals stay put once everything is counted (the page then shows them)
    await wait_for(lambda: api_get(f"{shop}/version"), lambda v: v == {"shop": "shop-a",
                   "version": version}, 10, "the totals to settle", interval=1.5)  # fmt: skip

    browser.get(f"{base}/?shop=shop-a#token={TOKEN}")
    wait = WebDriverWait(browser, 30)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#sizes tbody tr")))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#retention tbody tr")))
    await asyncio.sleep(0)  # the page has drawn; nothing below waits on time

    # segment sizes
    api_sizes = {s["segment"]: s["size"] for s in get(f"{shop}/segments")["segments"]}
    shown = {
        row.get_attribute("data-segment"): int(
            row.find_element(By.CSS_SELECTOR, "[data-size]").text
        )
        for row in browser.find_elements(By.CSS_SELECTOR, "#sizes tbody tr")
    }
    assert shown == api_sizes
    assert sum(shown.values()) > 0

    # the period the page chose: its flows and its revenue and orders per segment
    start = browser.find_element(By.ID, "start").get_attribute("value")
    end = browser.find_element(By.ID, "end").get_attribute("value")
    assert start and end
    flows = get(f"{shop}/flows?start={start}&end={end}")["matrix"]
    cells = browser.find_elements(By.CSS_SELECTOR, "#flows td[data-from]")
    assert len(cells) == sum(len(row) for row in flows.values())
    for td in cells:
        a, b = td.get_attribute("data-from"), td.get_attribute("data-to")
        assert int(td.get_attribute("data-count")) == flows[a][b], (a, b)
        assert td.text == (str(flows[a][b]) if flows[a][b] else "")
    performance = get(f"{shop}/performance?start={start}&end={end}")["segments"]
    for row in performance:
        tr = browser.find_element(
            By.CSS_SELECTOR, f"#performance tr[data-segment='{row['segment']}']"
        )
        for field in ("entered", "left", "orders"):
            assert tr.find_element(By.CSS_SELECTOR, f"[data-field='{field}']").text == str(
                row[field]
            )
        revenue = tr.find_element(By.CSS_SELECTOR, "[data-field='revenue']").get_attribute(
            "data-value"
        )
        assert orjson.loads(revenue) == row["revenue"]
    assert sum(r["orders"] for r in performance) > 0

    # retention, month by month
    retention = get(f"{shop}/retention")["retention"]
    rates = {(r["segment"], r["month"]): r["rate"] for r in retention}
    tds = browser.find_elements(By.CSS_SELECTOR, "#retention td[data-month]")
    assert tds
    for td in tds:
        key = (td.get_attribute("data-segment"), td.get_attribute("data-month"))
        rate = td.get_attribute("data-rate")
        assert (float(rate) if rate else None) == rates[key], key
    shoot(browser, tmp_path, "dashboard")

    # members of the biggest segment, then a customer's why from the search box
    biggest = max(api_sizes, key=lambda s: api_sizes[s])
    browser.find_element(By.CSS_SELECTOR, f"#sizes tr[data-segment='{biggest}']").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "members-segment"), biggest))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#members tbody tr")))
    member = browser.find_element(By.CSS_SELECTOR, "#members tbody tr td").text
    box = browser.find_element(By.ID, "customer-id")
    box.clear()
    box.send_keys(member)
    browser.find_element(By.CSS_SELECTOR, "#search button").click()
    wait.until(ec.presence_of_element_located((By.ID, "why")))
    why = get(f"{shop}/customers/{member}")
    shown_why = {
        dd.get_attribute("data-field"): dd.text
        for dd in browser.find_elements(By.CSS_SELECTOR, "#why dd[data-field]")
    }
    assert shown_why["customer_id"] == member
    assert shown_why["segment"] == why["segment"] == biggest
    assert shown_why["rule"].startswith(f"{biggest}: ")
    assert shown_why["frequency"].startswith(f"{why['rfm']['frequency']:g} orders")
    browser.find_element(By.ID, "customer").location_once_scrolled_into_view  # noqa: B018
    shoot(browser, tmp_path, "dashboard-customer")

    # a customer nobody has: the page says so
    box.clear()
    box.send_keys("nobody-like-this")
    browser.find_element(By.CSS_SELECTOR, "#search button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "customer"), "is not known"))
