"""Every setting of bus-stats, read once from the environment into one frozen object.

Entry points call :func:`load_settings` and pass the result down; nothing imports a
global settings instance. Variable names are ``BUSSTATS_`` plus the field name in upper
case (``BUSSTATS_S3_BUCKET``); the AWS credentials stay where every AWS tool reads them
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``).
"""

import sys
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.codec import DEFAULT_CODEC, Codec, resolve_level

DateParam = Literal["auto", "datetime", "date"]

ENV_PREFIX = "BUSSTATS_"
METRICS_OFF = "off"


def endpoint_url(value: str, schemes: tuple[str, ...]) -> str:
    """``value`` if it is a URL with one of ``schemes``, a host and a valid port, else raise.

    The message never repeats the value: it may hold a password.
    """
    example = f"{schemes[0]}://host:port/"
    parts = urlsplit(value.strip())
    if parts.scheme not in schemes:
        starts = " or ".join(f"{scheme}://" for scheme in schemes)
        raise ValueError(f"must be a URL starting with {starts}, e.g. {example}")
    if not parts.hostname:
        raise ValueError(f"has no host, e.g. {example}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has a port that is not a number from 1 to 65535") from None
    if port == 0:
        raise ValueError("has a port that is not a number from 1 to 65535")
    return value.strip()


def split_urls(value: str) -> tuple[str, ...]:
    """The URLs of a comma-separated list, stripped, empty items left out."""
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _amqp_url(value: SecretStr) -> SecretStr:
    """One ``amqp(s)://`` URL, or a comma-separated list of them (one per broker node)."""
    urls = split_urls(value.get_secret_value())
    if not urls:
        raise ValueError("must be a URL starting with amqp:// or amqps://, e.g. amqp://host:port/")
    for number, url in enumerate(urls, start=1):
        try:
            endpoint_url(url, ("amqp", "amqps"))
        except ValueError as error:
            if len(urls) == 1:
                raise
            raise ValueError(f"URL {number} of {len(urls)} {error}") from None
    return SecretStr(",".join(urls))


def _http_url(value: str) -> str:
    return endpoint_url(value, ("http", "https"))


def _metrics_port(value: object) -> object:
    """``off`` (any case) turns the consumer's metrics and health server off."""
    return None if isinstance(value, str) and value.strip().lower() == METRICS_OFF else value


_DAY_SECONDS = 86400


def _delays(value: str) -> str:
    """Comma-separated positive numbers of seconds, e.g. ``5,15,45``."""
    try:
        delays = [float(part) for part in value.split(",")]
    except ValueError:
        raise ValueError("must be numbers of seconds separated by commas, e.g. 5,15,45") from None
    if not all(0 < delay <= _DAY_SECONDS for delay in delays):
        raise ValueError(f"every delay must be more than 0 and at most {_DAY_SECONDS} seconds")
    return value


