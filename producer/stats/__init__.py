"""Per-country daily statistics. The data path, one module each:

- :mod:`~producer.stats.reader`: a range of dates; each from its manifest's stored sums
  (one small read a date), or through the object path, and ``verify``.
- :mod:`~producer.stats.objects`: the object path: an object streamed in blocks under a
  byte budget, each block parsed in a thread.
- :mod:`~producer.stats.blocks`: one block of JSON lines into sums (pyarrow, pandas, or
  exact Python integers), and the cut lines between blocks.
- :mod:`~producer.stats.verify`: stored sums against recomputed ones.
- :mod:`~producer.stats.aggregate`: per-city sums into per-(date, country) rows (pandas).
- :mod:`~producer.stats.render`: the answer as JSON or CSV bytes.
- :mod:`~producer.stats.shared`: single-flight reads and the byte-bounded cache.
"""

from producer.stats.figures import CountryDay, Totals
from producer.stats.objects import S3ObjectSource
from producer.stats.reader import CountryStats, DateChangingError, StatsReader, StatsShared

__all__ = [
    "CountryDay",
    "CountryStats",
    "DateChangingError",
    "S3ObjectSource",
    "StatsReader",
    "StatsShared",
    "Totals",
]
