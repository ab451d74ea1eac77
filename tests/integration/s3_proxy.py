"""A fault-injecting S3 reverse proxy between the services and a Moto server.

The proxy runs in the test's own event loop (:class:`S3Proxy`); the services only need
its :attr:`S3Proxy.url` as ``BUSSTATS_S3_ENDPOINT_URL``, and the test changes its
behaviour by calling methods on it. Bodies are streamed both ways (multipart parts are
5 MiB and more), except the few requests a fault or an emulation has to read.

Faults (:class:`Fault`), each selected by method, a regular expression searched in the
decoded ``path?query``, whether the request carries a conditional header, a count and a
probability:

- ``error``: answer an S3 error (``409 ConditionalRequestConflict``, ``503 SlowDown``,
  ``500 InternalError``, ...) without asking Moto;
- ``lose``: apply the request upstream, then drop its answer (close the connection
  without a word, or answer ``500`` although the write took effect);
- ``delay``: hold the request this long before it goes upstream;
- ``strip``: remove ``If-Match`` / ``If-None-Match`` (a store that ignores them);
- ``delete_errors``: a ``DeleteObjects`` whose matching keys are *not* deleted and are
  listed as ``<Error>`` in the answer (what S3 does when a key is refused).

AWS semantics Moto lacks are emulated (:attr:`S3Proxy.emulate_aws`): ``If-Match`` on
CompleteMultipartUpload is honoured (``404 NoSuchKey`` when the key is missing, ``412``
when its ETag differs), and ``If-Match`` on a missing key answers ``404 NoSuchKey``.
"""

import asyncio
import contextlib
import html
import random
import re
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Final, Literal, Self
from urllib.parse import unquote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

_CHUNK: Final = 64 * 1024
_S3_NS: Final = "http://s3.amazonaws.com/doc/2006-03-01/"
_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",  # the proxy answered ``100 Continue`` itself
        "host",
    }
)
_CONDITIONAL: Final = ("If-Match", "If-None-Match")
_OBJECT: Final = re.compile(r"<Object>\s*<Key>(.*?)</Key>.*?</Object>", re.DOTALL)

Action = Literal["error", "lose", "delay", "strip", "delete_errors"]


@dataclass
class Fault:
    """One kind of misbehaviour, applied to the requests it selects.

    ``method``: the HTTP method (``None``: any); ``target``: a regular expression searched
    in the decoded ``path?query`` (``None``: any); ``conditional``: only requests with
    (``True``) or without (``False``) an ``If-Match``/``If-None-Match`` header; ``header``:
    only requests that carry this header (e.g. ``If-Match``); ``times``:
    how many requests to hit at most (``None``: no limit); ``probability``: the chance
    that a selected request is hit. :attr:`hits` counts the requests hit so far.
    """

    action: Action
    method: str | None = None
    target: str | None = None
    conditional: bool | None = None
    header: str | None = None
    times: int | None = None
    probability: float = 1.0
    status: int = 503
    code: str = "SlowDown"
    lose_by: Literal["close", "500"] = "close"
    seconds: float = 0.0
    hits: int = 0

    def selects(self, method: str, target: str, conditional: bool, headers: set[str]) -> bool:
        if self.header is not None and self.header.lower() not in headers:
            return False
        if self.method is not None and method != self.method:
            return False
        if self.target is not None and re.search(self.target, target) is None:
            return False
        if self.conditional is not None and conditional != self.conditional:
            return False
        return self.times is None or self.hits < self.times


def conflict(**select: object) -> Fault:
    """``409 ConditionalRequestConflict`` (two conditional writes raced, AWS says: retry)."""
    return Fault("error", status=409, code="ConditionalRequestConflict", **select)  # type: ignore[arg-type]  # selectors only


def slow_down(**select: object) -> Fault:
    """``503 SlowDown``."""
    return Fault("error", status=503, code="SlowDown", **select)  # type: ignore[arg-type]  # selectors only


def internal_error(**select: object) -> Fault:
    """``500 InternalError``."""
    return Fault("error", status=500, code="InternalError", **select)  # type: ignore[arg-type]  # selectors only


def not_implemented(**select: object) -> Fault:
    """``501 NotImplemented`` (a store that refuses conditional writes outright)."""
    return Fault("error", status=501, code="NotImplemented", **select)  # type: ignore[arg-type]  # selectors only


def lose(by: Literal["close", "500"] = "close", **select: object) -> Fault:
    """The request takes effect upstream, its answer never reaches the client."""
    return Fault("lose", lose_by=by, **select)  # type: ignore[arg-type]  # selectors only


def delay(seconds: float, **select: object) -> Fault:
    return Fault("delay", seconds=seconds, **select)  # type: ignore[arg-type]  # selectors only


def strip_conditionals(**select: object) -> Fault:
    """Forward without ``If-Match``/``If-None-Match``: a store that ignores them."""
    return Fault("strip", **select)  # type: ignore[arg-type]  # selectors only


