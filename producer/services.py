"""The clients one API process holds, created in its lifecycle hooks and reached per request."""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from quart import current_app

from common.layout import Layout
from common.settings import Settings
from common.storage import S3Store
from producer.limits import VerifyGate
from producer.metrics import ApiMetrics
from producer.stats import StatsShared

if TYPE_CHECKING:
    from producer.publisher import JobPublisher

EXTENSION_KEY: Final = "bus_stats"


@dataclass
class Services:
    settings: Settings
    layout: Layout
    store: S3Store
    publisher: "JobPublisher"
    metrics: ApiMetrics
    stats: StatsShared
    """In-flight reads, the dates cache and the object path's bounds, shared by every
    stats query of the process."""
    verify_gate: VerifyGate = field(default_factory=VerifyGate)
    """One ``verify=true`` query at a time in this process."""


def get_services() -> Services:
    """The running app's services (only inside a request or a lifecycle hook)."""
    services: Services = current_app.extensions[EXTENSION_KEY]
    return services
