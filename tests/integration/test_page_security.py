"""Hostile names and a read token, end to end: the CSV export and the page in a browser.

The simulator names two countries ``=HYPERLINK("x","y")`` (a spreadsheet formula) and
``<b>bold</b>`` (HTML). After a real job stores them, the JSON answer keeps both exactly,
the CSV export writes the formula as a quoted text cell, and the page, behind a read token
it asks for, shows both as text (never as HTML) and downloads the same CSV with the token.
Reuses :mod:`tests.integration.test_page`'s browser fixtures and helpers.
"""

import asyncio
import csv
import io
from datetime import date
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
from aio_pika.abc import AbstractRobustConnection
from playwright.async_api import Browser
from pydantic import SecretStr

from common.settings import Settings
from refsim import SimulatorConfig
from refsim.server import serve
from tests.integration.services import running, start_api, start_consumer
from tests.integration.test_page import DESKTOP, Watch, open_page, table_texts
from tests.integration.test_page import browser as browser  # noqa: PLC0414 - a fixture
from tests.integration.test_page import chromium as chromium  # noqa: PLC0414 - a fixture

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

FORMULA: Final = '=HYPERLINK("x","y")'
MARKUP: Final = "<b>bold</b>"
CONFIG: Final = SimulatorConfig(
    seed=23,
    cities=6,
    countries=3,
    records_min=20,
    records_max=80,
    latency_max=0.05,
    country_names=(FORMULA, MARKUP),
)
DAY: Final = date(2024, 2, 5)
READ: Final = "read me"
WRITE: Final = "write me"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def finished_job(http: aiohttp.ClientSession, url: str, job_id: str) -> dict[str, Any]:
    """Poll ``/jobs/<id>`` (with the read token) until the job is final."""
    async with asyncio.timeout(120):
        while True:
            async with http.get(f"{url}/jobs/{job_id}", headers=bearer(READ)) as response:
                job: dict[str, Any] = await response.json()
            if job["status"] in {"succeeded", "failed"}:
                return job
            await asyncio.sleep(0.1)  # polling interval of a status API, not synchronisation


def countries_in_csv(text: str) -> set[str]:
    return {row["country"] for row in csv.DictReader(io.StringIO(text, newline=""))}


async def test_hostile_country_names_stay_text_in_the_csv_and_the_page(
    settings: Settings, amqp: AbstractRobustConnection, browser: Browser, tmp_path: Path
) -> None:
    async with serve(CONFIG) as simulator:
        settings = settings.model_copy(
            update={
                "reference_url": simulator.url,
                "api_token": SecretStr(WRITE),
                "api_read_token": SecretStr(READ),
            }
        )
        api = await start_api(settings)
        consumer = await start_consumer(settings)
        async with running(api.service, consumer), aiohttp.ClientSession() as http:
            post = f"{api.url}/process-request?date={DAY}"
            async with http.post(post, headers=bearer(WRITE)) as response:
                assert response.status == 202, await response.text()
                job_id = (await response.json())["job_id"]
            job = await finished_job(http, api.url, job_id)
            assert job["status"] == "succeeded", job

            stats = f"{api.url}/country-stats?from={DAY}&to={DAY}"
            async with http.get(stats, headers=bearer(READ)) as response:
                names = {row["country"] for row in (await response.json())["stats"]}
            assert {FORMULA, MARKUP} <= names, "the JSON keeps every name exactly"
            async with http.get(f"{stats}&format=csv", headers=bearer(READ)) as response:
                exported = await response.text()
            assert "'" + FORMULA in countries_in_csv(exported)
            assert FORMULA not in countries_in_csv(exported)
            assert MARKUP in countries_in_csv(exported)
            assert '"\'=HYPERLINK(""x"",""y"")"' in exported, "a quoted text cell"

            watch = Watch(origin=api.url)
            watch.expected_statuses.add(401)  # the page's first reads, without the token
            page = await open_page(browser, api, watch, DESKTOP)
            await page.wait_for_selector("#stats-error:not([hidden])")
            assert "needs a token" in await page.inner_text("#stats-error")
            await page.fill("#token", READ)
            await page.press("#token", "Tab")  # leaving the field is what applies it
            await page.wait_for_selector("#stats-table tbody tr")
            shown = {row[1] for row in await table_texts(page)}
            assert {FORMULA, MARKUP} <= shown, shown
            assert await page.locator("#stats-table tbody b").count() == 0, "names are not HTML"
            assert await page.locator("#stats-table tbody a").count() == 0
            options = await page.eval_on_selector_all(
                "#range-country option", "options => options.map(o => o.textContent)"
            )
            assert {FORMULA, MARKUP} <= set(options)

            async with page.expect_download() as download_info:
                await page.click("#csv-link")
            download = await download_info.value
            saved = tmp_path / "export.csv"
            await download.save_as(saved)
            assert countries_in_csv(saved.read_text()) == countries_in_csv(exported)
            assert watch.errors == []
