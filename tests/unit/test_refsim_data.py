"""The simulator's data: cities, records, their rendering and the oracle, without HTTP."""

import json
from collections import Counter
from datetime import date

import pytest

from common.records import BadRecord, normalise_record
from refsim import SimulatorConfig, cities, expected_bad_records, expected_stats
from refsim.data import VALID, data_seed, iter_records, render_chunks
from tests.figures import CountryDays

DAY = date(2024, 1, 1)


def body(config: SimulatorConfig, seed: str, day: date = DAY, suffix: str = "") -> str:
    return "".join(render_chunks(config, seed, day, suffix))


def test_cities_are_a_pure_function_of_seed_and_counts() -> None:
    config = SimulatorConfig()
    assert cities(config) == cities(SimulatorConfig())
    assert cities(config) != cities(SimulatorConfig(seed=1))
    listed = cities(config)
    assert [city.id for city in listed] == list(range(30))
    assert len({city.name for city in listed}) == 30
    assert len({city.country for city in listed}) == 5


def test_city_and_country_names_are_awkward() -> None:
    names = {city.name for city in cities(SimulatorConfig())}
    countries = {city.country for city in cities(SimulatorConfig())}
    assert {"../x", "Saint-Étienne", "O'Fallon", "Zürich/Nord", "東京"} <= names
    everything = names | countries
    assert any(" " in name for name in everything)
    assert any(not name.isascii() for name in countries)
    assert any("'" in name for name in countries)


@pytest.mark.parametrize(("count", "countries"), [(0, 1), (1, 5), (7, 3), (200, 12)])
def test_city_counts_follow_the_knobs(count: int, countries: int) -> None:
    listed = cities(SimulatorConfig(cities=count, countries=countries))
    assert len(listed) == count
    assert len({city.name for city in listed}) == count
    assert len({city.country for city in listed}) == min(count, countries)


def test_body_is_compact_json_in_the_reference_format() -> None:
    config = SimulatorConfig(records_min=50, records_max=50)
    text = body(config, "s")
    records = json.loads(text)
    assert len(records) == 50
    assert text.startswith('[{"departure-time":"2024-01-01T')
    assert ", " not in text
    assert ": " not in text
    for record in records:
        assert list(record) == ["departure-time", "bus-type", "passengers", "delay", "accident"]
        assert record["departure-time"] < "2024-01-01T12:00:00"
        assert record["bus-type"].startswith("BUS-1")
        assert isinstance(record["passengers"], int)
        assert record["delay"] == "P0D" or record["delay"].startswith("PT")
        assert isinstance(record["accident"], bool)


def test_zero_delay_is_spelt_p0d() -> None:
    config = SimulatorConfig(records_min=5000, records_max=5000)
    delays = Counter(record["delay"] for record in json.loads(body(config, "s")))
    assert delays["P0D"] > 0
    assert "PT0S" not in delays


def test_departure_times_carry_the_requested_offset() -> None:
    config = SimulatorConfig(records_min=3, records_max=3)
    for record in json.loads(body(config, "s", suffix="+02:00")):
        assert record["departure-time"].endswith(":00+02:00")


@pytest.mark.parametrize("records", [0, 1, 2, 5000])
@pytest.mark.parametrize("chunk_bytes", [1, 200, 256 * 1024])
def test_chunking_never_changes_the_body(records: int, chunk_bytes: int) -> None:
    base = SimulatorConfig(records_min=records, records_max=records)
    chunked = SimulatorConfig(records_min=records, records_max=records, chunk_bytes=chunk_bytes)
    assert body(chunked, "s") == body(base, "s")
    assert len(json.loads(body(chunked, "s"))) == records


def test_chunks_stay_near_the_chunk_size() -> None:
    config = SimulatorConfig(records_min=20_000, records_max=20_000, chunk_bytes=64 * 1024)
    sizes = [len(chunk) for chunk in render_chunks(config, "s", DAY)]
    assert len(sizes) > 10
    assert max(sizes) < 2 * 64 * 1024


