"""Settings: the documented defaults, environment overrides, and a one-line refusal."""

from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from common.settings import Settings, load_settings

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
SAME = "the value as given"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """conftest keeps BUSSTATS_AMQP_URL for the integration tests; defaults need it gone."""
    monkeypatch.delenv("BUSSTATS_AMQP_URL", raising=False)
    return monkeypatch


def test_defaults_match_the_contract(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert isinstance(settings.amqp_url, SecretStr)
    assert settings.amqp_url.get_secret_value() == DEFAULT_AMQP_URL
    assert settings.namespace == "bus-stats"
    assert settings.reference_url == "http://127.0.0.1:8080"
    assert settings.s3_endpoint_url is None
    assert settings.s3_bucket == "bus-stats"
    assert settings.s3_prefix == ""
    assert settings.api_host == "127.0.0.1"
    assert settings.api_port == 8000
    assert settings.api_token is None
    assert settings.date_param == "auto"


def test_load_settings_returns_the_defaults(clean_env: pytest.MonkeyPatch) -> None:
    assert load_settings() == Settings()


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("BUSSTATS_NAMESPACE", "staging.eu-1", "namespace", "staging.eu-1"),
        (
            "BUSSTATS_REFERENCE_URL",
            "https://ref.example:8443",
            "reference_url",
            "https://ref.example:8443",
        ),
        (
            "BUSSTATS_S3_ENDPOINT_URL",
            "http://127.0.0.1:9000",
            "s3_endpoint_url",
            "http://127.0.0.1:9000",
        ),
        ("BUSSTATS_S3_BUCKET", "my.bucket-1", "s3_bucket", "my.bucket-1"),
        ("BUSSTATS_S3_PREFIX", "env/stats/", "s3_prefix", "env/stats/"),
        ("BUSSTATS_API_HOST", "0.0.0.0", "api_host", "0.0.0.0"),  # noqa: S104 - a value, not a bind
        ("BUSSTATS_API_PORT", "8081", "api_port", 8081),
        ("BUSSTATS_DATE_PARAM", "date", "date_param", "date"),
        ("BUSSTATS_PART_SIZE_BYTES", str(16 * 1024 * 1024), "part_size_bytes", 16 * 1024 * 1024),
        ("BUSSTATS_JOB_CONCURRENCY", "4", "job_concurrency", 4),
        ("BUSSTATS_READ_TIMEOUT_SECONDS", "2.5", "read_timeout_seconds", 2.5),
        ("AWS_DEFAULT_REGION", "eu-west-3", "aws_default_region", "eu-west-3"),
    ],
)
def test_environment_overrides_defaults(
    clean_env: pytest.MonkeyPatch, variable: str, value: str, field: str, expected: Any
) -> None:
    assert getattr(Settings(), field) != expected
    clean_env.setenv(variable, value)
    assert getattr(load_settings(), field) == expected


def test_secrets_come_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("BUSSTATS_AMQP_URL", "amqp://app:hunter2@broker:5672/vh")
    clean_env.setenv("BUSSTATS_API_TOKEN", "t0ken-s3cret")
    settings = load_settings()
    assert settings.amqp_url.get_secret_value() == "amqp://app:hunter2@broker:5672/vh"
    assert settings.api_token is not None
    assert settings.api_token.get_secret_value() == "t0ken-s3cret"


def test_secrets_are_not_shown(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("BUSSTATS_AMQP_URL", "amqp://app:hunter2@broker:5672/vh")
    clean_env.setenv("BUSSTATS_API_TOKEN", "t0ken-s3cret")
    settings = load_settings()
    for shown in (repr(settings), str(settings), repr(settings.model_dump())):
        assert "hunter2" not in shown
        assert "t0ken-s3cret" not in shown
    assert "amqp_url=SecretStr('**********')" in repr(settings)


def test_settings_are_frozen(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings()
    with pytest.raises(ValidationError, match="frozen"):
        settings.api_port = 1  # type: ignore[misc]  # assigning to a frozen model on purpose
    assert settings.api_port == 8000


def test_part_slots_fit_the_memory_budget(clean_env: pytest.MonkeyPatch) -> None:
    assert Settings().part_slots == 6  # 32 MiB of 5 MiB parts
    clean_env.setenv("BUSSTATS_MEMORY_BUDGET_BYTES", str(5 * 1024 * 1024))
    assert load_settings().part_slots == 1


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BUSSTATS_API_PORT", "abc"),
        ("BUSSTATS_API_PORT", "70000"),
        ("BUSSTATS_S3_PREFIX", "no-trailing-slash"),
        ("BUSSTATS_S3_PREFIX", "/abs/"),
        ("BUSSTATS_PART_SIZE_BYTES", "100"),
        ("BUSSTATS_S3_BUCKET", "Bad_Bucket"),
        ("BUSSTATS_REFERENCE_URL", "ftp://x"),
        ("BUSSTATS_S3_ENDPOINT_URL", "localhost:9000"),
        ("BUSSTATS_NAMESPACE", "../x"),
        ("BUSSTATS_DATE_PARAM", "sometimes"),
        ("BUSSTATS_JOB_CONCURRENCY", "0"),
        ("BUSSTATS_LOG_LEVEL", "LOUD"),
        ("BUSSTATS_READ_TIMEOUT_SECONDS", "-1"),
    ],
)
def test_bad_value_stops_with_one_line_naming_the_variable(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, value: str
) -> None:
    clean_env.setenv(variable, value)
    with pytest.raises(SystemExit) as stopped:
        load_settings()
    assert stopped.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.endswith("\n")
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"bus-stats: invalid configuration: {variable}: ")
    assert captured.err.count("BUSSTATS_") == 1


