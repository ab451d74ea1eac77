"""BUSSTATS_AMQP_URL as a list of cluster nodes: parsed in order, refused without echo."""

import pytest

from common.amqp import connection_name
from common.settings import Settings, load_settings


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("BUSSTATS_AMQP_URL", raising=False)
    return monkeypatch


def test_one_url_stays_valid(env: pytest.MonkeyPatch) -> None:
    env.setenv("BUSSTATS_AMQP_URL", "amqp://u:p@mq:5672/vh")
    assert load_settings().amqp_urls == ("amqp://u:p@mq:5672/vh",)


def test_a_comma_separated_list_gives_every_node_in_order(env: pytest.MonkeyPatch) -> None:
    env.setenv("BUSSTATS_AMQP_URL", " amqp://u:p@mq1:5672/ ,amqps://u:p@mq2:5671/,, amqp://mq3 ")
    settings = load_settings()
    assert settings.amqp_urls == ("amqp://u:p@mq1:5672/", "amqps://u:p@mq2:5671/", "amqp://mq3")
    assert "p@mq" not in repr(settings)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("amqp://u:hunter2@mq1:5672/,http://u:hunter2@mq2:5672/", "URL 2 of 2 must be a URL"),
        ("amqp://u:hunter2@mq1:99999/,amqp://u:hunter2@mq2/", "URL 1 of 2 has a port"),
        (" , ", "must be a URL"),
    ],
)
def test_a_bad_url_in_the_list_is_named_by_position_never_shown(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str, says: str
) -> None:
    env.setenv("BUSSTATS_AMQP_URL", value)
    with pytest.raises(SystemExit):
        load_settings()
    err = capsys.readouterr().err
    assert says in err
    assert "hunter2" not in err


def test_the_default_is_one_local_node(env: pytest.MonkeyPatch) -> None:
    assert Settings().amqp_urls == ("amqp://guest:guest@127.0.0.1:5672/",)


def test_a_connection_is_named_after_app_host_process_and_namespace() -> None:
    name = connection_name("bus-stats-consumer", "prod")
    app, host, pid_word, pid, namespace = name.split(" ")
    assert (app, pid_word, namespace) == ("bus-stats-consumer", "pid", "prod")
    assert host
    assert pid.isdigit()
