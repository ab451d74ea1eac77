"""A failed job says what failed, never where: the full path, with a real S3 error.

The real API and consumer processes, the real broker, the simulator and a Moto endpoint
over HTTP that refuses every city object with ``403 AccessDenied`` and a message naming
the bucket, the key and the caller's ARN (as real S3's does). ``GET /jobs/<id>`` must give
the component and the code only; the detail stays in the consumer's log, under the job id.
"""

from datetime import date
from typing import Final

import aiohttp
import pytest
from aio_pika.abc import AbstractRobustConnection

from refsim import SimulatorConfig
from refsim.server import serve
from tests.conftest import make_settings
from tests.integration.s3_server import Failure, RestartableMoto
from tests.integration.services import running, start_api, start_consumer, wait_for_job

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CONFIG: Final = SimulatorConfig(
    seed=71, cities=4, countries=2, records_min=20, records_max=60, latency_max=0.05
)
DAY: Final = date(2024, 9, 3)
ACCOUNT: Final = "123456789012"


async def test_an_s3_error_s_text_never_reaches_the_job(
    moto: RestartableMoto, namespace: str, amqp: AbstractRobustConnection
) -> None:
    async with serve(CONFIG) as simulator:
        settings = make_settings(moto.url, namespace, reference_url=simulator.url, delivery_limit=1)
        bucket = settings.s3_bucket
        moto.failures.append(
            Failure(
                "PUT",
                ("city=",),
                403,
                "AccessDenied",
                message=f"User: arn:aws:iam::{ACCOUNT}:user/bus-stats is not authorized to "
                f'perform: s3:PutObject on resource: "arn:aws:s3:::{bucket}/data/'
                f'date={DAY}/city=1.jsonl" because no identity-based policy allows it',
            )
        )
        api = await start_api(settings)
        consumer = await start_consumer(settings)
        async with running(api.service, consumer), aiohttp.ClientSession() as http:
            async with http.post(f"{api.url}/process-request?date={DAY}") as response:
                assert response.status == 202, await response.text()
                job_id = (await response.json())["job_id"]
            job = await wait_for_job(http, api.url, job_id, deadline=120)
            async with http.get(f"{api.url}/dates?from={DAY}&to={DAY}") as response:
                dates = await response.json()
    error = job["error"]
    assert job["status"] == "failed", job
    assert "S3" in error, error
    assert "403 AccessDenied" in error, error
    for secret in (bucket, ACCOUNT, "arn:", str(moto.port), "127.0.0.1", "date=", "city="):
        assert secret not in error, f"{secret!r} reached /jobs/<id>: {error!r}"
    for artefact in ("Traceback", "ClientError(", "ExceptionGroup", "\n", "<"):
        assert artefact not in error, f"{artefact!r} reached /jobs/<id>: {error!r}"
    assert len(error) <= 200, error
    assert dates["dates"][0]["job"]["error"] == error, "/dates serves the same sentence"
    logged = [line for line in consumer.lines if job_id in str(line) and bucket in str(line)]
    assert logged, "the S3 error's full text is logged with the job id"