def delete_errors(key: str, **select: object) -> Fault:
    """``DeleteObjects`` keeps (and reports as ``<Error>``) the keys matching ``key``."""
    return Fault(
        "delete_errors",
        method="POST",
        target=r"\?delete",
        status=500,
        code=key,  # the pattern of the keys refused (see S3Proxy._delete_with_errors)
        **select,  # type: ignore[arg-type]  # selectors only
    )


def error_body(code: str, message: str, key: str | None = None) -> bytes:
    key_part = f"<Key>{key}</Key>" if key else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>{key_part}"
        "<RequestId>s3-proxy</RequestId></Error>"
    ).encode()


def error_response(status: int, code: str, message: str = "injected by the test") -> web.Response:
    return web.Response(
        status=status,
        reason=HTTPStatus(status).phrase,
        body=error_body(code, message),
        content_type="application/xml",
    )


def _forwarded_headers(request: web.BaseRequest, strip: bool) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        if name.lower() in _HOP_BY_HOP:
            continue
        if strip and name in _CONDITIONAL:
            continue
        headers.add(name, value)
    return headers


@dataclass
class Seen:
    """One request the proxy received: method, decoded ``path?query``, and what befell it."""

    method: str
    target: str
    conditional: bool
    faults: list[Action] = field(default_factory=list)
    status: int | None = None


class S3Proxy:
    """The proxy: ``async with S3Proxy(moto_url) as proxy: ... proxy.url ...``."""

    def __init__(self, upstream: str, *, seed: int = 0, emulate_aws: bool = True) -> None:
        self.upstream = upstream.rstrip("/")
        self.emulate_aws = emulate_aws
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self.record = True
        self.url = ""
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- control ---------------------------------------------------------------------

    def add(self, fault: Fault) -> Fault:
        self.faults = [*self.faults, fault]  # a new list: a request iterating keeps its own
        return fault

    def remove(self, fault: Fault) -> None:
        self.faults = [f for f in self.faults if f is not fault]

    def clear(self) -> None:
        self.faults = []

    @contextlib.contextmanager
    def fault(self, fault: Fault) -> Iterator[Fault]:
        """The fault applies inside the ``with`` block only."""
        self.add(fault)
        try:
            yield fault
        finally:
            self.remove(fault)

    def requested(self, method: str, pattern: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and re.search(pattern, s.target)]

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, port: int = 0) -> None:
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            skip_auto_headers=("Content-Type", "User-Agent", "Accept", "Accept-Encoding"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        )
        # An Application (not a bare web.Server): its router answers ``Expect: 100-continue``,
        # which aiobotocore sends with every PUT and waits for without a timeout.
        app = web.Application(client_max_size=0, handler_args={"handler_cancellation": True})
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        sockets = self._runner.addresses
        self.url = f"http://127.0.0.1:{sockets[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- the proxy -------------------------------------------------------------------

    def _select(self, seen: Seen, headers: set[str]) -> list[Fault]:
        hit: list[Fault] = []
        with self._lock:
            for fault in self.faults:
                if not fault.selects(seen.method, seen.target, seen.conditional, headers):
                    continue
                if fault.probability < 1.0 and self._random.random() >= fault.probability:
                    continue
                fault.hits += 1
                hit.append(fault)
                seen.faults.append(fault.action)
        return hit

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        seen = Seen(
            method=request.method,
            target=unquote(request.raw_path),
            conditional=any(name in request.headers for name in _CONDITIONAL),
        )
        if self.record:
            self.seen.append(seen)
        faults = self._select(seen, {name.lower() for name in request.headers})
        actions = {fault.action: fault for fault in faults}
        for fault in faults:
            if fault.action == "delay":
                await asyncio.sleep(fault.seconds)
        if (error := actions.get("error")) is not None:
            await _drain(request)
            seen.status = error.status
            return error_response(error.status, error.code)
        headers = _forwarded_headers(request, strip="strip" in actions)
        if self.emulate_aws and (refused := await self._emulated_refusal(request, headers)):
            await _drain(request)
            seen.status = refused.status
            return refused
        response: web.StreamResponse
        if (refusing := actions.get("delete_errors")) is not None:
            response = await self._delete_with_errors(request, headers, refusing.code)
        else:
            response = await self._forward(request, headers, lost=actions.get("lose"))
        seen.status = response.status
        return response

    def _upstream_url(self, request: web.BaseRequest) -> URL:
        return URL(f"{self.upstream}{request.raw_path}", encoded=True)

    async def _emulated_refusal(
        self, request: web.BaseRequest, headers: CIMultiDict[str]
    ) -> web.Response | None:
        """AWS's answer to an ``If-Match`` Moto would not check (or check differently)."""
        if_match = headers.get("If-Match")
        if if_match is None or request.method not in {"PUT", "POST"}:
            return None
        completing = request.method == "POST" and "uploadId" in request.query
        if request.method == "POST" and not completing:
            return None
        assert self._session is not None
        object_url = self._upstream_url(request).with_query(None)
        # The client's credentials go along (Moto answers an anonymous HEAD with 403; it
        # does not check signatures, so the one of the original request does).
        auth = {k: v for k, v in headers.items() if k.lower() in {"authorization", "x-amz-date"}}
        async with self._session.head(object_url, headers=auth) as head:
            if head.status == HTTPStatus.NOT_FOUND:
                return error_response(404, "NoSuchKey", "The specified key does not exist.")
            etag = head.headers.get("ETag", "")
        if completing and etag.strip('"') != if_match.strip('"'):
            return error_response(412, "PreconditionFailed", "At least one precondition failed")
        return None

    async def _forward(
        self, request: web.BaseRequest, headers: CIMultiDict[str], *, lost: Fault | None
    ) -> web.StreamResponse:
        assert self._session is not None
        body = request.content if request.body_exists else None
        async with self._session.request(
            request.method,
            self._upstream_url(request),
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as upstream:
            if lost is not None:
                await upstream.read()  # the request took effect; its answer goes nowhere
                if lost.lose_by == "500":
                    return error_response(500, "InternalError", "answer lost by the test")
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError  # aiohttp drops a cancelled handler's answer
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    response.headers.add(name, value)
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(_CHUNK):
                await response.write(chunk)
            await response.write_eof()
            return response

    async def _delete_with_errors(
        self, request: web.BaseRequest, headers: CIMultiDict[str], refused: str
    ) -> web.Response:
        """Forward a ``DeleteObjects`` without the refused keys; list those as errors."""
        assert self._session is not None
        kept: list[str] = []

        def refuse(match: re.Match[str]) -> str:
            key = html.unescape(match.group(1))
            if re.search(refused, key) is None:
                return match.group(0)
            kept.append(key)
            return ""

        sent = (await request.read()).decode()
        payload = _OBJECT.sub(refuse, sent)
        for name in list(headers):
            lowered = name.lower()
            if lowered.startswith(("content-md5", "content-length", "x-amz-checksum")) or (
                lowered == "x-amz-sdk-checksum-algorithm"
            ):
                del headers[name]
        errors = "".join(
            f"<Error><Key>{html.escape(key)}</Key><Code>AccessDenied</Code>"
            "<Message>refused by the test</Message></Error>"
            for key in kept
        )
        if _OBJECT.search(payload) is None:
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<DeleteResult xmlns="{_S3_NS}">{errors}</DeleteResult>'
            )
            return web.Response(body=body.encode(), content_type="application/xml")
        async with self._session.post(
            self._upstream_url(request), headers=headers, data=payload.encode()
        ) as upstream:
            answer = await upstream.read()
            if upstream.status != HTTPStatus.OK:
                return web.Response(
                    status=upstream.status, body=answer, content_type="application/xml"
                )
        text = answer.decode()
        closing = "</DeleteResult>"
        if closing in text:
            text = text.replace(closing, f"{errors}{closing}")
        elif text.rstrip().endswith("/>"):  # an empty quiet answer: <DeleteResult .../>
            text = re.sub(
                r"<DeleteResult([^>]*)/>", rf"<DeleteResult\1>{errors}</DeleteResult>", text
            )
        return web.Response(body=text.encode(), content_type="application/xml")


