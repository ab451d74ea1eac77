"""``GET /jobs``, ``GET /dates``, the bearer token, CORS and the OpenAPI document.

The app runs through ``app.test_app()`` (its lifecycle opens the Moto server and the real
broker); job states, index entries, claims and manifests are written to S3 directly with
:mod:`common.jobs`, as the API and the consumers write them.
"""

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from aio_pika.abc import AbstractRobustConnection
from openapi_spec_validator import validate
from pydantic import SecretStr
from quart.typing import TestClientProtocol as Client

from common.jobs import DateLedger, JobStore, ManifestStore
from common.layout import Layout
from common.models import CityObject, Claim, JobState, JobStatus, Manifest
from common.settings import Settings
from common.storage import S3Store
from producer.app import create_app

pytestmark = pytest.mark.integration

DAY = date(2024, 1, 10)
T0 = datetime(2024, 2, 1, 12, 0, tzinfo=UTC)
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
async def make_client(
    settings: Settings, amqp: AbstractRobustConnection
) -> AsyncIterator[MakeClient]:
    """A test client of an app built with ``settings`` plus overrides; closed afterwards."""
    opened: list[Any] = []

    async def make(**overrides: Any) -> Client:
        app = create_app(settings.model_copy(update=overrides))
        test_app = app.test_app()
        await test_app.startup()
        opened.append(test_app)
        return test_app.test_client()

    yield make
    for test_app in opened:
        await test_app.shutdown()


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


async def add_job(
    store: S3Store,
    day: date,
    status: JobStatus,
    created: datetime,
    *,
    error: str | None = None,
    claim: bool = True,
) -> JobState:
    """A job as the API writes it (state, index entry, the date's claim)."""
    jobs, ledger = JobStore(store, Layout()), DateLedger(store, Layout())
    state, etag = await ledger.read(day)
    job = JobState.queued(uuid.uuid4().hex, day, force=False).model_copy(
        update={
            "status": status,
            "error": error,
            "created_at": created,
            "updated_at": created,
            "generation": state.top_generation + 1,
        }
    )
    await jobs.create(job)
    await jobs.index(job)
    if claim:
        new_claim = Claim(job_id=job.job_id, generation=job.generation)
        await ledger.swap(state.model_copy(update={"claim": new_claim}), etag)
    return job


async def commit(store: S3Store, job: JobState, records: int) -> Manifest:
    manifest = Manifest(
        date=job.date,
        job_id=job.job_id,
        run_id=uuid.uuid4().hex,
        fetched_at=job.created_at + timedelta(minutes=1),
        cities=[
            CityObject(
                city_id=n,
                name=f"city {n}",
                country="X",
                key=f"data/date={job.date}/city={n}.jsonl{suffix}",
                etag='"e"',
                records=records,
                bytes=100 * records,
                codec=codec,
                stored_bytes=stored_bytes,
            )
            # an object from before codecs (no stored_bytes: as many as its lines) and one
            # compressed ten times
            for n, codec, suffix, stored_bytes in [
                (0, "none", "", None),
                (1, "zstd", ".zst", 10 * records),
            ]
        ],
    )
    await ManifestStore(store, Layout()).commit(manifest, None)
    return manifest


async def get_json(client: Client, path: str, status: int = 200) -> Any:
    response = await client.get(path)
    assert response.status_code == status, await response.get_data()
    return await response.get_json()


# --- GET /jobs --------------------------------------------------------------------------


async def test_jobs_are_listed_newest_first_in_pages(client: Client, store: S3Store) -> None:
    made = [
        await add_job(store, DAY + timedelta(days=n % 3), "succeeded", T0 + timedelta(minutes=n))
        for n in range(7)
    ]
    newest_first = [job.job_id for job in reversed(made)]
    seen: list[str] = []
    cursor = ""
    for _ in range(4):
        page = await get_json(client, f"/jobs?limit=3&cursor={cursor}")
        seen.extend(job["job_id"] for job in page["jobs"])
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert seen == newest_first
    whole = await get_json(client, "/jobs")
    assert [job["job_id"] for job in whole["jobs"]] == newest_first
    assert whole["next_cursor"] is None
    assert whole["jobs"][0]["status"] == "succeeded"


