"""The analyst's page in a real browser, against the real stack.

Debian's Chromium (``/usr/bin/chromium``, or ``CHROMIUM``), driven by Playwright for
Python (never ``playwright install``: no browser download), loads the page served by a
real API process while a real consumer process, the real RabbitMQ, a Moto server over
HTTP and the simulator do the work. The test requests a date in the form, follows its
progress to the end, and checks the charts, the table (against the oracle,
``refsim.expected_stats``), the CSV download, the recent jobs, the phone layout and the
self-hosted API reference; any console error or uncaught exception fails it, and so does
any request to an address other than the API's.

Screenshots go to the test's temporary folder, or to ``PAGE_SCREENSHOTS`` when set
(``PAGE_SCREENSHOTS=docs`` refreshes the README's pictures).
"""

import asyncio
import csv
import io
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from aio_pika.abc import AbstractRobustConnection
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright
from playwright.async_api import Error as PlaywrightError
from pydantic import SecretStr

from common.settings import Settings
from refsim import SimulatorConfig, expected_stats
from refsim.server import serve
from tests.integration.services import Api, running, start_api, start_consumer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DAY = date(2024, 1, 1)
CONFIG = SimulatorConfig(
    seed=22, cities=12, countries=4, records_min=50, records_max=300, latency_max=0.3
)
DAYS = [DAY + timedelta(days=n) for n in range(3)]  # seed 22: two accident days among them
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
JOB_DEADLINE_MS = 120_000
DASH = "\u2013"  # between the ends of a run of missing dates
STEP_MS = 30_000


@dataclass
class Watch:
    """What the browser reported that a user would see as broken."""

    origin: str
    errors: list[str] = field(default_factory=list)
    expected_statuses: set[int] = field(default_factory=set)
    """HTTP statuses the test provokes on purpose (Chromium logs each as a console error)."""

    def console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        provoked = any(f"status of {status} " in message.text for status in self.expected_statuses)
        if not provoked:
            self.errors.append(f"console: {message.text} at {message.location}")

    def page_error(self, error: PlaywrightError) -> None:
        self.errors.append(f"uncaught: {error}")

    def request(self, url: str) -> None:
        if not url.startswith((self.origin, "data:", "blob:")):
            self.errors.append(f"request outside the API: {url}")


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium is not at {CHROMIUM}: install it with `apt-get install -y chromium` "
            "(.ci/run does), or point CHROMIUM at one",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


