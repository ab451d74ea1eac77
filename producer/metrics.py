"""The API's Prometheus metrics, in a registry of its own, served at ``/metrics``."""

from prometheus_client import CollectorRegistry, Counter, Histogram


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "busstats_api_requests",
            "HTTP requests answered, by route and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.refused = Counter(
            "busstats_api_requests_refused",
            "Requests refused by a token check or a limit, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.publish_seconds = Histogram(
            "busstats_api_publish_seconds",
            "Time from publishing a job to the broker's confirm",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
            registry=self.registry,
        )
        self.stats_seconds = Histogram(
            "busstats_api_stats_query_seconds",
            "Time to answer a country-stats query",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.stats_bytes = Counter(
            "busstats_api_stats_bytes_read",
            "Bytes of raw records read by country-stats queries (cache misses)",
            registry=self.registry,
        )
        self.stats_partials = Counter(
            "busstats_api_stats_partials_used",
            "Objects answered from cached partial sums",
            registry=self.registry,
        )