def test_every_bad_variable_is_named_on_the_one_line(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("BUSSTATS_API_PORT", "abc")
    clean_env.setenv("BUSSTATS_S3_PREFIX", "x")
    with pytest.raises(SystemExit) as stopped:
        load_settings()
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "BUSSTATS_API_PORT: " in err
    assert "BUSSTATS_S3_PREFIX: " in err
    assert "; " in err


def test_refusal_does_not_show_secrets(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("BUSSTATS_AMQP_URL", "amqp://app:hunter2@broker:5672/")
    clean_env.setenv("BUSSTATS_API_TOKEN", "t0ken-s3cret")
    clean_env.setenv("BUSSTATS_API_PORT", "abc")
    with pytest.raises(SystemExit):
        load_settings()
    err = capsys.readouterr().err
    assert "BUSSTATS_API_PORT" in err
    assert "hunter2" not in err
    assert "t0ken-s3cret" not in err


def test_refusal_does_not_chain_the_validation_error(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("BUSSTATS_API_PORT", "abc")
    with pytest.raises(SystemExit) as stopped:
        load_settings()
    assert stopped.value.__cause__ is None
    assert stopped.value.__suppress_context__ is True


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BUSSTATS_AMQP_URL", "notaurl"),
        ("BUSSTATS_AMQP_URL", "http://broker:5672/"),
        ("BUSSTATS_AMQP_URL", "amqp://"),
        ("BUSSTATS_AMQP_URL", "amqp://:5672/"),
        ("BUSSTATS_AMQP_URL", "amqp://broker:70000/"),
        ("BUSSTATS_AMQP_URL", "amqp://broker:port/"),
        ("BUSSTATS_AMQP_URL", "amqp://broker:0/"),
        ("BUSSTATS_REFERENCE_URL", "notaurl"),
        ("BUSSTATS_REFERENCE_URL", "http://"),
        ("BUSSTATS_REFERENCE_URL", "http://ref:99999"),
        ("BUSSTATS_S3_ENDPOINT_URL", "s3://bucket"),
        ("BUSSTATS_S3_ENDPOINT_URL", "https://:9000"),
        ("BUSSTATS_S3_ENDPOINT_URL", "http://minio:x"),
        ("BUSSTATS_METRICS_PORT", "-1"),
        ("BUSSTATS_METRICS_PORT", "sometimes"),
    ],
)
def test_bad_endpoint_stops_with_one_line_naming_the_variable(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, value: str
) -> None:
    clean_env.setenv(variable, value)
    with pytest.raises(SystemExit) as stopped:
        load_settings()
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"bus-stats: invalid configuration: {variable}: ")


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("BUSSTATS_AMQP_URL", "amqps://u:p@mq.example:5671/prod", "amqp_url", SAME),
        ("BUSSTATS_AMQP_URL", "amqp://[::1]/", "amqp_url", SAME),
        ("BUSSTATS_AMQP_URL", "amqp://broker", "amqp_url", SAME),
        ("BUSSTATS_REFERENCE_URL", "http://[::1]:8080", "reference_url", "http://[::1]:8080"),
        ("BUSSTATS_S3_ENDPOINT_URL", "https://s3.eu.example", "s3_endpoint_url", SAME),
        ("BUSSTATS_METRICS_PORT", "0", "metrics_port", 0),
        ("BUSSTATS_METRICS_PORT", "off", "metrics_port", None),
        ("BUSSTATS_METRICS_PORT", "OFF", "metrics_port", None),
    ],
)
def test_good_endpoints_are_taken(
    clean_env: pytest.MonkeyPatch, variable: str, value: str, field: str, expected: Any
) -> None:
    clean_env.setenv(variable, value)
    loaded = getattr(load_settings(), field)
    shown = loaded.get_secret_value() if isinstance(loaded, SecretStr) else loaded
    assert shown == (value if expected is SAME else expected)


def test_a_bad_amqp_url_is_refused_without_showing_it(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("BUSSTATS_AMQP_URL", "http://app:hunter2@broker:5672/")
    with pytest.raises(SystemExit):
        load_settings()
    err = capsys.readouterr().err
    assert "BUSSTATS_AMQP_URL: " in err
    assert "hunter2" not in err


@pytest.mark.parametrize(
    "variable",
    [
        "BUSSTATS_API_TOKEN",
        "BUSSTATS_S3_ENDPOINT_URL",
        "BUSSTATS_AMQP_URL",
        "BUSSTATS_API_PORT",
        "BUSSTATS_METRICS_PORT",
        "BUSSTATS_S3_PREFIX",
    ],
)
def test_an_empty_variable_means_unset(clean_env: pytest.MonkeyPatch, variable: str) -> None:
    clean_env.setenv(variable, "")
    assert load_settings() == Settings()
