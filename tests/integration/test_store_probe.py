"""The start-up probe of conditional writes, against Moto through the fault-injecting proxy.

A store that ignores ``If-None-Match`` or ``If-Match`` (the proxy strips them) or answers
``501`` stops the consumer and the API at start-up with one line naming what the store
did; 409s, 5xx and lost answers are retried or recognised, never mistaken for a verdict.
"""

from collections.abc import AsyncIterator

import pytest
from aio_pika.abc import AbstractRobustConnection

from common.settings import Settings
from common.startup import FatalStartupError
from common.storage import S3Store, open_store
from common.store_probe import probe_conditional_writes
from tests.conftest import make_settings
from tests.integration import s3_proxy, services
from tests.integration.s3_proxy import S3Proxy

pytestmark = pytest.mark.integration

PREFIX = "pre/"


@pytest.fixture
async def proxy(moto_reset: str) -> AsyncIterator[S3Proxy]:
    async with S3Proxy(moto_reset) as opened:
        yield opened


@pytest.fixture
def proxied(proxy: S3Proxy, namespace: str) -> Settings:
    return make_settings(proxy.url, namespace, s3_prefix=PREFIX)


@pytest.fixture
async def store(proxied: Settings) -> AsyncIterator[S3Store]:
    async with open_store(proxied) as opened:
        yield opened


async def leftovers(store: S3Store) -> list[str]:
    return [item.key async for item in store.list_objects("")]


async def test_a_store_with_conditional_writes_passes_and_leaves_nothing(
    store: S3Store, proxy: S3Proxy
) -> None:
    await probe_conditional_writes(store, PREFIX)
    assert await leftovers(store) == []
    puts = proxy.requested("PUT", rf"/{PREFIX}probe/[0-9a-f]{{32}}")
    assert [seen.status for seen in puts] == [200, 412, 412, 200]


@pytest.mark.parametrize(
    ("header", "said"),
    [
        (None, "ignored If-None-Match: * (a second create of one key succeeded)"),
        ("If-Match", "ignored If-Match (a PUT with a wrong ETag succeeded)"),
    ],
)
async def test_a_store_that_ignores_a_condition_is_refused(
    store: S3Store, proxy: S3Proxy, header: str | None, said: str
) -> None:
    proxy.add(s3_proxy.strip_conditionals(method="PUT", header=header))
    with pytest.raises(FatalStartupError) as raised:
        await probe_conditional_writes(store, PREFIX)
    assert f"the S3 store {said}" in str(raised.value)
    assert str(raised.value).endswith("refusing to run")
    assert "\n" not in str(raised.value)
    assert await leftovers(store) == []


async def test_a_store_that_answers_501_is_refused(store: S3Store, proxy: S3Proxy) -> None:
    proxy.add(s3_proxy.not_implemented(method="PUT", conditional=True))
    with pytest.raises(FatalStartupError, match="answered 501 NotImplemented"):
        await probe_conditional_writes(store, PREFIX)


async def test_conflicts_server_errors_and_lost_answers_are_no_verdict(
    store: S3Store, proxy: S3Proxy
) -> None:
    conflict = proxy.add(s3_proxy.conflict(method="PUT", header="If-Match", times=1))
    slow = proxy.add(s3_proxy.slow_down(method="PUT", header="If-None-Match", times=6))
    lost = proxy.add(s3_proxy.lose(method="PUT", header="If-None-Match", times=1))
    lost_match = proxy.add(s3_proxy.lose("500", method="PUT", header="If-Match", times=2))
    await probe_conditional_writes(store, PREFIX)
    assert (conflict.hits, slow.hits, lost.hits, lost_match.hits) == (1, 6, 1, 2)
    assert await leftovers(store) == []


@pytest.mark.parametrize("module", ["consumer", "producer"])
async def test_the_services_refuse_to_start_on_a_store_without_conditional_writes(
    proxied: Settings, proxy: S3Proxy, amqp: AbstractRobustConnection, module: str
) -> None:
    proxy.add(s3_proxy.strip_conditionals())
    env = services.environment(proxied, BUSSTATS_METRICS_PORT="0")
    args = ("--port", "0") if module == "producer" else ()
    exited = await services.run_to_exit(module, env, *args, deadline=60)
    assert exited.status == 1, exited.out[-2000:]
    err = exited.err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    assert err.startswith("bus-stats: cannot start: the S3 store ignored If-None-Match"), err
    assert err.rstrip().endswith("refusing to run"), err
