"""The consumer's Prometheus metrics, in a registry of its own (served on its metrics port)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.jobs = Counter(
            "busstats_consumer_jobs",
            "Jobs finished, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.jobs_in_flight = Gauge(
            "busstats_consumer_jobs_in_flight", "Jobs running now", registry=self.registry
        )
        self.cities = Counter(
            "busstats_consumer_cities_fetched", "Cities fetched and stored", registry=self.registry
        )
        self.records = Counter(
            "busstats_consumer_records", "Records stored", registry=self.registry
        )
        self.bad_records = Counter(
            "busstats_consumer_bad_records", "Records rejected as malformed", registry=self.registry
        )
        self.bytes_written = Counter(
            "busstats_consumer_bytes_written",
            "Bytes of records written to S3",
            registry=self.registry,
        )
        self.retries = Counter(
            "busstats_consumer_retries", "City requests retried", registry=self.registry
        )
        self.fetch_seconds = Histogram(
            "busstats_consumer_city_seconds",
            "Time to fetch and store one city",
            buckets=(0.1, 0.5, 1, 2, 4, 8, 15, 30, 60, 120),
            registry=self.registry,
        )
        self.job_seconds = Histogram(
            "busstats_consumer_job_seconds",
            "Time to process one job",
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
