"""The fault-injecting S3 proxy of the tests, against a real Moto server.

Each fault does what it says and nothing else: requests it does not select pass through
unchanged (bodies streamed both ways, a multipart upload of several 5 MiB parts included).
"""

import time
from collections.abc import AsyncIterator
from typing import Final

import pytest
from botocore.exceptions import ClientError

from common.storage import S3Store, WriteConflictError, open_store
from tests.conftest import make_settings
from tests.integration import s3_proxy
from tests.integration.s3_proxy import S3Proxy

pytestmark = pytest.mark.integration

MIB: Final = 1024 * 1024


@pytest.fixture
async def proxy(moto_reset: str) -> AsyncIterator[S3Proxy]:
    async with S3Proxy(moto_reset) as opened:
        yield opened


@pytest.fixture
async def store(proxy: S3Proxy, namespace: str) -> AsyncIterator[S3Store]:
    async with open_store(make_settings(proxy.url, namespace)) as opened:
        yield opened


def code_of(error: ClientError) -> tuple[int, str]:
    meta = error.response.get("ResponseMetadata", {})
    return int(meta.get("HTTPStatusCode", 0)), str(error.response.get("Error", {}).get("Code"))


async def test_requests_pass_through_with_streamed_multipart_bodies(
    store: S3Store, proxy: S3Proxy
) -> None:
    await store.put("a.json", b'{"a": 1}')
    assert (await store.get("a.json")) is not None
    data = bytes(range(256)) * (4 * MIB // 256) * 3  # 12 MiB: three parts of 5, 5 and 2
    async with store.writer("big.bin", "application/octet-stream") as writer:
        for offset in range(0, len(data), MIB):
            await writer.write(data[offset : offset + MIB])
    stored = await store.get("big.bin")
    assert stored is not None
    assert stored.body == data
    assert len(proxy.requested("PUT", r"big\.bin\?.*partNumber")) == 3
    assert [o.key async for o in store.list_objects("")] == ["a.json", "big.bin"]
    await store.delete(["a.json", "big.bin"])
    assert [o.key async for o in store.list_objects("")] == []


async def test_a_conflict_answers_409_conditional_request_conflict(
    store: S3Store, proxy: S3Proxy
) -> None:
    fault = proxy.add(s3_proxy.conflict(method="PUT", conditional=True, times=1))
    with pytest.raises(ClientError) as raised:
        await store.client.put_object(Bucket=store.bucket, Key="k", Body=b"x", IfNoneMatch="*")
    assert code_of(raised.value) == (409, "ConditionalRequestConflict")
    assert fault.hits == 1
    await store.put("k", b"x", if_none_match=True)  # the next one passes
    await store.put("plain", b"x")  # not conditional: never selected


async def test_slow_down_is_retried_by_the_sdk_and_counted(store: S3Store, proxy: S3Proxy) -> None:
    fault = proxy.add(s3_proxy.slow_down(method="PUT", target="k$", times=2))
    await store.put("k", b"x")
    assert fault.hits == 2
    assert [s.status for s in proxy.requested("PUT", "/k")] == [503, 503, 200]


async def test_a_lost_answer_took_effect(store: S3Store, proxy: S3Proxy) -> None:
    """The PUT is applied but its answer dropped: the SDK's retry then meets our own object."""
    proxy.add(s3_proxy.lose(method="PUT", target="once$", times=1))
    with pytest.raises(WriteConflictError):
        await store.put("once", b"mine", if_none_match=True)
    stored = await store.get("once")
    assert stored is not None
    assert stored.body == b"mine"
    proxy.add(s3_proxy.lose("500", method="PUT", target="twice$", times=1))
    with pytest.raises(WriteConflictError):
        await store.put("twice", b"mine", if_none_match=True)
    assert (await store.get("twice")) is not None


async def test_delay_holds_a_request(store: S3Store, proxy: S3Proxy) -> None:
    proxy.add(s3_proxy.delay(0.5, method="GET", target="slow"))
    started = time.monotonic()
    assert await store.get("slow") is None
    assert time.monotonic() - started >= 0.5


async def test_stripped_conditional_headers_are_a_store_that_ignores_them(
    store: S3Store, proxy: S3Proxy
) -> None:
    await store.put("k", b"one", if_none_match=True)
    with pytest.raises(WriteConflictError):
        await store.put("k", b"two", if_none_match=True)
    with proxy.fault(s3_proxy.strip_conditionals(method="PUT")):
        await store.put("k", b"two", if_none_match=True)
        await store.put("k", b"three", if_match='"wrong"')
    stored = await store.get("k")
    assert stored is not None
    assert stored.body == b"three"


async def test_if_match_on_a_missing_key_is_404_no_such_key(store: S3Store) -> None:
    with pytest.raises(ClientError) as raised:
        await store.client.put_object(Bucket=store.bucket, Key="nope", Body=b"x", IfMatch='"e"')
    assert code_of(raised.value) == (404, "NoSuchKey")


async def test_if_match_on_complete_multipart_upload_is_honoured(store: S3Store) -> None:
    client, bucket = store.client, store.bucket

    async def complete(key: str, if_match: str) -> None:
        created = await client.create_multipart_upload(Bucket=bucket, Key=key)
        upload = created["UploadId"]
        part = await client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"p"
        )
        try:
            await client.complete_multipart_upload(
                Bucket=bucket,
                Key=key,
                UploadId=upload,
                MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
                IfMatch=if_match,
            )
        finally:
            await store.abort_upload(key, upload)

    with pytest.raises(ClientError) as raised:
        await complete("missing", '"e"')
    assert code_of(raised.value) == (404, "NoSuchKey")
    etag = await store.put("there", b"old")
    with pytest.raises(ClientError) as raised:
        await complete("there", '"0123"')
    assert code_of(raised.value) == (412, "PreconditionFailed")
    await complete("there", etag)
    stored = await store.get("there")
    assert stored is not None
    assert stored.body == b"p"


async def test_delete_objects_can_refuse_keys_and_say_so(store: S3Store, proxy: S3Proxy) -> None:
    for key in ("keep-1", "gone-1", "gone-2"):
        await store.put(key, b"x")
    proxy.add(s3_proxy.delete_errors(r"^keep-"))
    answer = await store.client.delete_objects(
        Bucket=store.bucket,
        Delete={"Objects": [{"Key": k} for k in ("keep-1", "gone-1", "gone-2")], "Quiet": True},
    )
    assert [e["Key"] for e in answer.get("Errors", [])] == ["keep-1"]
    assert [o.key async for o in store.list_objects("")] == ["keep-1"]
    answer = await store.client.delete_objects(
        Bucket=store.bucket, Delete={"Objects": [{"Key": "keep-1"}], "Quiet": True}
    )
    assert [e["Code"] for e in answer.get("Errors", [])] == ["AccessDenied"]
    assert [o.key async for o in store.list_objects("")] == ["keep-1"]


async def test_probability_and_times_bound_a_fault(store: S3Store, proxy: S3Proxy) -> None:
    fault = proxy.add(s3_proxy.internal_error(method="GET", probability=0.5))
    proxy.add(s3_proxy.not_implemented(method="HEAD", times=0))
    hits = 0
    for _ in range(20):
        try:
            await store.client.get_object(Bucket=store.bucket, Key="k")
        except ClientError as error:
            hits += code_of(error)[1] == "InternalError"
    assert 0 < fault.hits < 20 * 5  # the SDK retries a 500; some GETs got through
    assert hits < 20
    await store.ping()  # times=0: never applied
