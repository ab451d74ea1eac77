"""A run's rejected records as one stored object: JSON lines, compressed like the cities.

One line a kept record (``city_id``, ``reason``, ``raw``), ordered by city; the object's
key ends in the codec's suffix (:meth:`common.layout.Layout.rejects_object`) and is
written with the codec's ``Content-Type`` (:data:`common.codec.CONTENT_TYPES`). At most
:data:`consumer.ingest.KEPT_BAD_RECORDS` records a city are kept, so the body is small
(a few hundred KB at worst) and is built and compressed in one go.
"""

from collections.abc import Iterable

import orjson

from common.codec import Codec, compress
from common.records import BadRecord


def encode_rejects(bad: Iterable[BadRecord], codec: Codec, level: int | None = None) -> bytes:
    """The stored body: one JSON line a record, by city, compressed with ``codec``."""
    lines = b"".join(
        orjson.dumps(
            {"city_id": item.city_id, "reason": item.reason, "raw": item.raw},
            option=orjson.OPT_APPEND_NEWLINE,
        )
        for item in sorted(bad, key=lambda item: item.city_id)
    )
    return compress(lines, codec, level)
