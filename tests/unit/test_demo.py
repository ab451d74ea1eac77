"""The demo script's choices that need no running system: the broker, the tables' widths."""

import argparse
from datetime import date

import pytest
from rich.console import Console

from scripts import demo


def args(*argv: str) -> argparse.Namespace:
    return demo.parse_args(list(argv))


def test_an_answering_broker_is_used_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUSSTATS_AMQP_URL", raising=False)
    monkeypatch.setattr(demo, "tcp_open", lambda host, port: (host, port) == ("127.0.0.1", 5672))
    assert demo.choose_broker(args()) == (demo.DEFAULT_AMQP_URL, None)


def test_without_a_broker_a_private_node_is_planned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUSSTATS_AMQP_URL", raising=False)
    monkeypatch.setattr(demo, "tcp_open", lambda host, port: False)
    monkeypatch.setattr(demo, "rabbitmq_server", lambda: "/usr/lib/rabbitmq/bin/rabbitmq-server")
    url, node = demo.choose_broker(args())
    assert node is not None
    ports = {node.amqp_port, node.dist_port, node.epmd_port}
    assert len(ports) == 3
    assert not ports & demo.RESERVED_PORTS
    assert url == f"amqp://guest:guest@127.0.0.1:{node.amqp_port}/"
    env = node.environment()
    assert env["RABBITMQ_NODENAME"] != "rabbit@localhost"
    assert env["RABBITMQ_NODE_PORT"] == str(node.amqp_port)
    assert env["ERL_EPMD_PORT"] == str(node.epmd_port)
    for name in ("RABBITMQ_MNESIA_BASE", "RABBITMQ_LOG_BASE", "RABBITMQ_CONFIG_FILE", "HOME"):
        assert env[name].startswith(str(demo.DEMO_DIR / "rabbitmq")), name


def test_without_rabbitmq_server_the_install_command_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BUSSTATS_AMQP_URL", raising=False)
    monkeypatch.setattr(demo, "tcp_open", lambda host, port: False)
    monkeypatch.setattr(demo, "rabbitmq_server", lambda: None)
    with pytest.raises(demo.DemoError, match="apt-get install -y rabbitmq-server"):
        demo.choose_broker(args())


def test_a_configured_broker_that_does_not_answer_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BUSSTATS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5999/")
    monkeypatch.setattr(demo, "tcp_open", lambda host, port: False)
    with pytest.raises(demo.DemoError, match="BUSSTATS_AMQP_URL"):
        demo.choose_broker(args())


def test_reserved_ports_are_refused() -> None:
    with pytest.raises(SystemExit):
        args("--api-port", "15672")


@pytest.mark.parametrize("width", [60, 80, 140])
def test_tables_fit_the_terminal(monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    console = Console(width=width, record=True, force_terminal=False)
    monkeypatch.setattr(demo, "console", console)
    job = demo.JobView(
        job_id="0123456789abcdef0123456789abcdef",
        date=date(2024, 3, 1),
        status="failed",
        cities_total=30,
        cities_done=29,
        records=61_523,
        bytes=7_900_000,
        retries=3,
        error="city 3 failed after 5 attempt(s): HTTP 500",
    )
    row = {
        "date": "2024-03-01",
        "country": "São Tomé and Príncipe",
        "buses_started": 12_397,
        "passengers": 564_382,
        "accident": True,
        "average_delay_seconds": 3445.6,
    }
    console.print(demo.jobs_table([job]))
    console.print(demo.stats_table({"stats": [row], "missing_dates": []}, "GET /country-stats"))
    console.print(demo.progress_line(job))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    assert "3,445.60" in text
    assert "0123456789abcdef" in text.replace("\n", "")


def test_the_stored_table_shows_bytes_and_ratio() -> None:
    committed = {"records": 1000, "bytes": 130_000, "stored_bytes": 10_000, "ratio": 13.0}
    payload = {
        "dates": [
            {"date": "2024-01-01", "committed": {**committed, "codecs": ["zstd"]}},
            {"date": "2024-01-02", "committed": None},
        ]
    }
    table = demo.stored_table(payload, "Stored")
    console = Console(width=120, record=True)
    console.print(table)
    text = console.export_text()
    assert "2024-01-01" in text
    assert "2024-01-02" not in text
    assert "13.0x" in text
    assert "zstd" in text
    assert "9.8 KiB" in text


def test_the_demo_prints_the_settings_of_its_stack() -> None:
    env = demo.child_environment(
        {"HOME": "/root", "BUSSTATS_NAMESPACE": "mine"},
        {
            "BUSSTATS_AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/",
            "BUSSTATS_NAMESPACE": "demo-1234",
            "BUSSTATS_S3_ENDPOINT_URL": "http://127.0.0.1:4566",
            "BUSSTATS_S3_BUCKET": "demo-1234",
        },
    )
    lines = demo.settings_lines(env)
    assert "export BUSSTATS_NAMESPACE=demo-1234" in lines
    assert "export BUSSTATS_S3_BUCKET=demo-1234" in lines
    assert "export BUSSTATS_S3_ENDPOINT_URL=http://127.0.0.1:4566" in lines
    assert "export AWS_ACCESS_KEY_ID=testing" in lines
    assert not any("HOME" in line for line in lines)