async def _drain(request: web.BaseRequest) -> None:
    """Read a request's body to its end: the connection stays usable for the next one."""
    if request.body_exists:
        while await request.content.read(_CHUNK):
            pass


@contextlib.asynccontextmanager
async def s3_proxy(upstream: str, *, seed: int = 0) -> AsyncIterator[S3Proxy]:
    async with S3Proxy(upstream, seed=seed) as proxy:
        yield proxy


class ThreadedS3Proxy:
    """An :class:`S3Proxy` serving from a thread of its own, with its own event loop.

    For tests whose event loop is busy (the chaos test serves the simulator and polls S3
    from it): the proxy's streaming then never delays them, nor they it. Faults are added
    and removed from the test's thread (:meth:`add`, :meth:`remove`, :meth:`clear`).
    """

    def __init__(self, upstream: str, *, seed: int = 0) -> None:
        self.proxy = S3Proxy(upstream, seed=seed)
        self.proxy.record = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return self.proxy.url

    def add(self, fault: Fault) -> Fault:
        return self.proxy.add(fault)  # the lists are replaced whole: safe across threads

    def remove(self, fault: Fault) -> None:
        self.proxy.remove(fault)

    def clear(self) -> None:
        self.proxy.clear()

    def _serve(self, ready: threading.Event) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await self.proxy.start()
            ready.set()
            try:
                await self._stop.wait()
            finally:
                await self.proxy.stop()

        asyncio.run(main())

    async def __aenter__(self) -> Self:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        await asyncio.to_thread(ready.wait, 30)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
