"""What the simulator serves: the city list and the departure records of a (city, date).

Both are pure functions of their inputs. Records come from one generator,
:func:`iter_records`, which the HTTP server renders to bytes with :func:`render_body` and
the oracle aggregates without HTTP, so both always agree record for record.
"""

import hashlib
import math
import random
from collections.abc import Iterator
from datetime import date
from typing import Final, NamedTuple

from common.records import format_duration
from refsim.config import SimulatorConfig

# Awkward names come first so that small simulators still carry them.
_AWKWARD_CITIES: Final = (
    "../x",
    "Zürich/Nord",
    "O'Fallon",
    "Saint-Étienne",
    "東京",
    "São Paulo",
    "'s-Hertogenbosch",
    "Kraków",
    "Ærøskøbing",
    "Llanfair..Gwyngyll",
)
_PREFIXES: Final = ("", "", "North ", "South ", "East ", "West ", "Lake ", "Port ", "New ")
_STEMS: Final = (
    "Amy", "Cassie", "Bruno", "Dana", "Elli", "Fern", "Gus", "Hale", "Iris", "Jon",
    "Kim", "Lor", "Mar", "Nel", "Oak", "Pel", "Quin", "Ros", "Sal", "Tor",
)  # fmt: skip
_SUFFIXES: Final = ("bury", "ville", "ton", "haven", "mouth", "view", "field", "port", "side")
_AWKWARD_COUNTRIES: Final = (
    "Côte d'Ivoire",
    "Bosnia/Herzegovina",
    "日本",
    "São Tomé and Príncipe",
    ".. Atlantis",
    "Ελλάδα",
)
_PLAIN_COUNTRIES: Final = (
    "Spain",
    "United States Virgin Islands",
    "Norway",
    "Chile",
    "Kenya",
    "Canada",
    "Vietnam",
    "Portugal",
)


class City(NamedTuple):
    id: int
    name: str
    country: str


def cities(config: SimulatorConfig) -> list[City]:
    """The ``/cities`` list: a pure function of the seed and the two counts."""
    rng = random.Random(f"{config.seed}/cities/{config.cities}/{config.countries}")
    names = _city_names(rng, config.cities)
    countries = _country_names(rng, config.countries)
    chosen = set(config.country_names)
    generated = [name for name in countries if name not in chosen]
    countries = [*config.country_names, *generated][: config.countries]
    assignment = [index % config.countries for index in range(config.cities)]
    rng.shuffle(assignment)
    return [
        City(index, name, countries[country])
        for index, (name, country) in enumerate(zip(names, assignment, strict=True))
    ]


def _city_names(rng: random.Random, count: int) -> list[str]:
    names = list(_AWKWARD_CITIES[: math.ceil(count / 3)])
    seen = set(names)
    while len(names) < count:
        name = rng.choice(_PREFIXES) + rng.choice(_STEMS) + rng.choice(_SUFFIXES)
        if name in seen:
            name = f"{name} {len(names)}"
        seen.add(name)
        names.append(name)
    rng.shuffle(names)
    return names


def _country_names(rng: random.Random, count: int) -> list[str]:
    awkward = list(_AWKWARD_COUNTRIES)
    plain = list(_PLAIN_COUNTRIES)
    rng.shuffle(awkward)
    rng.shuffle(plain)
    half = math.ceil(count / 2)
    names = awkward[:half] + plain[: count - half]
    names += [f"Country {index}" for index in range(len(names), count)]
    rng.shuffle(names)
    return names


# A record: departure minute after midnight, bus number, passengers, delay in seconds,
# accident, and which way it is malformed (0 when valid).
class Record(NamedTuple):
    minute: int
    bus: int
    passengers: int
    delay_seconds: int
    accident: bool
    malformed: int


VALID: Final = 0
MISSING_FIELD: Final = 1
BAD_DELAY: Final = 2
BAD_PASSENGERS: Final = 3

_MINUTES_PER_DAY_SERVED: Final = 12 * 60
_ACCIDENT_MASK: Final = (1 << 14) - 1  # one record in 16,384 reports an accident


def data_seed(config: SimulatorConfig, city_id: int, day: date) -> str:
    """The generator seed of a (city, date) in deterministic mode."""
    return f"{config.seed}/{city_id}/{day.isoformat()}"


def iter_records(config: SimulatorConfig, seed: str) -> Iterator[Record]:
    """The records of one response, in order; the only source of record data."""
    rng = random.Random(seed)
    count = rng.randint(config.records_min, config.records_max)
    bits = rng.getrandbits
    draw = rng.random
    malformed_rate = config.malformed_rate
    for _ in range(count):
        r = bits(64)
        malformed = VALID
        if malformed_rate and draw() < malformed_rate:
            malformed = 1 + (r >> 62) % 3
        yield Record(
            (r & 0xFFFF) % _MINUTES_PER_DAY_SERVED,
            100 + ((r >> 16) & 0xFF) % 100,
            ((r >> 24) & 0xFF) % 101,
            60 * (((r >> 32) & 0xFF) % 121),
            ((r >> 40) & _ACCIDENT_MASK) == 0,
            malformed,
        )


def render_chunks(
    config: SimulatorConfig, seed: str, day: date, zone_suffix: str = ""
) -> Iterator[str]:
    """The response body as text chunks of about ``config.chunk_bytes`` (ASCII only).

    ``zone_suffix`` (``"+02:00"``) is appended to departure times when the request's date
    carried an offset; a naive request gets naive times.
    """
    prefix = day.isoformat() + "T"
    times = [
        f"{prefix}{minute // 60:02d}:{minute % 60:02d}:00{zone_suffix}"
        for minute in range(_MINUTES_PER_DAY_SERVED)
    ]
    delays = {seconds: format_duration(seconds) for seconds in range(0, 121 * 60, 60)}
    per_chunk = max(1, config.chunk_bytes // 112)
    batch: list[str] = []
    opening = "["
    for minute, bus, passengers, delay, accident, malformed in iter_records(config, seed):
        time_text = times[minute]
        flag = "true" if accident else "false"
        if malformed == VALID:
            batch.append(
                f'{{"departure-time":"{time_text}","bus-type":"BUS-{bus}",'
                f'"passengers":{passengers},"delay":"{delays[delay]}","accident":{flag}}}'
            )
        else:
            batch.append(_render_malformed(malformed, time_text, bus, passengers, flag))
        if len(batch) >= per_chunk:
            yield opening + ",".join(batch)
            opening = ","
            batch.clear()
    yield (opening + ",".join(batch) + "]") if batch or opening == "[" else "]"


def _render_malformed(kind: int, time_text: str, bus: int, passengers: int, flag: str) -> str:
    if kind == MISSING_FIELD:
        return (
            f'{{"departure-time":"{time_text}","bus-type":"BUS-{bus}",'
            f'"passengers":{passengers},"accident":{flag}}}'
        )
    if kind == BAD_DELAY:
        return (
            f'{{"departure-time":"{time_text}","bus-type":"BUS-{bus}",'
            f'"passengers":{passengers},"delay":"soon","accident":{flag}}}'
        )
    return (
        f'{{"departure-time":"{time_text}","bus-type":"BUS-{bus}",'
        f'"passengers":"many","delay":"PT60S","accident":{flag}}}'
    )


def unit_hash(*parts: object) -> float:
    """A uniform number in [0, 1) that is a pure function of ``parts``."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64