async def test_jobs_filter_by_status_and_date(client: Client, store: S3Store) -> None:
    failed = await add_job(store, DAY, "failed", T0, error="city 3 failed after 5 attempt(s)")
    running = await add_job(store, DAY + timedelta(days=1), "running", T0 + timedelta(seconds=1))
    done = await add_job(store, DAY, "succeeded", T0 + timedelta(seconds=2))
    by_status = await get_json(client, "/jobs?status=failed")
    assert [job["job_id"] for job in by_status["jobs"]] == [failed.job_id]
    assert by_status["jobs"][0]["error"].startswith("city 3 failed")
    by_date = await get_json(client, f"/jobs?date={DAY}")
    assert [job["job_id"] for job in by_date["jobs"]] == [done.job_id, failed.job_id]
    both = await get_json(client, f"/jobs?date={DAY + timedelta(days=1)}&status=running")
    assert [job["job_id"] for job in both["jobs"]] == [running.job_id]
    none = await get_json(client, f"/jobs?date={DAY}&status=queued")
    assert none == {"jobs": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=done", "'status' must be one of queued, running, succeeded, failed"),
        ("limit=0", "'limit'"),
        ("limit=101", "'limit'"),
        ("limit=ten", "'limit'"),
        ("date=2024-02-30", "'date'"),
        ("cursor=abc", "'cursor'"),
        ("cursor=../../jobs", "'cursor'"),
    ],
)
async def test_bad_job_queries_are_400(client: Client, query: str, message: str) -> None:
    body = await get_json(client, f"/jobs?{query}", 400)
    assert message in body["error"]


async def test_a_job_created_through_the_api_is_listed(client: Client) -> None:
    response = await client.post("/process-request?date=2024-03-01")
    assert response.status_code == 202
    job_id = (await response.get_json())["job_id"]
    listed = await get_json(client, "/jobs?date=2024-03-01")
    assert [job["job_id"] for job in listed["jobs"]] == [job_id]
    assert listed["jobs"][0]["status"] == "queued"


# --- GET /dates -------------------------------------------------------------------------


async def test_dates_show_each_state(client: Client, store: S3Store) -> None:
    committed = await add_job(store, DAY, "succeeded", T0)
    manifest = await commit(store, committed, records=5)
    await add_job(store, DAY + timedelta(days=1), "failed", T0, error="HTTP 500 from the server")
    await add_job(store, DAY + timedelta(days=2), "running", T0)
    refetch = await commit(store, await add_job(store, DAY + timedelta(days=3), "succeeded", T0), 1)
    newer = await add_job(store, DAY + timedelta(days=3), "failed", T0, error="superseded")
    body = await get_json(client, f"/dates?from={DAY}&to={DAY + timedelta(days=4)}")
    assert body["from"] == DAY.isoformat()
    assert body["to"] == (DAY + timedelta(days=4)).isoformat()
    states = [(d["date"], d["state"]) for d in body["dates"]]
    assert states == [
        (str(DAY), "committed"),
        (str(DAY + timedelta(days=1)), "failed"),
        (str(DAY + timedelta(days=2)), "running"),
        (str(DAY + timedelta(days=3)), "committed"),
        (str(DAY + timedelta(days=4)), "missing"),
    ]
    first = body["dates"][0]
    assert first["committed"] == {
        "job_id": committed.job_id,
        "committed_at": manifest.fetched_at.isoformat().replace("+00:00", "Z"),
        "records": 10,
        "bytes": 1000,
        "stored_bytes": 550,
        "ratio": 1.82,
        "codecs": ["none", "zstd"],
        "cities": 2,
    }
    assert first["job"]["job_id"] == committed.job_id
    assert body["dates"][1]["committed"] is None
    assert body["dates"][1]["job"]["error"] == "HTTP 500 from the server"
    fourth = body["dates"][3]
    assert fourth["committed"]["job_id"] == refetch.job_id
    assert (fourth["job"]["job_id"], fourth["job"]["status"]) == (newer.job_id, "failed")
    assert body["dates"][4] == {"date": str(DAY + timedelta(days=4)), "state": "missing",
                                "committed": None, "job": None}  # fmt: skip


async def test_dates_default_to_the_30_days_ending_at_the_newest_data(
    client: Client, store: S3Store
) -> None:
    for day in (DAY, DAY + timedelta(days=40)):
        await commit(store, await add_job(store, day, "succeeded", T0), records=1)
    await add_job(store, DAY + timedelta(days=90), "failed", T0)  # a job, but no data
    body = await get_json(client, "/dates")
    assert body["to"] == (DAY + timedelta(days=40)).isoformat()
    assert body["from"] == (DAY + timedelta(days=11)).isoformat()
    assert len(body["dates"]) == 30
    assert [d["state"] for d in body["dates"]] == ["missing"] * 29 + ["committed"]


