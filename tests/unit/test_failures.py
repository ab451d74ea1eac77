"""``common.failures.describe``: what failed and how, never where, from real errors.

Every error here is raised by the real client against a real server: a Moto S3 endpoint
over HTTP answering an injected S3 error whose text names the bucket, the key and the
caller's ARN (as real S3's AccessDenied does), a closed port, and the reference simulator.
"""

from datetime import date

import aiohttp
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from common.failures import REFERENCE, S3, component_of, describe
from common.storage import connect_store, open_store
from consumer.fetcher import City, FetchError, ReferenceClient
from consumer.ingest import CityFailedError
from consumer.retry import GaveUpError
from refsim.config import SimulatorConfig
from refsim.server import serve
from tests.conftest import make_settings
from tests.integration.s3_server import Failure, RestartableMoto
from tests.integration.services import free_port

KEY = "data/date=2024-01-01/generation=1/job=abc/run=def/city=12.jsonl"
CITY = City(id=12, name="Zürich/Nord", country="Schweiz")


def denial(bucket: str) -> str:
    return (
        "User: arn:aws:iam::123456789012:user/bus-stats is not authorized to perform: "
        f's3:PutObject on resource: "arn:aws:s3:::{bucket}/{KEY}" because no '
        "identity-based policy allows the s3:PutObject action"
    )


def assert_says_nothing_of(told: str, *secrets: str) -> None:
    for secret in (*secrets, "arn:", "date=", "city=", "http", "Traceback", "<"):
        assert secret not in told, f"{secret!r} leaked into {told!r}"


@pytest.mark.parametrize(
    ("status", "code"), [(403, "AccessDenied"), (503, "SlowDown"), (500, "InternalError")]
)
async def test_an_s3_error_is_told_by_status_and_code_only(
    moto: RestartableMoto, namespace: str, status: int, code: str
) -> None:
    settings = make_settings(moto.url, namespace)
    async with open_store(settings) as store:
        failure = Failure("PUT", ("city=12",), status, code, message=denial(settings.s3_bucket))
        moto.failures.append(failure)
        with pytest.raises(ClientError) as caught:
            await store.put(KEY, b"{}")
    error = caught.value
    assert settings.s3_bucket in str(error), "the raw error names the bucket"
    told = describe(error, component=component_of(error), doing="storing city 12")
    assert told == f"S3 {status} {code} while storing city 12"
    assert_says_nothing_of(told, settings.s3_bucket, str(moto.port), "123456789012")


async def test_an_unreachable_s3_is_told_without_its_endpoint(namespace: str) -> None:
    port = free_port()
    settings = make_settings(f"http://127.0.0.1:{port}", namespace, connect_timeout_seconds=0.5)
    async with connect_store(settings) as store:  # no request yet: the bucket is not ensured
        with pytest.raises(EndpointConnectionError) as caught:
            await store.put(KEY, b"{}")
    assert str(port) in str(caught.value), "the raw error names the endpoint"
    told = describe(caught.value, component=S3, doing="storing city 12")
    assert told == "S3 could not be reached (EndpointConnectionError) while storing city 12"
    assert_says_nothing_of(told, str(port), settings.s3_bucket)


async def test_a_refused_reference_server_is_told_as_such(namespace: str) -> None:
    port = free_port()
    settings = make_settings(
        "http://127.0.0.1:1", namespace, reference_url=f"http://127.0.0.1:{port}"
    )
    async with aiohttp.ClientSession() as session:
        with pytest.raises(FetchError) as caught:
            await ReferenceClient(session, settings).cities()
    assert str(port) in str(caught.value), "the raw error names the host and port"
    told = describe(caught.value, component=REFERENCE, doing="listing cities")
    assert told == "reference server refused connections while listing cities"
    assert component_of(caught.value) == REFERENCE


async def test_a_reference_server_error_is_told_by_its_status(namespace: str) -> None:
    config = SimulatorConfig(seed=3, cities=4, fail_permanently=frozenset({3}), latency_max=0)
    async with serve(config) as simulator, aiohttp.ClientSession() as session:
        settings = make_settings("http://127.0.0.1:1", namespace, reference_url=simulator.url)
        client = ReferenceClient(session, settings)
        with pytest.raises(FetchError) as caught:
            async with client.city_stats(3, date(2024, 1, 1)):
                pass
    told = describe(GaveUpError(caught.value, 5), component=REFERENCE, doing="fetching city 3")
    assert told == "reference server answered HTTP 500 while fetching city 3"
    failed = CityFailedError(City(id=3, name="x", country="y"), caught.value, 5)
    assert (
        str(failed) == "reference server answered HTTP 500 while fetching city 3, after 5 attempts"
    )
    assert describe(failed, component="anything") == str(failed), "told as it was written"


async def test_a_city_s_s3_failure_names_the_city_and_code(
    moto: RestartableMoto, namespace: str
) -> None:
    settings = make_settings(moto.url, namespace)
    async with open_store(settings) as store:
        moto.failures.append(
            Failure("PUT", ("city=12",), 403, "AccessDenied", message=denial(settings.s3_bucket))
        )
        with pytest.raises(ClientError) as caught:
            await store.put(KEY, b"{}")
    failed = CityFailedError(CITY, caught.value, 1)
    assert str(failed) == "S3 403 AccessDenied while storing city 12, after 1 attempt"
    group = ExceptionGroup("cities", [caught.value, KeyError(settings.s3_bucket)])
    told = describe(group, component=component_of(group), doing="storing cities")
    assert told == "S3 403 AccessDenied while storing cities (and 1 more failure)"
    assert_says_nothing_of(told, settings.s3_bucket)


def test_anything_else_is_told_by_its_class_only() -> None:
    where = "s3://bkt-private/data/date=2024-01-01/city=3.jsonl"
    told = describe(KeyError(where), component=component_of(KeyError()), doing="committing")
    assert told == "bus-stats failed with KeyError while committing"
    assert describe(RuntimeError(where), component="broker") == "broker failed with RuntimeError"
    assert describe(TimeoutError(where), component=S3) == "S3 timed out"
