"""``GET /country-stats`` (placeholder blueprint until the stats module lands)."""

from quart import Blueprint

blueprint = Blueprint("stats", __name__)
