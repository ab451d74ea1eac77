"""The analyst's page in a real browser, against the real stack.

Debian's Chromium (``/usr/bin/chromium``, or ``CHROMIUM``), driven by Playwright for
Python (never ``playwright install``: no browser download), loads the page served by a
real API process while a real consumer process, the real RabbitMQ, a Moto server over
HTTP and the simulator do the work. The tests request dates in the form, follow their
progress, and check what an analyst sees:

- the charts: axes that fit their labels (no ink on the canvas's outer pixels: a cut
  label would touch the edge), dates on the x axis as YYYY-MM-DD, the delay chart in
  minutes and scaled to its data (not from 0), accident marks in their country's colour;
- the default range (the dates with data, ending at the newest), the table (against the
  oracle, ``refsim.expected_stats``) and the CSV download;
- one format: YYYY-MM-DD dates, thousands separators (hover values too), delays as
  ``57 min 18 s`` with the seconds in the tooltip and in the CSV;
- the view in the URL (``?from=&to=&country=``), restored on load and on Back;
- an input error (typed or answered by the API) clears the earlier results;
- one truth for a running job: the progress table, Recent jobs, the date strip and the
  lists of dates say the same ("running, k of n"), never "missing" or "queued 0 of ?";
- a failed job's reason, as the API words it, in every view; a job waiting after a failed
  attempt says when it is tried next; a day fetched while running shows as partial;
- the token: asked for on a 401 (a write, or a read with ``BUSSTATS_API_READ_TOKEN``)
  and then sent with every request;
- the phone layout and the self-hosted API reference.

Any console error or uncaught exception fails a test, and so does any request to an
address other than the API's. Screenshots go to the test's temporary folder, or to
``PAGE_SCREENSHOTS`` when set (``PAGE_SCREENSHOTS=docs`` refreshes the README's pictures).
"""

import asyncio
import csv
import io
import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
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
# Enough records that the passengers axis reads "600,000": a label a fixed-width axis cuts.
CONFIG = SimulatorConfig(
    seed=22, cities=12, countries=4, records_min=3000, records_max=6000, latency_max=0.3
)
DAYS = [DAY + timedelta(days=n) for n in range(3)]  # seed 22: five accident rows among them
# Slow enough to watch a job run: one city at a time (the consumer's city_concurrency),
# each answering after 0.6 s.
SLOW = SimulatorConfig(
    seed=5, cities=8, countries=2, records_min=20, records_max=40, latency_min=0.6, latency_max=0.6
)
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
JOB_DEADLINE_MS = 120_000
DASH = "\u2013"  # between the ends of a run of missing dates
STEP_MS = 30_000
CHARTS = ("chart-passengers", "chart-buses", "chart-delay")
EDGE_PX = 2
"""Outer canvas pixels that must stay blank: a label that does not fit touches them."""
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
THOUSANDS = re.compile(r"\d{1,3}(,\d{3})*")
DELAY = re.compile(r"\d+ min \d{1,2} s")
RAW_EXCEPTION = re.compile(r"Traceback|\b[A-Z][A-Za-z]+(Error|Exception)\b|<class ")


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


async def open_page(
    browser: Browser, api: Api, watch: Watch, viewport: dict[str, int], path: str = "/"
) -> Page:
    context = await browser.new_context(viewport=viewport, accept_downloads=True)  # type: ignore[arg-type] # a ViewportSize TypedDict
    page = await context.new_page()
    page.on("console", watch.console)
    page.on("pageerror", watch.page_error)
    page.on("request", lambda request: watch.request(request.url))
    page.set_default_timeout(STEP_MS)
    await page.goto(f"{api.url}{path}")
    await page.wait_for_selector("body[data-ready='true']")
    return page


