"""Fuzzing the API from its own OpenAPI document: no input may cause a 5xx.

The app is built with ``create_app(settings)`` and served by ``app.test_app()`` (so its
lifecycle opens the Moto server and the real broker). Its ``/openapi.json`` lists the
operations; for each one, and each parameter it documents (query or path), Hypothesis
draws arbitrary strings: unicode, control characters, huge values, empty values,
numbers, dates at and beyond the calendar's edges, raw and percent-encoded junk. Every
answer must be below 500, and every 4xx must be ``{"error": "<message>"}`` as JSON.
Random paths and methods must answer 404 or 405 the same way.

Hypothesis runs synchronously, so the app runs on an event loop of its own in a thread
and each request is handed to it. ``max_range_days`` is lowered to 31 so that a drawn
range the API accepts reads at most 31 (empty) dates. Valid ``POST /process-request``
calls really publish jobs to the test namespace, whose queues the ``amqp`` fixture
deletes afterwards.
"""

import asyncio
import os
import re
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import orjson
import pytest
from aio_pika.abc import AbstractRobustConnection
from hypothesis import assume, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from quart.testing import QuartClient

from common.settings import Settings
from producer.app import create_app

pytestmark = pytest.mark.integration

T = TypeVar("T")
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))  # per operation; raise to dig deeper
CALL_TIMEOUT = 30.0
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE", "PROPFIND"]
EDGE_DATES = [
    "0001-01-01", "9999-12-31", "0000-01-01", "10000-01-01", "-001-01-01", "+2024-01-01",
    "2024-02-29", "2023-02-29", "2100-02-29", "2000-02-29", "2024-00-10", "2024-01-00",
    "2024-01-32", "2024-1-1", "20240101", "2024-W01-1", "2024-001", "2024-01-01T00:00:00",
    "2024-01-01Z", " 2024-01-01", "2024-01-01 ", "2024-01-01\n", "2024-01-01\x00",
    "9999-99-99",
    *(  # the same date in other scripts' digits (full-width, Arabic-Indic, Devanagari)
        "2024-01-01".translate({ord(str(n)): zero + n for n in range(10)})
        for zero in (0xFF10, 0x0660, 0x0966)
    ),
    "2024\u201001\u201001",  # with Unicode hyphens
]  # fmt: skip


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    query: tuple[str, ...]
    path_params: tuple[str, ...]


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