def test_records_are_deterministic_per_seed() -> None:
    config = SimulatorConfig()
    assert body(config, data_seed(config, 1, DAY)) == body(config, data_seed(config, 1, DAY))
    assert body(config, data_seed(config, 1, DAY)) != body(config, data_seed(config, 2, DAY))
    other_day = date(2024, 1, 2)
    assert body(config, data_seed(config, 1, DAY)) != body(
        config, data_seed(config, 1, other_day), other_day
    )


def test_record_counts_stay_within_the_knobs() -> None:
    config = SimulatorConfig(records_min=10, records_max=20)
    counts = {len(list(iter_records(config, f"s{index}"))) for index in range(200)}
    assert min(counts) == 10
    assert max(counts) == 20


def test_malformed_records_are_rejected_by_bus_stats_and_counted_by_the_oracle() -> None:
    config = SimulatorConfig(cities=4, records_min=500, records_max=500, malformed_rate=0.1)
    bad = expected_bad_records(config, [DAY])
    for city in cities(config):
        items = json.loads(body(config, data_seed(config, city.id, DAY)))
        normalised = [normalise_record(city.id, item) for item in items]
        assert sum(isinstance(item, BadRecord) for item in normalised) == bad[city.id, DAY]
    assert 0.05 * 2000 < sum(bad.values()) < 0.15 * 2000


def test_malformed_records_are_persistent_and_of_every_kind() -> None:
    config = SimulatorConfig(records_min=3000, records_max=3000, malformed_rate=0.2)
    first = [record.malformed for record in iter_records(config, "s")]
    assert first == [record.malformed for record in iter_records(config, "s")]
    assert set(first) == {VALID, 1, 2, 3}


def test_oracle_matches_the_normalised_records() -> None:
    config = SimulatorConfig(cities=6, countries=3, records_min=0, records_max=300)
    days = [DAY, date(2024, 2, 29)]
    figures = CountryDays()
    for day in days:
        for city in cities(config):
            for item in json.loads(body(config, data_seed(config, city.id, day), day)):
                record = normalise_record(city.id, item)
                assert not isinstance(record, BadRecord)
                figures.add(
                    day.isoformat(),
                    city.country,
                    record["passengers"],
                    record["delay_seconds"],
                    record["accident"],
                )
    assert expected_stats(config, ["2024-02-29", DAY]) == figures.rows()


def test_oracle_omits_countries_without_records() -> None:
    config = SimulatorConfig(cities=2, countries=5, records_min=1, records_max=1)
    rows = expected_stats(config, [DAY])
    assert len(rows) == 2
    assert all(row["buses_started"] == 1 for row in rows)
    assert expected_stats(SimulatorConfig(records_min=0, records_max=0), [DAY]) == []


def test_oracle_refuses_a_nondeterministic_simulator() -> None:
    with pytest.raises(ValueError, match="non-deterministic"):
        expected_stats(SimulatorConfig(deterministic=False), [DAY])


@pytest.mark.parametrize(
    "knobs",
    [
        {"records_min": 5, "records_max": 4},
        {"latency_min": -1},
        {"fail_rate": 1.5},
        {"fail_rate": 0.5, "timeout_rate": 0.4, "truncate_rate": 0.2},
        {"countries": 0},
        {"chunk_bytes": 0},
    ],
)
def test_config_refuses_impossible_knobs(knobs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        SimulatorConfig(**knobs)  # type: ignore[arg-type]  # the knobs are all numeric fields


def test_countries_can_be_given_hostile_names() -> None:
    hostile = ('=HYPERLINK("x","y")', "<b>bold</b>")
    config = SimulatorConfig(seed=5, cities=12, countries=4, country_names=hostile)
    plain = cities(SimulatorConfig(seed=5, cities=12, countries=4))
    named = cities(config)
    assert set(hostile) <= {city.country for city in named}
    assert len({city.country for city in named}) == 4
    assert [(city.id, city.name) for city in named] == [(city.id, city.name) for city in plain]
    assert cities(SimulatorConfig(seed=5, cities=12, countries=4, country_names=())) == plain
    with pytest.raises(ValueError, match="country_names"):
        SimulatorConfig(countries=1, country_names=("a", "b"))