def screenshot_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("PAGE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def open_page(browser: Browser, api: Api, watch: Watch, viewport: dict[str, int]) -> Page:
    context = await browser.new_context(viewport=viewport, accept_downloads=True)  # type: ignore[arg-type] # a ViewportSize TypedDict
    page = await context.new_page()
    page.on("console", watch.console)
    page.on("pageerror", watch.page_error)
    page.on("request", lambda request: watch.request(request.url))
    page.set_default_timeout(STEP_MS)
    await page.goto(f"{api.url}/")
    await page.wait_for_selector("body[data-ready='true']")
    return page


def displayed(row: dict[str, Any]) -> list[str]:
    """A row of ``expected_stats`` as the page's table shows it."""
    return [
        row["date"],
        row["country"],
        f"{row['buses_started']:,}",
        f"{row['passengers']:,}",
        "yes" if row["accident"] else "no",
        f"{row['average_delay_seconds']:.2f}",
    ]


def csv_rows(text: str) -> list[dict[str, Any]]:
    return [
        {
            "date": raw["date"],
            "country": raw["country"],
            "buses_started": int(raw["buses_started"]),
            "passengers": int(raw["passengers"]),
            "accident": raw["accident"].strip().lower() in {"true", "1", "yes"},
            "average_delay_seconds": float(raw["average_delay_seconds"]),
        }
        for raw in csv.DictReader(io.StringIO(text))
    ]


async def table_texts(page: Page) -> list[list[str]]:
    texts: list[list[str]] = await page.eval_on_selector_all(
        "#stats-table tbody tr",
        "rows => rows.map(r => [...r.cells].map(c => c.textContent.trim()))",
    )
    return texts


async def request_dates(page: Page, expected: list[dict[str, Any]]) -> list[str]:
    """Request ``DAYS`` in the form; follow every job to the end; their ids."""
    await page.fill("#request-from", DAYS[0].isoformat())
    await page.fill("#request-to", DAYS[-1].isoformat())
    await page.click("#request-form button[type=submit]")
    await page.wait_for_function(
        "n => document.querySelectorAll('#progress-table tbody tr').length === n",
        arg=len(DAYS),
    )
    await page.wait_for_function(
        "n => document.querySelectorAll("
        "'#progress-table tbody tr[data-status=succeeded]').length === n",
        arg=len(DAYS),
        timeout=JOB_DEADLINE_MS,
    )
    rows = await page.locator("#progress-table tbody tr").all()
    job_ids: list[str] = []
    for day, row in zip(DAYS, rows, strict=True):
        cells = await row.locator("td").all_inner_texts()
        assert cells[0] == day.isoformat()
        assert cells[2] == "succeeded"
        assert f"{CONFIG.cities} of {CONFIG.cities}" in cells[3]
        records = sum(r["buses_started"] for r in expected if r["date"] == str(day))
        assert cells[4] == f"{records:,}"
        assert cells[6] == "0"  # retries
        job_ids.append(await row.get_attribute("data-job-id") or "")
    return job_ids


async def check_statistics(page: Page, expected: list[dict[str, Any]]) -> None:
    """The default range (30 days ending at the newest data): charts, table, gaps."""
    last = DAYS[-1]
    await page.wait_for_selector(f"body[data-stats-to='{last}'][data-charts='3']")
    assert await page.input_value("#range-from") == str(last - timedelta(days=29))
    for chart in ("chart-passengers", "chart-buses", "chart-delay"):
        assert await page.locator(f"#{chart} canvas").count() >= 1, chart
    assert await table_texts(page) == [displayed(r) for r in expected]
    raw_delays = await page.eval_on_selector_all(
        "#stats-table tbody tr td:nth-child(6)", "cells => cells.map(c => c.dataset.value)"
    )
    assert [float(v) for v in raw_delays] == [r["average_delay_seconds"] for r in expected]
    missing = await page.inner_text("#missing-list")
    assert f"{last - timedelta(days=29)} {DASH} {DAYS[0] - timedelta(days=1)}" in missing
    for day in DAYS:
        cell = page.locator(f"#date-strip button[data-date='{day}']")
        assert await cell.get_attribute("data-state") == "committed"


async def check_recent_jobs(page: Page, job_ids: list[str]) -> None:
    """Listed newest first; a status filter that matches none of them empties the list."""
    for job_id in job_ids:
        await page.wait_for_selector(f"#jobs-table tr[data-job-id='{job_id}']")
    listed = await page.eval_on_selector_all(
        "#jobs-table tbody tr", "rows => rows.map(r => r.dataset.jobId)"
    )
    assert listed == list(reversed(job_ids))
    await page.select_option("#jobs-status", "failed")
    await page.wait_for_selector("#jobs-empty", state="visible")
    await page.select_option("#jobs-status", "succeeded")
    await page.wait_for_selector(f"#jobs-table tr[data-job-id='{job_ids[0]}']")


async def check_csv(page: Page, expected: list[dict[str, Any]]) -> None:
    async with page.expect_download() as download_info:
        await page.click("#csv-link")
    download = await download_info.value
    text = await asyncio.to_thread(Path(await download.path()).read_text, encoding="utf-8")
    assert text.splitlines()[0].strip() == (
        "date,country,buses_started,passengers,accident,average_delay_seconds"
    )
    assert csv_rows(text) == expected


async def check_chosen_range(page: Page, expected: list[dict[str, Any]]) -> None:
    """Two missing dates on each side of the data: listed, and gaps in the charts."""
    start, end = DAYS[0] - timedelta(days=2), DAYS[-1] + timedelta(days=2)
    await page.fill("#range-from", start.isoformat())
    await page.fill("#range-to", end.isoformat())
    await page.click("#range-form button[type=submit]")
    await page.wait_for_selector(f"body[data-stats-from='{start}'][data-charts='3']")
    assert await table_texts(page) == [displayed(r) for r in expected]
    missing = await page.inner_text("#missing-list")
    assert f"{start} {DASH} {DAYS[0] - timedelta(days=1)}" in missing
    assert f"{DAYS[-1] + timedelta(days=1)} {DASH} {end}" in missing


async def check_phone(phone: Page) -> None:
    await phone.wait_for_selector(f"body[data-stats-to='{DAYS[-1]}'][data-charts='3']")
    overflow = await phone.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    width = await phone.eval_on_selector("#chart-passengers canvas", "c => c.clientWidth")
    assert 200 < width <= PHONE["width"]


async def check_docs(page: Page, api: Api) -> None:
    """The API reference renders from the API's own files (no CDN)."""
    await page.goto(f"{api.url}/docs")
    await page.wait_for_selector(".swagger-ui .info .title")
    assert "bus-stats" in await page.inner_text(".swagger-ui .info .title")
    await page.wait_for_selector(".opblock-summary-path[data-path='/dates']")


async def test_the_page_requests_dates_and_shows_their_statistics(
    settings: Settings, amqp: AbstractRobustConnection, browser: Browser, tmp_path: Path
) -> None:
    expected = expected_stats(CONFIG, DAYS)
    assert any(row["accident"] for row in expected)
    shots = screenshot_dir(tmp_path)
    async with serve(CONFIG) as simulator:
        settings = settings.model_copy(update={"reference_url": simulator.url})
        api = await start_api(settings)
        consumer = await start_consumer(settings)
        async with running(api.service, consumer):
            watch = Watch(origin=api.url)
            page = await open_page(browser, api, watch, DESKTOP)
            # Nothing committed yet: the last 30 days, all missing, no charts.
            assert await page.is_visible("#no-data")
            assert await page.eval_on_selector_all("#date-strip button", "b => b.length") == 30

            job_ids = await request_dates(page, expected)
            await check_statistics(page, expected)
            await check_recent_jobs(page, job_ids)
            await check_csv(page, expected)
            await check_chosen_range(page, expected)
            await page.screenshot(path=shots / "page-desktop.png", full_page=True)

            phone = await open_page(browser, api, watch, PHONE)
            await check_phone(phone)
            await phone.screenshot(path=shots / "page-phone.png", full_page=True)

            await check_docs(page, api)
            assert watch.errors == []


async def test_the_form_asks_for_the_token_when_the_api_has_one(
    settings: Settings, amqp: AbstractRobustConnection, browser: Browser
) -> None:
    settings = settings.model_copy(update={"api_token": SecretStr("s3cret token")})
    api = await start_api(settings)
    async with running(api.service):
        watch = Watch(origin=api.url)
        page = await open_page(browser, api, watch, DESKTOP)
        watch.expected_statuses.add(401)  # the first request, without the token
        await page.fill("#request-from", DAYS[0].isoformat())
        await page.click("#request-form button[type=submit]")
        await page.wait_for_selector("#request-error:not([hidden])")
        assert "needs a token" in await page.inner_text("#request-error")
        assert await page.get_attribute("#token-box", "open") is not None
        await page.fill("#token", "s3cret token")
        await page.click("#request-form button[type=submit]")
        await page.wait_for_selector("#progress-table tbody tr[data-job-id]")
        assert await page.is_hidden("#request-error")
        kept = await page.evaluate("sessionStorage.getItem('bus-stats.token')")
        assert kept == "s3cret token"
        # The field never shows it in clear.
        assert await page.get_attribute("#token", "type") == "password"
        assert watch.errors == []