AmqpUrl = Annotated[SecretStr, AfterValidator(_amqp_url)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
Port = Annotated[int, Field(ge=0, le=65535)]
MetricsPort = Annotated[Port | None, BeforeValidator(_metrics_port)]


class Settings(BaseSettings):
    """The whole configuration; see the README's configuration table."""

    # An empty variable (``BUSSTATS_API_TOKEN=``) means unset: the default applies.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="ignore", env_ignore_empty=True
    )

    # Connections
    amqp_url: AmqpUrl = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    namespace: str = Field("bus-stats", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$")
    reference_url: HttpUrl = "http://127.0.0.1:8080"
    s3_endpoint_url: HttpUrl | None = None
    s3_bucket: str = Field("bus-stats", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    s3_prefix: str = Field("", pattern=r"^([A-Za-z0-9._-]+/)*$")
    s3_create_bucket: bool = Field(
        True,
        description="create the bucket at start-up if it is missing; false: a missing "
        "bucket stops the process",
    )
    aws_default_region: str = Field("us-east-1", validation_alias="AWS_DEFAULT_REGION")

    # API
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=0, le=65535)
    api_token: SecretStr | None = Field(
        None, description="required by POST /process-request when set; also grants reads"
    )
    api_read_token: SecretStr | None = Field(
        None, description="required by every read route (stats, jobs, dates, docs) when set"
    )
    cors_origins: str = Field(
        "", description="origins (comma-separated) browsers may call the API from; '*': any"
    )
    max_range_days: int = Field(366, ge=1)
    stats_concurrency: int = Field(4, ge=1, le=64)
    verify_max_dates: int = Field(
        31, ge=1, description="dates one country-stats request with verify=true may cover"
    )
    publish_timeout_seconds: float = Field(5.0, gt=0)

    # Consumer
    job_concurrency: int = Field(2, ge=1, le=64, description="jobs per consumer process")
    city_concurrency: int = Field(32, ge=1, le=1024, description="city requests per job")
    connect_timeout_seconds: float = Field(5.0, gt=0)
    read_timeout_seconds: float = Field(30.0, gt=0)
    retry_attempts: int = Field(5, ge=1, le=100, description="attempts per city request")
    retry_backoff_seconds: float = Field(0.5, gt=0)
    retry_backoff_max_seconds: float = Field(10.0, gt=0)
    date_param: DateParam = "auto"
    part_size_bytes: int = Field(5 * 1024 * 1024, ge=5 * 1024 * 1024)
    memory_budget_bytes: int = Field(32 * 1024 * 1024, ge=5 * 1024 * 1024)
    delivery_limit: int = Field(
        10, ge=1, le=100, description="failed deliveries of a job before it ends failed"
    )
    retry_delays_seconds: Annotated[str, AfterValidator(_delays)] = Field(
        "5,15,45,120,300",
        description="waits before a failed job's next deliveries (comma-separated, growing); "
        "the last one repeats",
    )
    retry_budget_seconds: float = Field(
        900.0, ge=0, description="a failed job is retried while its waits add up to at most this"
    )
    shutdown_grace_seconds: float = Field(20.0, ge=0)
    heartbeat_seconds: float = Field(
        5.0, gt=0, description="a running job rewrites its state and checks its claim this often"
    )
    stale_job_seconds: float = Field(
        60.0, gt=0, description="a running job silent this long is stuck: a plain POST replaces it"
    )
    metrics_port: MetricsPort = Field(
        9100, description="the consumer's metrics and /healthz; 0: any free port; off: none"
    )
    object_codec: Codec = Field(
        DEFAULT_CODEC, description="how city objects and rejects are compressed: zstd, gzip, none"
    )
    object_level: int | None = Field(
        None, description="the codec's level (zstd 1..22, gzip 1..9); unset: zstd 1, gzip 6"
    )

    # Logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    @property
    def amqp_urls(self) -> tuple[str, ...]:
        """The broker URLs of ``amqp_url``, in order: one per node of a cluster (or one)."""
        return split_urls(self.amqp_url.get_secret_value())

    @field_validator("object_level")
    @classmethod
    def _object_level(cls, value: int | None, info: ValidationInfo) -> int | None:
        """A level the chosen codec has (checked here, not at the first object written)."""
        resolve_level(info.data.get("object_codec", DEFAULT_CODEC), value)
        return value

    @property
    def part_slots(self) -> int:
        """How many S3 part buffers fit in the writers' memory budget (at least one)."""
        return max(1, self.memory_budget_bytes // self.part_size_bytes)


def load_settings() -> Settings:
    """Read the settings or stop the process with one line naming the bad variable."""
    try:
        return Settings()
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            field = str(problem["loc"][0]) if problem["loc"] else "?"
            variable = field if field.startswith("AWS_") else ENV_PREFIX + field.upper()
            lines.append(f"{variable}: {problem['msg']}")
        sys.stderr.write("bus-stats: invalid configuration: " + "; ".join(lines) + "\n")
        raise SystemExit(2) from None