async def test_dates_without_any_data_default_to_the_last_30_days(client: Client) -> None:
    body = await get_json(client, "/dates")
    today = datetime.now(UTC).date()
    assert body["to"] in {today.isoformat(), (today - timedelta(days=1)).isoformat()}
    assert len(body["dates"]) == 30
    assert {d["state"] for d in body["dates"]} == {"missing"}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("from=2024-01-01", "'to' is required"),
        ("to=2024-01-01", "'from' is required"),
        ("from=2024-01-02&to=2024-01-01", "is after 'to'"),
        ("from=2024-01-01&to=2024-01-1", "'to' must be a date"),
        ("from=0001-01-01&to=9999-12-31", "at most 366 are allowed"),
    ],
)
async def test_bad_date_ranges_are_400(client: Client, query: str, message: str) -> None:
    body = await get_json(client, f"/dates?{query}", 400)
    assert message in body["error"]


# --- the bearer token -------------------------------------------------------------------


async def test_the_token_is_checked_with_a_case_insensitive_scheme(
    make_client: MakeClient,
) -> None:
    client = await make_client(api_token=SecretStr("s3cret"))
    for header in (None, "Bearer wrong", "Basic s3cret", "s3cret", "Bearer", "Bearer  "):
        headers = {} if header is None else {"Authorization": header}
        response = await client.post("/process-request?date=2024-03-02", headers=headers)
        assert response.status_code == 401, header
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "Bearer <token>" in (await response.get_json())["error"]
    for scheme in ("Bearer", "bearer", "BEARER"):
        response = await client.post(
            "/process-request?date=2024-03-02", headers={"Authorization": f"{scheme} s3cret"}
        )
        assert response.status_code in {200, 202}, scheme


async def test_without_a_token_no_header_is_needed(make_client: MakeClient) -> None:
    client = await make_client(api_token=None)
    response = await client.post("/process-request?date=2024-03-03")
    assert response.status_code == 202
    assert "WWW-Authenticate" not in response.headers


def test_an_empty_token_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUSSTATS_API_TOKEN", "")
    assert Settings().api_token is None


# --- CORS -------------------------------------------------------------------------------


async def test_cors_is_off_by_default(client: Client) -> None:
    response = await client.get("/healthz", headers={"Origin": "https://example.org"})
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_cors_answers_configured_origins_only(make_client: MakeClient) -> None:
    client = await make_client(cors_origins="https://a.example, https://b.example")
    allowed = await client.get("/dates", headers={"Origin": "https://b.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://b.example"
    assert "Origin" in allowed.headers["Vary"]
    other = await client.get("/dates", headers={"Origin": "https://c.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    preflight = await client.options(
        "/process-request",
        headers={
            "Origin": "https://a.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://a.example"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]


# --- the OpenAPI document and /docs -----------------------------------------------------


async def test_the_openapi_document_is_valid_and_complete(client: Client) -> None:
    spec = await get_json(client, "/openapi.json")
    validate(spec)  # raises on an invalid document
    operations = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert operations >= {
        ("/process-request", "post"),
        ("/jobs", "get"),
        ("/jobs/{job_id}", "get"),
        ("/dates", "get"),
        ("/country-stats", "get"),
        ("/metrics", "get"),
    }
    assert all(op["responses"] for item in spec["paths"].values() for op in item.values())

    def required(path: str, method: str) -> set[str]:
        parameters = spec["paths"][path][method]["parameters"]
        return {p["name"] for p in parameters if p.get("required")}

    assert required("/process-request", "post") == {"date"}
    assert required("/country-stats", "get") >= {"from", "to"}
    assert required("/jobs", "get") == set()
    schemes = spec["components"]["securitySchemes"]
    assert {name: scheme["scheme"] for name, scheme in schemes.items()} == {
        "readToken": "bearer",
        "writeToken": "bearer",
    }
    assert spec["paths"]["/process-request"]["post"]["security"] == [{"writeToken": []}]
    unauthorized = spec["paths"]["/process-request"]["post"]["responses"]["401"]
    assert "WWW-Authenticate" in unauthorized["headers"]
    assert "text/plain" in spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert "/" not in spec["paths"]
    assert not any(path.startswith("/static") for path in spec["paths"])


async def test_docs_and_the_page_load_only_files_the_api_serves(client: Client) -> None:
    docs = await (await client.get("/docs")).get_data(as_text=True)
    page = await (await client.get("/")).get_data(as_text=True)
    assets = [
        "static/vendor/swagger-ui/swagger-ui-bundle.js",
        "static/vendor/swagger-ui/swagger-ui.css",
        "static/vendor/uplot/uPlot.iife.min.js",
        "static/vendor/uplot/uPlot.min.css",
        "static/app.js",
        "static/app.css",
    ]
    for asset in assets:
        assert asset in docs or asset in page, asset
        response = await client.get(f"/{asset}")
        assert response.status_code == 200, asset
        assert len(await response.get_data()) > 1000, asset
    assert "http://" not in docs + page
    assert "https://" not in docs + page
    missing = await client.get("/static/../producer/app.py")
    assert missing.status_code == 404
    assert "error" in await missing.get_json()