def fmt_delay(seconds: float) -> str:
    """The page's delay format: ``57 min 18 s`` (rounded to the second)."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def displayed(row: dict[str, Any]) -> list[str]:
    """A row of ``expected_stats`` as the page's table shows it."""
    return [
        row["date"],
        row["country"],
        f"{row['buses_started']:,}",
        f"{row['passengers']:,}",
        "yes" if row["accident"] else "no",
        fmt_delay(row["average_delay_seconds"]),
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


def in_ranges(day: date, ranges: list[str]) -> bool:
    """Whether ``day`` is in one of the page's runs of dates (first to last or one date)."""
    for text in ranges:
        first, _, last = text.partition(f" {DASH} ")
        if date.fromisoformat(first) <= day <= date.fromisoformat(last or first):
            return True
    return False


async def table_texts(page: Page) -> list[list[str]]:
    texts: list[list[str]] = await page.eval_on_selector_all(
        "#stats-table tbody tr",
        "rows => rows.map(r => [...r.cells].map(c => c.textContent.trim()))",
    )
    return texts


async def list_items(page: Page, selector: str) -> list[str]:
    items: list[str] = await page.eval_on_selector_all(
        f"{selector} li", "items => items.map(i => i.textContent.trim())"
    )
    return items


def query_of(page: Page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


async def request_dates(page: Page, days: list[date]) -> None:
    """Request ``days`` (consecutive) in the form; wait until each has its row."""
    await page.fill("#request-from", days[0].isoformat())
    await page.fill("#request-to", days[-1].isoformat())
    await page.click("#request-form button[type=submit]")
    await page.wait_for_function(
        "n => document.querySelectorAll('#progress-table tbody tr').length === n",
        arg=len(days),
    )


async def wait_for_jobs(page: Page, status: str, count: int) -> list[str]:
    """Wait until ``count`` rows of the progress table have ``status``; their job ids."""
    await page.wait_for_function(
        "([status, n]) => document.querySelectorAll("
        "`#progress-table tbody tr[data-status=${status}]`).length === n",
        arg=[status, count],
        timeout=JOB_DEADLINE_MS,
    )
    ids: list[str] = await page.eval_on_selector_all(
        "#progress-table tbody tr", "rows => rows.map(r => r.dataset.jobId)"
    )
    return ids


async def check_finished_jobs(page: Page, expected: list[dict[str, Any]]) -> list[str]:
    job_ids = await wait_for_jobs(page, "succeeded", len(DAYS))
    rows = await page.locator("#progress-table tbody tr").all()
    for day, row in zip(DAYS, rows, strict=True):
        cells = await row.locator("td").all_inner_texts()
        assert cells[0] == day.isoformat()
        assert cells[2] == "succeeded"
        assert f"{CONFIG.cities} of {CONFIG.cities}" in cells[3]
        records = sum(r["buses_started"] for r in expected if r["date"] == str(day))
        assert cells[4] == f"{records:,}"
        assert cells[6] == "0"  # retries
    return job_ids


async def check_statistics(page: Page, expected: list[dict[str, Any]]) -> None:
    """The default range: the dates with data (at most 30), ending at the newest."""
    await page.wait_for_selector(f"body[data-stats-to='{DAYS[-1]}'][data-charts='3']")
    assert await page.input_value("#range-from") == str(DAYS[0])
    assert await page.input_value("#range-to") == str(DAYS[-1])
    strip = await page.eval_on_selector_all(
        "#date-strip button", "cells => cells.map(c => [c.dataset.date, c.dataset.state])"
    )
    assert strip == [[str(day), "committed"] for day in DAYS]
    assert await page.locator("#missing-list").count() == 0
    for chart in CHARTS:
        assert await page.locator(f"#{chart} canvas").count() >= 1, chart
    assert await table_texts(page) == [displayed(r) for r in expected]
    delays = await page.eval_on_selector_all(
        "#stats-table tbody tr td:nth-child(6)",
        "cells => cells.map(c => [c.dataset.value, c.title])",
    )
    assert [float(raw) for raw, _ in delays] == [r["average_delay_seconds"] for r in expected]
    # The seconds, with separators, in the tooltip: "3,438.17 s".
    assert [title for _, title in delays] == [
        f"{r['average_delay_seconds']:,.2f} s" for r in expected
    ]


async def edge_ink(page: Page, chart: str) -> dict[str, int]:
    """Pixels with ink on each outer ``EDGE_PX`` band of the chart's canvas."""
    counts: dict[str, int] = await page.eval_on_selector(
        f"#{chart} canvas",
        """(canvas, edge) => {
            const { width, height } = canvas;
            const ctx = canvas.getContext('2d');
            const inked = (x, y, w, h) => {
                const data = ctx.getImageData(x, y, w, h).data;
                let n = 0;
                for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n += 1;
                return n;
            };
            return {
                left: inked(0, 0, edge, height), right: inked(width - edge, 0, edge, height),
                top: inked(0, 0, width, edge), bottom: inked(0, height - edge, width, edge),
            };
        }""",
        EDGE_PX,
    )
    return counts


async def check_charts(page: Page, expected: list[dict[str, Any]]) -> None:
    """Labels fit, dates as YYYY-MM-DD, delays in minutes from their data, marks coloured."""
    for chart in CHARTS:
        ink = await edge_ink(page, chart)
        assert ink == {"left": 0, "right": 0, "top": 0, "bottom": 0}, (chart, ink)
        x_labels = json.loads(await page.get_attribute(f"#{chart}", "data-x-labels") or "[]")
        assert x_labels, chart
        assert all(ISO_DATE.fullmatch(label) for label in x_labels), x_labels
        y_labels = json.loads(await page.get_attribute(f"#{chart}", "data-y-labels") or "[]")
        assert all(re.fullmatch(r"\d{1,3}(,\d{3})*(\.\d+)?", label) for label in y_labels)
    # The widest passengers label has six digits: the one a fixed 60 px axis cut.
    labels = json.loads(await page.get_attribute("#chart-passengers", "data-y-labels") or "[]")
    assert any(len(label) >= len("600,000") for label in labels), labels

    # Delay: minutes, scaled to the data.
    y_min = float(await page.get_attribute("#chart-delay", "data-y-min") or "nan")
    y_max = float(await page.get_attribute("#chart-delay", "data-y-max") or "nan")
    minutes = [r["average_delay_seconds"] / 60 for r in expected]
    assert 0 < y_min <= min(minutes) <= max(minutes) <= y_max, (y_min, y_max, minutes)
    assert y_max - y_min < 2 * (max(minutes) - min(minutes)) + 2, (y_min, y_max)

    # Each ▲ in the colour of its country's line (its legend marker's border).
    for chart in CHARTS:
        marks = json.loads(await page.get_attribute(f"#{chart}", "data-marks") or "[]")
        assert len(marks) == sum(1 for r in expected if r["accident"]), chart
        series = await page.eval_on_selector_all(
            f"#{chart} .u-legend .u-series",
            "rows => rows.slice(1).map(r => [r.querySelector('.u-label').textContent, "
            "getComputedStyle(r.querySelector('.u-marker')).borderColor])",
        )
        colour_of = dict(series)
        checked = 0
        for n, mark in enumerate(marks):
            hidden_by_later = any(
                abs(other["x"] - mark["x"]) < 2 * mark["size"]
                and abs(other["y"] - mark["y"]) < 2 * mark["size"]
                for other in marks[n + 1 :]
            )
            if hidden_by_later:
                continue
            pixel = await page.eval_on_selector(
                f"#{chart} canvas",
                "(c, [x, y]) => [...c.getContext('2d').getImageData(x, y, 1, 1).data]",
                [round(mark["x"]), round(mark["y"] + 0.4 * mark["size"])],
            )
            red, green, blue, _ = pixel
            assert colour_of[mark["country"]] == f"rgb({red}, {green}, {blue})", (chart, mark)
            checked += 1
        assert checked > 0, chart


async def check_hover(page: Page) -> None:
    """Hover values: the date as YYYY-MM-DD, counts with separators, delays in min and s."""
    for chart, pattern in (
        ("chart-passengers", THOUSANDS),
        ("chart-buses", THOUSANDS),
        ("chart-delay", DELAY),
    ):
        box = await page.locator(f"#{chart} .u-over").bounding_box()
        assert box is not None
        await page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        values = await page.eval_on_selector_all(
            f"#{chart} .u-legend .u-series .u-value", "cells => cells.map(c => c.textContent)"
        )
        assert values[0] == str(DAYS[1]), (chart, values)
        assert values[1:], chart
        assert all(pattern.fullmatch(value) for value in values[1:]), (chart, values)


async def check_recent_jobs(page: Page, job_ids: list[str]) -> None:
    """Listed newest first; a status filter that matches none of them empties the list."""
    for job_id in job_ids:
        await page.wait_for_selector(f"#jobs-table tr[data-job-id='{job_id}']")
    listed = await page.eval_on_selector_all(
        "#jobs-table tbody tr", "rows => rows.map(r => r.dataset.jobId)"
    )
    assert listed == list(reversed(job_ids))
    created = await page.eval_on_selector_all(
        "#jobs-table tbody tr td:first-child", "cells => cells.map(c => c.textContent)"
    )
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", text) for text in created)
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
    assert csv_rows(text) == expected  # the delays in seconds, as stored


async def show_range(page: Page, start: date, end: date) -> None:
    await page.fill("#range-from", start.isoformat())
    await page.fill("#range-to", end.isoformat())
    await page.click("#range-form button[type=submit]")


async def check_chosen_range(page: Page, expected: list[dict[str, Any]]) -> tuple[date, date]:
    """Two missing dates on each side of the data: listed, gaps in the charts, in the URL."""
    start, end = DAYS[0] - timedelta(days=2), DAYS[-1] + timedelta(days=2)
    await show_range(page, start, end)
    await page.wait_for_selector(f"body[data-stats-from='{start}'][data-charts='3']")
    assert await table_texts(page) == [displayed(r) for r in expected]
    missing = await list_items(page, "#missing-list")
    assert f"{start} {DASH} {DAYS[0] - timedelta(days=1)}" in missing
    assert f"{DAYS[-1] + timedelta(days=1)} {DASH} {end}" in missing
    assert query_of(page) == {"from": [str(start)], "to": [str(end)]}
    return start, end


async def check_url_state(
    browser: Browser, api: Api, watch: Watch, page: Page, expected: list[dict[str, Any]]
) -> None:
    """The view is in the URL: a country choice adds it; the URL alone restores the view;
    Back returns to the previous view."""
    start, end = DAYS[0] - timedelta(days=2), DAYS[-1] + timedelta(days=2)
    country = sorted({r["country"] for r in expected})[1]
    await page.select_option("#range-country", country)
    await page.wait_for_function(
        "n => document.querySelectorAll('#stats-table tbody tr').length === n",
        arg=sum(1 for r in expected if r["country"] == country),
    )
    assert query_of(page) == {"from": [str(start)], "to": [str(end)], "country": [country]}
    only = [displayed(r) for r in expected if r["country"] == country]
    assert await table_texts(page) == only

    shared = await open_page(browser, api, watch, DESKTOP, path=f"/?{urlsplit(page.url).query}")
    await shared.wait_for_selector(f"body[data-stats-from='{start}'][data-charts='3']")
    assert await shared.input_value("#range-from") == str(start)
    assert await shared.input_value("#range-to") == str(end)
    assert await shared.input_value("#range-country") == country
    assert await table_texts(shared) == only
    await shared.context.close()

    await page.go_back()
    await page.wait_for_function(
        "n => document.querySelectorAll('#stats-table tbody tr').length === n", arg=len(expected)
    )
    assert await page.input_value("#range-country") == ""
    assert query_of(page) == {"from": [str(start)], "to": [str(end)]}


async def check_errors_clear_results(page: Page, watch: Watch) -> None:
    """A typed error and an error answered by the API both leave no old results."""
    assert await page.locator("#stats-table tbody tr").count() > 0
    await show_range(page, DAYS[0], DAYS[-1])
    await page.fill("#range-from", "01/03/2024")
    await page.click("#range-form button[type=submit]")
    await page.wait_for_selector("#stats-error:not([hidden])")
    assert "YYYY-MM-DD" in await page.inner_text("#stats-error")
    await assert_no_results(page)

    await show_range(page, DAYS[-1], DAYS[0])  # from after to
    await page.wait_for_selector("#stats-error:not([hidden])")
    assert "must not be after" in await page.inner_text("#stats-error")
    await assert_no_results(page)

    # Back to results, then a range the API refuses (longer than BUSSTATS_MAX_RANGE_DAYS).
    await show_range(page, DAYS[0], DAYS[-1])
    await page.wait_for_selector(f"body[data-stats-from='{DAYS[0]}'][data-charts='3']")
    watch.expected_statuses.add(400)
    await show_range(page, DAYS[0] - timedelta(days=400), DAYS[-1])
    await page.wait_for_selector("#stats-error:not([hidden])")
    assert "Could not load the statistics" in await page.inner_text("#stats-error")
    await assert_no_results(page)


async def assert_no_results(page: Page) -> None:
    assert await page.locator("#stats-table tbody tr").count() == 0
    assert await page.locator("#date-strip button").count() == 0
    assert await page.is_hidden("#charts")
    assert await page.is_hidden("#csv-link")
    assert await page.get_attribute("body", "data-stats-failed") == "true"


async def check_phone(phone: Page) -> None:
    await phone.wait_for_selector(f"body[data-stats-to='{DAYS[-1]}'][data-charts='3']")
    overflow = await phone.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    width = await phone.eval_on_selector("#chart-passengers canvas", "c => c.clientWidth")
    assert 200 < width <= PHONE["width"]
    for chart in CHARTS:
        ink = await edge_ink(phone, chart)
        assert ink == {"left": 0, "right": 0, "top": 0, "bottom": 0}, (chart, ink)


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
            assert await page.get_attribute("#range-from", "type") == "text"

            await request_dates(page, DAYS)
            job_ids = await check_finished_jobs(page, expected)
            await check_statistics(page, expected)
            await check_charts(page, expected)
            await check_hover(page)
            await check_recent_jobs(page, job_ids)
            await check_csv(page, expected)
            await page.mouse.move(0, 0)
            await page.select_option("#jobs-status", "")
            await page.wait_for_function(
                "n => document.querySelectorAll('#jobs-table tbody tr').length === n",
                arg=len(job_ids),
            )
            await page.screenshot(path=shots / "page-desktop.png", full_page=True)

            await check_chosen_range(page, expected)
            await check_url_state(browser, api, watch, page, expected)
            await check_errors_clear_results(page, watch)

            phone = await open_page(browser, api, watch, PHONE)
            await check_phone(phone)
            await phone.screenshot(path=shots / "page-phone.png", full_page=True)

            await check_docs(page, api)
            assert watch.errors == []


async def views_of(page: Page, job_id: str) -> dict[str, Any]:
    """What each view says of a job, read at one instant (one task of the page's loop)."""
    views: dict[str, Any] = await page.evaluate(
        """(id) => {
            const pick = (selector) => {
                const node = document.querySelector(selector);
                return node && { status: node.dataset.status, done: node.dataset.done,
                    total: node.dataset.total, date: node.dataset.date || null,
                    state: node.dataset.state || null, text: node.textContent.trim(),
                    title: node.title || null };
            };
            return {
                progress: pick(`#progress-table tr[data-job-id="${id}"]`),
                recent: pick(`#jobs-table tr[data-job-id="${id}"]`),
                strip: pick(`#date-strip button[data-job-id="${id}"]`),
                fetching: pick(`#running-list li[data-job-id="${id}"]`),
                missing: [...document.querySelectorAll('#missing-list li')]
                    .map((li) => li.textContent.trim()),
            };
        }""",
        job_id,
    )
    return views


async def test_every_view_tells_the_same_progress_while_a_job_runs(
    settings: Settings, amqp: AbstractRobustConnection, browser: Browser
) -> None:
    days = [DAY, DAY + timedelta(days=1)]
    async with serve(SLOW) as simulator:
        settings = settings.model_copy(
            update={"reference_url": simulator.url, "city_concurrency": 1}
        )
        api = await start_api(settings)
        consumer = await start_consumer(settings)
        async with running(api.service, consumer):
            watch = Watch(origin=api.url)
            path = f"/?from={DAY}&to={DAY + timedelta(days=6)}"
            page = await open_page(browser, api, watch, DESKTOP, path=path)
            await page.wait_for_selector("#missing-list")
            await request_dates(page, days)
            # A moment when a job is half done: every view must say so, the same way.
            await page.wait_for_function(
                "() => [...document.querySelectorAll('#progress-table tr[data-status=running]')]"
                ".some(r => +r.dataset.done > 0 && +r.dataset.done < +r.dataset.total)",
                timeout=JOB_DEADLINE_MS,
            )
            row = page.locator("#progress-table tr[data-status=running]").first
            job_id = await row.get_attribute("data-job-id") or ""
            views = await views_of(page, job_id)
            progress = views["progress"]
            done, total = progress["done"], progress["total"]
            assert 0 < int(done) < int(total) == SLOW.cities
            for name in ("progress", "recent", "strip", "fetching"):
                view = views[name]
                assert view is not None, (name, views)
                assert (view["status"], view["done"], view["total"]) == ("running", done, total), (
                    name,
                    views,
                )
            assert f"{done} of {total}" in views["progress"]["text"]
            assert f"{done} of {total}" in views["recent"]["text"]
            assert views["strip"]["state"] == "running"
            assert f"running, {done} of {total} cities" in views["strip"]["title"]
            assert f"running, {done} of {total} cities" in views["fetching"]["text"]
            running_day = date.fromisoformat(views["fetching"]["date"])
            assert not in_ranges(running_day, views["missing"]), views["missing"]

            # Both end; the strip and the lists follow without a reload.
            await wait_for_jobs(page, "succeeded", len(days))
            for day in days:
                await page.wait_for_selector(
                    f"#date-strip button[data-date='{day}'][data-state='committed']"
                )
            assert await page.locator("#running-list").count() == 0
            recent = await page.eval_on_selector_all(
                "#jobs-table tbody tr", "rows => rows.map(r => r.dataset.status)"
            )
            assert recent == ["succeeded"] * len(days)

            # Today, fetched while it runs: shown as partial wherever it appears.
            today = datetime.now(UTC).date()
            url = f"{api.url}/process-request?date={today}&allow_partial=true"
            async with aiohttp.ClientSession() as http, http.post(url) as answer:
                assert answer.status == 202, await answer.text()
            await page.goto(f"{api.url}/?from={today}&to={today}")
            await page.wait_for_selector(
                f"#date-strip button[data-date='{today}'][data-state='committed']"
                "[data-partial='true']",
                timeout=JOB_DEADLINE_MS,
            )
            assert await list_items(page, "#partial-list") == [str(today)]
            await page.wait_for_selector("#stats-table tbody tr")
            dates = await page.eval_on_selector_all(
                "#stats-table tbody td:first-child", "cells => cells.map(c => c.textContent)"
            )
            assert dates
            assert all(text == f"{today} partial" for text in dates), dates
            assert watch.errors == []


async def test_a_failed_job_says_why_in_every_view(
    settings: Settings, amqp: AbstractRobustConnection, browser: Browser
) -> None:
    config = SimulatorConfig(
        seed=3, cities=3, countries=1, records_min=5, records_max=10, latency_max=0.0,
        fail_permanently=frozenset({1}),
    )  # fmt: skip
    async with serve(config) as simulator:
        settings = settings.model_copy(
            update={"reference_url": simulator.url, "retry_attempts": 1, "delivery_limit": 1}
        )
        api = await start_api(settings)
        consumer = await start_consumer(settings)
        async with running(api.service, consumer):
            watch = Watch(origin=api.url)
            page = await open_page(browser, api, watch, DESKTOP, path=f"/?from={DAY}&to={DAY}")
            await request_dates(page, [DAY])
            (job_id,) = await wait_for_jobs(page, "failed", 1)
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{api.url}/jobs/{job_id}") as answer,
            ):
                reason = (await answer.json())["error"]
            assert reason
            await page.wait_for_selector(f"#failed-list li[data-job-id='{job_id}']")
            assert await list_items(page, "#failed-list") == [f"{DAY}: {reason}"]
            cell = page.locator(f"#date-strip button[data-date='{DAY}']")
            assert await cell.get_attribute("data-state") == "failed"
            assert reason in (await cell.get_attribute("title") or "")
            progress = await page.locator(
                f"#progress-table tr[data-job-id='{job_id}'] td"
            ).all_inner_texts()
            assert progress[-1] == reason
            await page.wait_for_selector(
                f"#jobs-table tr[data-job-id='{job_id}'][data-status=failed]"
            )
            recent = await page.locator(
                f"#jobs-table tr[data-job-id='{job_id}'] td"
            ).all_inner_texts()
            assert recent[-1] == reason
            assert watch.errors == []
            assert not RAW_EXCEPTION.search(reason), f"the API's reason is not in words: {reason}"


async def test_a_job_waiting_to_retry_says_when(
    settings: Settings, amqp: AbstractRobustConnection, browser: Browser
) -> None:
    """Every city fails its first attempt: the job waits (queued, ``next_attempt_at``) and
    every view says when it is tried again; then it succeeds."""
    config = SimulatorConfig(
        seed=4, cities=3, countries=1, records_min=5, records_max=10, latency_max=0.0,
        fail_rate=1.0, fail_attempts=1,
    )  # fmt: skip
    async with serve(config) as simulator:
        settings = settings.model_copy(
            update={
                "reference_url": simulator.url,
                "retry_attempts": 1,
                "retry_delays_seconds": "15",
            }
        )
        api = await start_api(settings)
        consumer = await start_consumer(settings)
        async with running(api.service, consumer):
            watch = Watch(origin=api.url)
            page = await open_page(browser, api, watch, DESKTOP, path=f"/?from={DAY}&to={DAY}")
            await request_dates(page, [DAY])
            waiting = "#progress-table tr[data-status=queued] td.error-cell"
            await page.wait_for_function(
                f"() => document.querySelector('{waiting}')?.textContent.startsWith('next')",
                timeout=JOB_DEADLINE_MS,
            )
            (job_id,) = await page.eval_on_selector_all(
                "#progress-table tbody tr", "rows => rows.map(r => r.dataset.jobId)"
            )
            views = await views_of(page, job_id)
            note = await page.inner_text(waiting)
            assert re.fullmatch(r"next attempt at \d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC", note)
            assert views["strip"]["state"] == "queued"
            assert f"queued, {note}" in views["strip"]["title"]
            assert views["fetching"]["text"] == f"{DAY}: queued, {note}"
            await wait_for_jobs(page, "succeeded", 1)
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
        await page.wait_for_selector(
            "#progress-table tbody tr[data-job-id], #request-error:not([hidden])"
        )
        assert await page.is_hidden("#request-error"), await page.inner_text("#request-error")
        kept = await page.evaluate("sessionStorage.getItem('bus-stats.token')")
        assert kept == "s3cret token"
        # The field never shows it in clear.
        assert await page.get_attribute("#token", "type") == "password"
        assert watch.errors == []


async def test_the_page_asks_for_the_read_token_and_sends_it_on_every_read(
    settings: Settings, amqp: AbstractRobustConnection, browser: Browser
) -> None:
    settings = settings.model_copy(update={"api_read_token": SecretStr("reader")})
    api = await start_api(settings)
    async with running(api.service):
        watch = Watch(origin=api.url, expected_statuses={401})
        reads: list[tuple[str, str | None]] = []
        page = await open_page(browser, api, watch, DESKTOP)
        await page.wait_for_selector("#stats-error:not([hidden])")
        assert "needs a token to read" in await page.inner_text("#stats-error")
        assert await page.get_attribute("#token-box", "open") is not None
        page.on(
            "request",
            lambda request: reads.append((request.url, request.headers.get("authorization"))),
        )
        await page.fill("#token", "reader")
        await page.dispatch_event("#token", "change")
        await page.wait_for_selector("body[data-stats-failed='false']")
        assert await page.is_hidden("#stats-error")
        api_reads = [(url, auth) for url, auth in reads if "/static/" not in url]
        assert api_reads
        assert all(auth == "Bearer reader" for _, auth in api_reads), api_reads
        assert watch.errors == []
