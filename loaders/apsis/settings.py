"""APSIS One export API: paths, documented limits, defaults (reference: apsis-profile-in-segment-event-export.txt),
and the source's typed configuration."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import dlt
from dlt.common.configuration import configspec
from dlt.common.configuration.specs import BaseConfiguration
from dlt.common.typing import TSecretStrValue

TOKEN_PATH = "/oauth/token"
EXPORT_PATH = "/audience/profiles/exports"
SECTIONS_PATH = "/audience/sections"
SECTION_ITEMS_PATH = "/audience/sections/{section}/{kind}"  # kind: attributes, tags, events

MAX_ATTRIBUTES = 75
MAX_TAGS = 25
MAX_WINDOW_MONTHS = 3  # events window of one export
DEFAULT_WINDOW = timedelta(weeks=1)  # end_at when only start_at is given (as APSIS does)
DEFAULT_OVERLAP = timedelta(hours=6)  # the next run starts this much before the last end_at (late events)
DEFAULT_INITIAL_LOOKBACK = timedelta(days=7)  # first run without --start-at

TOKEN_REFRESH_MARGIN_S = 60.0  # refresh a token this long before it expires
POLL_INITIAL_INTERVAL_S = 2.0
POLL_MAX_INTERVAL_S = 60.0
POLL_TIMEOUT_S = 6 * 3600.0
MAX_EXPORT_ATTEMPTS = 3  # new exports requested after 410 / 503, then a smaller window, then fail
MAX_REDIRECTS = 5  # a poll URL may redirect to the file's storage (a presigned URL)
DOWNLOAD_CHUNK = 1 << 20
ARROW_BATCH_ROWS = 50_000
# Room on disk an export may take, downloaded and again inflated: large enough for any export APSIS produces, small
# enough that a server streaming without end fills neither the disk nor the run's time.
MAX_EXPORT_BYTES = 8 << 30
DOWNLOAD_TIMEOUT_S = 2 * 3600.0
MIN_WINDOW_HOURS = 1.0  # a failed export's window is halved down to this before the run gives up

REJECTS_TABLE = "_rejects"
REJECT_RAW_LIMIT = 2000  # characters of a rejected value's JSON kept in _rejects

POLL_URL_FIELDS = ("poll_url", "file_download_url", "file_download_url_v2", "url")


@configspec
class ApsisConfiguration(BaseConfiguration):
    """The apsis source's settings, resolved by dlt from `SOURCES__APSIS__<NAME>` or `[sources.apsis]`."""

    base_url: str = dlt.config.value
    client_id: str = dlt.config.value
    client_secret: TSecretStrValue = dlt.secrets.value
    # what to export: ids, comma separated (or a TOML list); unset: everything the reference endpoints list
    attributes: str | list[str] | None = None
    tags: str | list[str] | None = None
    events: str | list[str] | None = None
    section: str | None = None
    segment_filter: Any | None = None
    # the events window; unset: from the last loaded end_at minus overlap_hours, to now
    start_at: str | None = None
    end_at: str | None = None
    overlap_hours: float = DEFAULT_OVERLAP.total_seconds() / 3600
    initial_lookback_days: float = DEFAULT_INITIAL_LOOKBACK.days
    export_path: str = EXPORT_PATH
    poll_initial_interval: float = POLL_INITIAL_INTERVAL_S
    poll_max_interval: float = POLL_MAX_INTERVAL_S
    poll_timeout: float = POLL_TIMEOUT_S
    request_backoff_factor: float = 1.0
    gzip: bool = True
    max_export_bytes: int = MAX_EXPORT_BYTES
    download_timeout: float = DOWNLOAD_TIMEOUT_S
    min_window_hours: float = MIN_WINDOW_HOURS