class ServedApp:
    """The app's test client on an event loop in a thread, called synchronously."""

    def __init__(self, settings: Settings) -> None:
        self._app = create_app(settings)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._test_app = self._app.test_app()
        self._client = QuartClient(self._app)

    def _call(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(CALL_TIMEOUT)

    def start(self) -> None:
        self._thread.start()
        self._call(self._test_app.startup())

    def stop(self) -> None:
        try:
            self._call(self._test_app.shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def request(self, method: str, path: str) -> Answer:
        """``path`` may carry a query string; it must be ASCII (percent-encode the rest)."""
        return self._call(self._request(method, path))

    async def _request(self, method: str, path: str) -> Answer:
        response = await self._client.open(path, method=method)
        return Answer(
            status=response.status_code,
            content_type=response.content_type or "",
            body=await response.get_data(as_text=False),
        )


@pytest.fixture
def served(settings: Settings, amqp: AbstractRobustConnection) -> Iterator[ServedApp]:
    app = ServedApp(settings.model_copy(update={"max_range_days": 31}))
    app.start()
    try:
        yield app
    finally:
        app.stop()


def documented_operations(spec: dict[str, Any]) -> list[Operation]:
    operations: list[Operation] = []
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            parameters = operation.get("parameters", [])
            operations.append(
                Operation(
                    method=method.upper(),
                    path=path,
                    query=tuple(p["name"] for p in parameters if p["in"] == "query"),
                    path_params=tuple(p["name"] for p in parameters if p["in"] == "path"),
                )
            )
    return operations


def near_edges(day: date) -> list[str]:
    return [(day + timedelta(days=shift)).isoformat() for shift in (-1, 0, 1) if _fits(day, shift)]


def _fits(day: date, shift: int) -> bool:
    try:
        day + timedelta(days=shift)
    except OverflowError:
        return False
    return True


TEXT = st.one_of(
    st.text(),
    st.text(st.characters(max_codepoint=0x1F), max_size=20),
    st.text(st.characters(codec="utf-8", min_codepoint=0x80), max_size=40),
    st.sampled_from(EDGE_DATES),
    st.dates().map(date.isoformat),
    st.dates().flatmap(lambda day: st.sampled_from(near_edges(day))),
    st.integers().map(str),
    st.floats().map(str),
    st.sampled_from(["", "true", "false", "1", "0", "yes", "no", "TRUE", "null", "[]", "{}"]),
    st.integers(min_value=1000, max_value=100_000).map(lambda n: "9" * n),
    st.integers(min_value=100, max_value=20_000).map(lambda n: "2024-01-01" * n),
)
# Sent as is: ASCII with the query string's own syntax (&, =, %, +, #) and broken escapes.
RAW = st.text(st.sampled_from("%&=+#?;/ \t\x00\x7fzZ09-fF"), max_size=30)


@st.composite
def query_value(draw: st.DrawFn) -> str:
    """One parameter's value as it appears in the URL: percent-encoded or raw junk."""
    if draw(st.integers(0, 4)) == 0:
        return draw(RAW)
    return quote(draw(TEXT), safe="")


@st.composite
def query_string(draw: st.DrawFn, names: tuple[str, ...]) -> str:
    pairs: list[str] = []
    for name in names:
        times = draw(st.sampled_from([0, 1, 1, 1, 2]))  # absent, once or twice
        pairs.extend(f"{name}={draw(query_value())}" for _ in range(times))
    if draw(st.booleans()):
        pairs.append(f"{quote(draw(TEXT)[:50], safe='')}={draw(query_value())}")
    if draw(st.booleans()):
        pairs.append(draw(RAW))  # a bare token, an empty pair, a stray separator
    return "&".join(draw(st.permutations(pairs)))


def check(answer: Answer, what: str, *, head: bool = False) -> None:
    assert answer.status < 500, f"{what} -> {answer.status}: {answer.body[:300]!r}"
    if answer.status >= 400 and not head:  # a HEAD answer has headers only
        assert answer.content_type.startswith("application/json"), what
        body = orjson.loads(answer.body)
        assert isinstance(body, dict), what
        assert set(body) == {"error"}, what
        assert isinstance(body["error"], str), what
        assert body["error"], what


def test_documented_operations_never_answer_5xx(served: ServedApp) -> None:
    spec_answer = served.request("GET", "/openapi.json")
    assert spec_answer.status == 200
    operations = documented_operations(orjson.loads(spec_answer.body))
    assert {(op.method, op.path) for op in operations} >= {
        ("POST", "/process-request"),
        ("GET", "/jobs/{job_id}"),
        ("GET", "/country-stats"),
    }
    for operation in operations:
        fuzz_operation(served, operation)


def fuzz_operation(served: ServedApp, operation: Operation) -> None:
    """``EXAMPLES`` requests to one operation, every documented parameter drawn."""

    @hypothesis_settings(max_examples=EXAMPLES, deadline=None)
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        path = operation.path
        for name in operation.path_params:
            value = quote(data.draw(TEXT | RAW, label=name), safe="")
            path = path.replace(f"{{{name}}}", value)
        query = data.draw(query_string(operation.query), label="query")
        target = f"{path}?{query}" if query else path
        what = f"{operation.method} {target[:300]}"
        check(served.request(operation.method, target), what, head=operation.method == "HEAD")

    fuzz()


SEGMENT = st.one_of(
    st.sampled_from(["jobs", "country-stats", "process-request", "healthz", "..", ".", ""]),
    st.text(max_size=30).map(lambda text: quote(text, safe="")),
    RAW.map(lambda text: text.replace("?", "%3F").replace("#", "%23")),
)


def test_unknown_paths_and_methods_are_json_404_or_405(served: ServedApp) -> None:
    routes = {
        "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/process-request",
        "/country-stats", "/", "/jobs", "/dates", "/favicon.ico",
    }  # fmt: skip

    @hypothesis_settings(max_examples=2 * EXAMPLES, deadline=None)
    @given(method=st.sampled_from(METHODS), segments=st.lists(SEGMENT, min_size=1, max_size=5))
    def fuzz(method: str, segments: list[str]) -> None:
        path = "/" + "/".join(segments)
        # "//x" would be read by the test client as a host name, not sent as a path.
        assume(not path.startswith("//"))
        answer = served.request(method, path)
        what = f"{method} {path}"
        check(answer, what, head=method == "HEAD")
        routed = re.sub("/+", "/", unquote(path))  # what the routing matches (slashes merged)
        known = routed in routes or (routed.startswith("/jobs/") and routed.count("/") == 2)
        if not known and method != "OPTIONS":
            assert answer.status in {404, 405}, f"{what} -> {answer.status}"

    fuzz()
