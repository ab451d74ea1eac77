"""Object keys: built only from validated dates and ids, under the configured prefix."""

import uuid
from collections.abc import Callable
from datetime import date

import pytest

from common.codec import CODECS, SUFFIXES, Codec, codec_of_key
from common.layout import Layout, check_id

DAY = date(2024, 1, 1)
RUN = "0123456789abcdef0123456789abcdef"
JOB = "fedcba9876543210fedcba9876543210"
GEN = 7
OWNED = f"gen={GEN}/job={JOB}/run={RUN}"


def test_keys_without_prefix() -> None:
    layout = Layout()
    assert layout.job(JOB) == f"jobs/{JOB}.json"
    assert layout.latest_job(DAY) == "dates/date=2024-01-01/latest-job.json"
    assert layout.manifest(DAY) == "manifests/date=2024-01-01/manifest.json"
    assert layout.date_data(DAY) == "data/date=2024-01-01/"
    owned = f"data/date=2024-01-01/{OWNED}"
    assert layout.job_data(DAY, GEN, JOB) == f"data/date=2024-01-01/gen={GEN}/job={JOB}/"
    assert layout.run_data(DAY, GEN, JOB, RUN) == f"{owned}/"
    assert layout.city_object(DAY, GEN, JOB, RUN, 3, codec="zstd") == f"{owned}/city=3.jsonl.zst"
    assert layout.city_object(DAY, GEN, JOB, RUN, 3, codec="gzip") == f"{owned}/city=3.jsonl.gz"
    assert layout.city_object(DAY, GEN, JOB, RUN, 0, codec="none") == f"{owned}/city=0.jsonl"
    assert layout.city_record(DAY, GEN, JOB, RUN, 0) == f"{owned}/city=0.json"
    assert layout.rejects_object(DAY, GEN, JOB, RUN, codec="zstd") == f"{owned}/rejects.jsonl.zst"
    assert layout.rejects_object(DAY, GEN, JOB, RUN, codec="gzip") == f"{owned}/rejects.jsonl.gz"
    assert layout.rejects_object(DAY, GEN, JOB, RUN, codec="none") == f"{owned}/rejects.jsonl"
    assert layout.date_partials(DAY) == "partials/date=2024-01-01/"


def test_dates_are_zero_padded_iso() -> None:
    assert Layout().manifest(date(987, 3, 4)) == "manifests/date=0987-03-04/manifest.json"


def test_run_and_city_keys_sit_under_their_date() -> None:
    layout = Layout("env/")
    assert layout.run_data(DAY, GEN, JOB, RUN).startswith(layout.date_data(DAY))
    assert layout.city_object(DAY, GEN, JOB, RUN, 5, codec="zstd").startswith(
        layout.run_data(DAY, GEN, JOB, RUN)
    )
    assert layout.rejects_object(DAY, GEN, JOB, RUN, codec="zstd").startswith(
        layout.run_data(DAY, GEN, JOB, RUN)
    )
    assert not layout.city_object(date(2024, 1, 11), GEN, JOB, RUN, 5, codec="zstd").startswith(
        layout.date_data(DAY)
    )


KEYS: dict[str, Callable[[Layout], str]] = {
    "job": lambda layout: layout.job(JOB),
    "latest_job": lambda layout: layout.latest_job(DAY),
    "manifest": lambda layout: layout.manifest(DAY),
    "date_data": lambda layout: layout.date_data(DAY),
    "run_data": lambda layout: layout.run_data(DAY, GEN, JOB, RUN),
    "city_object": lambda layout: layout.city_object(DAY, GEN, JOB, RUN, 12, codec="zstd"),
    "rejects_object": lambda layout: layout.rejects_object(DAY, GEN, JOB, RUN, codec="gzip"),
    "date_partials": lambda layout: layout.date_partials(DAY),
}


@pytest.mark.parametrize("key", KEYS.values(), ids=KEYS.keys())
@pytest.mark.parametrize("prefix", ["env/", "a/b.c/d_e-f/"])
def test_prefix_is_applied_everywhere(key: Callable[[Layout], str], prefix: str) -> None:
    unprefixed = key(Layout())
    assert not unprefixed.startswith(prefix)
    assert key(Layout(prefix)) == prefix + unprefixed


@pytest.mark.parametrize("value", [RUN, uuid.UUID(int=0).hex, "f" * 32])
def test_check_id_returns_a_valid_id(value: str) -> None:
    assert check_id(value, "run id") == value


def test_check_id_accepts_a_uuid4_hex() -> None:
    value = uuid.uuid4().hex
    assert check_id(value, "job id") == value


