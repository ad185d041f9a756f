"""APSIS One export API: paths, documented limits and polling defaults (reference:
apsis-profile-in-segment-event-export.txt)."""

from datetime import timedelta

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
MAX_EXPORT_ATTEMPTS = 3  # new exports requested after 410 / 503, then fail
DOWNLOAD_CHUNK = 1 << 20
ARROW_BATCH_ROWS = 50_000

POLL_URL_FIELDS = ("poll_url", "file_download_url", "file_download_url_v2", "url")