@pytest.mark.parametrize(
    "value",
    [
        "../x",
        "",
        RUN.upper(),
        "A" + RUN[1:],
        RUN[:-1],
        RUN + "0",
        "g" * 32,
        RUN + "\n",
        " " + RUN[1:],
        str(uuid.UUID(RUN)),  # with dashes
        "../" + RUN[3:],
        RUN[:16] + "/" + RUN[17:],
        "\uff10" * 32,  # fullwidth digits
    ],
)
def test_check_id_refuses_anything_but_32_lowercase_hex(value: str) -> None:
    with pytest.raises(ValueError, match="job id must be 32 hex digits"):
        check_id(value, "job id")


def test_check_id_error_quotes_a_bounded_value() -> None:
    with pytest.raises(ValueError, match="run id") as caught:
        check_id("x" * 1000, "run id")
    assert len(str(caught.value)) < 100


@pytest.mark.parametrize(
    "build",
    [
        lambda layout: layout.job("../x"),
        lambda layout: layout.job(RUN.upper()),
        lambda layout: layout.run_data(DAY, GEN, JOB, "../x"),
        lambda layout: layout.run_data(DAY, GEN, "../x", RUN),
        lambda layout: layout.city_object(DAY, GEN, JOB, "../x", 1, codec="zstd"),
        lambda layout: layout.rejects_object(DAY, GEN, JOB, "", codec="none"),
    ],
)
def test_keys_refuse_bad_ids(build: Callable[[Layout], str]) -> None:
    with pytest.raises(ValueError, match="must be 32 hex digits"):
        build(Layout())


@pytest.mark.parametrize("city_id", ["../x", "1/../2", "", "3.jsonl"])
def test_city_id_cannot_inject_a_path(city_id: str) -> None:
    with pytest.raises(ValueError, match="invalid literal for int"):
        Layout().city_object(DAY, GEN, JOB, RUN, city_id, codec="zstd")  # type: ignore[arg-type]  # a str on purpose


def test_layout_is_frozen() -> None:
    layout = Layout("p/")
    with pytest.raises(AttributeError):
        layout.prefix = "q/"  # type: ignore[misc]  # assigning to a frozen dataclass on purpose


@pytest.mark.parametrize(
    ("codec", "name"),
    [("zstd", "city=4.jsonl.zst"), ("gzip", "city=4.jsonl.gz"), ("none", "city=4.jsonl")],
)
def test_parse_data_key_reads_the_owner_back(codec: Codec, name: str) -> None:
    layout = Layout("p/")
    owner = layout.parse_data_key(layout.city_object(DAY, GEN, JOB, RUN, 4, codec=codec))
    assert owner is not None
    assert (owner.date, owner.generation, owner.job_id, owner.run_id, owner.name) == (
        DAY,
        GEN,
        JOB,
        RUN,
        name,
    )
    assert not owner.is_record
    assert codec_of_key(owner.name) == codec
    legacy = layout.parse_data_key(f"p/data/date=2024-01-01/run={RUN}/city=4.jsonl")
    assert legacy is not None
    assert (legacy.generation, legacy.job_id, legacy.run_id) == (None, None, RUN)
    assert not legacy.is_record


def test_a_completion_record_is_told_from_every_codec_of_object() -> None:
    layout = Layout("p/")
    record = layout.parse_data_key(layout.city_record(DAY, GEN, JOB, RUN, 4))
    assert record is not None
    assert (record.name, record.is_record) == ("city=4.json", True)
    for codec in CODECS:
        for key in (
            layout.city_object(DAY, GEN, JOB, RUN, 4, codec=codec),
            layout.rejects_object(DAY, GEN, JOB, RUN, codec=codec),
        ):
            parsed = layout.parse_data_key(key)
            assert parsed is not None
            assert not parsed.is_record
            assert key.removesuffix(SUFFIXES[codec]) != layout.city_record(DAY, GEN, JOB, RUN, 4)


@pytest.mark.parametrize(
    "key",
    [
        f"data/date=2024-01-01/run={RUN}/city=4.jsonl",  # another prefix's
        f"p/data/date=2024-13-01/run={RUN}/city=4.jsonl",
        f"p/data/date=2024-01-01/gen=x/job={JOB}/run={RUN}/city=4.jsonl",
        f"p/data/date=2024-01-01/gen=1/run={RUN}/city=4.jsonl",
        f"p/data/date=2024-01-01/run={RUN}/a/city=4.jsonl",
    ],
)
def test_parse_data_key_refuses_other_keys(key: str) -> None:
    assert Layout("p/").parse_data_key(key) is None


def test_partial_keys_name_their_date() -> None:
    layout = Layout("p/")
    assert layout.partial_date(f"p/partials/date={DAY}/{OWNED}/city=3.e.json") == DAY
    assert layout.partial_date(f"p/partials/date={DAY}/run={RUN}/date.e-1.json") == DAY
    assert layout.date_partials(DAY).startswith(layout.partials_root)
    assert layout.partial_date(f"p/data/date={DAY}/x") is None
    assert layout.partial_date("p/partials/date=2024-13-01/x") is None
